"""Bench commands. Frappe merges app commands after its own, so `worker-pool` here replaces the built-in.

Importing this module must not import frappe: the adapter is imported inside the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli.options import OneLineErrors, build_config, check_numbers, pool_options, setup_logging


@click.command("worker-pool", cls=OneLineErrors)
@click.option("--queue", "queue_groups", multiple=True, metavar="QUEUES[:N|:MIN-MAX]",
              help="Queues to consume, comma-separated, in priority order (default: all of the bench's queues). "
                   "Repeat it for groups of workers with bounds of their own: --queue short,default:2 "
                   "--queue long,default,short:1-3.")
@click.option("-u", "--rq-username", default=None, help="Redis ACL user (used when use_rq_auth is set).")
@click.option("-p", "--rq-password", default=None, help="Redis ACL user password.")
@pool_options
def worker_pool(queue_groups: tuple[str, ...], rq_username: str | None, rq_password: str | None, **opts: Any) -> None:
    """Start an autoscaling pool of background workers (replaces Frappe's fixed-size pool).

    Accepts everything Frappe's built-in `worker-pool` does (--queue,
    --num-workers, --quiet, --burst) with the same meaning; without
    --num-workers the pool scales between --min-workers and --max-workers.
    """
    from ..frappe_adapter import prepare_bench
    from ..cli.group_specs import parse_groups
    from ..master.pool import Pool

    check_numbers(opts)
    bench = prepare_bench(parse_groups(queue_groups), rq_username, rq_password)
    config = build_config(bench.groups, opts, default_worker_class=bench.worker_class)
    setup_logging(config.logging_level)
    sys.exit(Pool(config, bench.connection).run())


@click.command("worker-pool-supervisor", cls=OneLineErrors, context_settings={"ignore_unknown_options": True})
@click.option("--name", default=None, help="Program name (default: <bench>-frappe-worker-pool).")
@click.option("--user", default=None, help="User the program runs as (default: the bench owner's, unset).")
@click.argument("pool_args", nargs=-1, type=click.UNPROCESSED)
def worker_pool_supervisor(name: str | None, user: str | None, pool_args: tuple[str, ...]) -> None:
    """Print a supervisor [program] block that runs `bench worker-pool POOL_ARGS...`.

    Replace the `bench worker` programs of your supervisor.conf with it. Its
    stopwaitsecs covers the longest queue timeout, so a warm stop lets every
    running job finish before supervisor would kill the pool.
    """
    import os
    import shutil

    from ..frappe_adapter import longest_queue_timeout
    from .supervisor import program_block

    bench_dir = os.path.dirname(os.path.abspath(os.getcwd()))  # bench runs commands from sites/
    bench_name = os.path.basename(bench_dir)
    command = [shutil.which("bench") or "bench", "worker-pool", *pool_args]
    click.echo(
        program_block(
            name or f"{bench_name}-frappe-worker-pool",
            command,
            directory=bench_dir,
            log_dir=os.path.join(bench_dir, "logs"),
            longest_job=longest_queue_timeout(),
            user=user,
        ),
        nl=False,
    )


from .status import worker_pool_status  # noqa: E402

commands = [worker_pool, worker_pool_supervisor, worker_pool_status]
