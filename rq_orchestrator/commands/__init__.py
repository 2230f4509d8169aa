"""Bench commands. Frappe merges app commands after its own, so `worker-pool` here replaces the built-in.

Importing this module must not import frappe: the adapter is imported inside the commands.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any

import click

from ..cli.group_specs import GroupRequest, check_known, parse_groups
from ..cli.options import OneLineErrors, build_config, check_numbers, group_specs, pool_options, setup_logging
from ..infra.errors import BadInput


@click.command("worker-pool", cls=OneLineErrors)
@click.option("--queue", "queue_groups", multiple=True, metavar="QUEUES[:N|:MIN-MAX]",
              help="Queues to consume, comma-separated, in priority order (default: all of the bench's queues). "
                   "Repeat it for groups of workers with bounds of their own: --queue short,default:2 "
                   "--queue long,default,short:1-3.")
@click.option("-u", "--rq-username", default=None, help="Redis ACL user (used when use_rq_auth is set).")
@click.option("-p", "--rq-password", default=None, help="Redis ACL user password.")
@click.option("--strategy", type=click.Choice(["round_robin", "random"]), default=None,
              help="Dequeuing strategy, as `bench worker --strategy` (the same as --dequeue-strategy).")
@pool_options
def worker_pool(queue_groups: tuple[str, ...], rq_username: str | None, rq_password: str | None,
                strategy: str | None, **opts: Any) -> None:
    """Start an autoscaling pool of background workers (replaces Frappe's fixed-size pool).

    Accepts everything Frappe's built-in `worker-pool` does (--queue,
    --num-workers, --quiet, --burst) with the same meaning, and `bench
    worker`'s --strategy, -u and -p; without --num-workers the pool scales
    between --min-workers and --max-workers.
    """
    from ..frappe_adapter import frappe_job_module, prepare_bench
    from ..master.pool import Pool

    check_numbers(opts)
    opts["dequeue_strategy"] = bench_strategy(strategy, opts["dequeue_strategy"])
    bench = prepare_bench(bench_groups(queue_groups), rq_username, rq_password, opts["no_fork"])
    # Frappe's workers never run rq's scheduler (Frappe schedules with its own): neither does the pool, unless asked.
    config = build_config(bench.groups, {**opts, "no_fork": bench.no_fork}, default_worker_class=bench.worker_class,
                          default_with_scheduler=False)
    # Frappe's scheduler, once per pool in a child of its own, where Frappe's worker class would run it.
    config = dataclasses.replace(config, services=bench.services, job_module=frappe_job_module)
    setup_logging(config.logging_level)
    sys.exit(Pool(config, bench.connection).run())


def bench_groups(queue_groups: tuple[str, ...]) -> list[GroupRequest]:
    """The --queue groups; an empty --queue is all the bench's queues, as Frappe's `worker-pool --queue ""` is."""
    if queue_groups and not any(spec.strip() for spec in queue_groups):
        return []
    return parse_groups(queue_groups)


def bench_strategy(strategy: str | None, dequeue_strategy: str | None) -> str | None:
    """One dequeue strategy from `bench worker`'s --strategy and rq's --dequeue-strategy (None: neither given)."""
    if strategy and dequeue_strategy and strategy != dequeue_strategy:
        raise BadInput(f"--strategy {strategy} and --dequeue-strategy {dequeue_strategy} disagree; give one")
    return strategy or dequeue_strategy


@click.command("worker-pool-supervisor", cls=OneLineErrors, context_settings={"ignore_unknown_options": True})
@click.option("--name", default=None, help="Program name (default: <bench>-frappe-worker-pool).")
@click.option("--user", default=None, help="User the program runs as (default: the bench owner's, unset).")
@click.argument("pool_args", nargs=-1, type=click.UNPROCESSED)
def worker_pool_supervisor(name: str | None, user: str | None, pool_args: tuple[str, ...]) -> None:
    """Print a supervisor [program] block that runs `bench worker-pool POOL_ARGS...`.

    For a supervisor config written by hand; `bench worker-pool-setup` rewrites
    the one `bench setup supervisor` wrote. Its stopwaitsecs covers the longest
    queue timeout (or --graceful-timeout, if longer), so a warm stop lets every
    running job finish before supervisor would kill the pool.
    """
    import os
    import shutil

    from .supervisor import program_block

    checked = check_against_bench(pool_args)
    bench_dir = bench_directory()
    name = name or f"{os.path.basename(bench_dir)}-frappe-worker-pool"
    log_dir = os.path.join(bench_dir, "logs")
    command = [shutil.which("bench") or "bench", "worker-pool", *pool_args]
    click.echo(
        program_block(
            name,
            command,
            directory=bench_dir,
            stdout_logfile=os.path.join(log_dir, f"{name}.log"),
            stderr_logfile=os.path.join(log_dir, f"{name}.error.log"),
            longest_stop=checked.longest_stop,
            user=user,
        ),
        nl=False,
    )


@click.command("worker-pool-setup", cls=OneLineErrors, context_settings={"ignore_unknown_options": True})
@click.option("--dry-run", is_flag=True, help="Print the changes as a unified diff; write nothing.")
@click.option("--program-name", default=None, metavar="NAME",
              help="Supervisor program of the pool (default: <bench>-frappe-worker-pool).")
@click.argument("pool_args", nargs=-1, type=click.UNPROCESSED)
def worker_pool_setup(dry_run: bool, program_name: str | None, pool_args: tuple[str, ...]) -> None:
    """Make what `bench setup supervisor` / `bench setup procfile` wrote run one `bench worker-pool POOL_ARGS...`.

    In config/supervisor.conf the `bench worker` programs (and a `bench
    worker-pool` program) become one pool program, in their place in the
    workers group, with a stopwaitsecs that covers the longest queue timeout
    (or --graceful-timeout, if longer);
    in Procfile the `bench worker` lines become one `worker:` line. Every other
    program and line stays as it was. A changed file is first copied to
    FILE.bak; running it again with the same options changes nothing.
    """
    from .bench_setup import left_out_queues, left_out_strategies, setup_bench

    checked = check_against_bench(pool_args)
    groups, strategy = checked.groups, checked.strategy
    bench_dir = bench_directory()
    left_out = left_out_queues(bench_dir, groups, list(checked.queues))
    strategies = left_out_strategies(bench_dir, strategy)
    outcomes = setup_bench(bench_dir, pool_args, checked.longest_stop, program_name, dry_run)
    for outcome in outcomes:
        if outcome.diff:
            click.echo(outcome.diff, nl=False)
        elif not outcome.changed:
            click.echo(f"{outcome.path}: already runs `bench worker-pool` with these options; unchanged")
        else:
            click.echo(f"{outcome.path}: rewritten (the old file is {outcome.backup})")
    if left_out:
        click.echo(f"warning: no --queue names {', '.join(left_out)}, which the replaced workers consumed", err=True)
    if strategies:
        click.echo(f"warning: the replaced workers ran with --strategy {', '.join(strategies)}, and the pool "
                   f"{f'dequeues {strategy}' if strategy else 'serves its queues in the order given'}", err=True)
    if not dry_run and any(o.changed and o.path.endswith("supervisor.conf") for o in outcomes):
        click.echo("To apply: sudo supervisorctl reread && sudo supervisorctl update")


@dataclasses.dataclass(frozen=True)
class CheckedArgs:
    """What `bench worker-pool POOL_ARGS` would run, checked against the bench."""

    groups: list[GroupRequest]
    strategy: str | None  # the dequeue strategy; None: not given
    graceful_timeout: float | None
    queues: dict[str, int]  # the bench's queues and their job timeouts

    @property
    def longest_stop(self) -> int:
        """Seconds a warm stop may take before the margin: the longest queue timeout, or --graceful-timeout if
        longer (a job enqueued with a timeout of its own may outlast its queue's, and the operator said to wait)."""
        return math.ceil(max(*self.queues.values(), self.graceful_timeout or 0))


def check_pool_args(pool_args: tuple[str, ...]) -> tuple[list[GroupRequest], str | None, float | None]:
    """Reject what `bench worker-pool POOL_ARGS` would reject, before anything is written or printed.

    Returns the groups, the dequeue strategy (None: not given) and the graceful timeout the arguments ask for.
    """
    with worker_pool.make_context("worker-pool", list(pool_args)) as context:  # current: options.given reads it
        groups = bench_groups(context.params["queue_groups"])
        group_specs(groups, context.params)
        strategy = bench_strategy(context.params["strategy"], context.params["dequeue_strategy"])
    return groups, strategy, context.params["graceful_timeout"]


def check_against_bench(pool_args: tuple[str, ...]) -> CheckedArgs:
    """``check_pool_args``, then the queues it names against the bench's."""
    groups, strategy, graceful_timeout = check_pool_args(pool_args)
    queues = bench_queues()
    check_known(groups, list(queues))
    return CheckedArgs(groups, strategy, graceful_timeout, queues)


def bench_directory() -> str:
    """The bench's directory: bench runs app commands from its sites/ folder."""
    import os

    return os.path.dirname(os.path.abspath(os.getcwd()))


def bench_queues() -> dict[str, int]:
    """The bench's queues and their job timeouts, from Frappe."""
    from ..frappe_adapter import queue_timeouts

    try:
        return queue_timeouts()
    except ModuleNotFoundError as exc:
        if exc.name != "frappe":
            raise
        raise BadInput("frappe is not importable: run this command inside a Frappe bench") from None


from .status import worker_pool_status  # noqa: E402

commands = [worker_pool, worker_pool_supervisor, worker_pool_setup, worker_pool_status]
