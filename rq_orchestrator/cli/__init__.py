"""The `rq-orchestrator` command."""

from __future__ import annotations

import sys
from typing import Any

import click

from .. import __version__
from . import demo, simulate, status
from ..infra.connection import DEFAULT_URL, connect
from ..infra.errors import BadInput
from .group_specs import GroupRequest, check_queues, parse_groups
from .options import OneLineErrors, build_config, pool_options, setup_logging

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rq-orchestrator")
def main() -> None:
    """An autoscaling, pre-forking pool of RQ workers."""


def requested_groups(queues: tuple[str, ...], queue_groups: tuple[str, ...]) -> list[Any]:
    """QUEUES arguments are one group; --queue may give several."""
    if queues and queue_groups:
        raise BadInput("give the queues either as arguments or with --queue, not both")
    if queue_groups:
        return parse_groups(queue_groups)
    return [GroupRequest(check_queues(queues or ("default",)))]


@main.command("worker-pool", cls=OneLineErrors)
@click.argument("queues", nargs=-1)
@click.option("--queue", "queue_groups", multiple=True, metavar="QUEUES[:N|:MIN-MAX]",
              help="A group of workers on comma-separated QUEUES, fixed at N or scaled within MIN-MAX "
                   "(repeatable; instead of QUEUES arguments).")
@click.option("--url", "-u", default=DEFAULT_URL, show_default=True, envvar="RQ_REDIS_URL",
              help="Redis URL (redis://, rediss:// or unix://); also $RQ_REDIS_URL.")
@click.option("--path", "-P", "paths", multiple=True, default=["."], show_default=True, metavar="DIR",
              help="Add DIR to the import path, for the jobs, --preload and --worker-class (repeatable; "
                   "as `rq worker --path`).")
@pool_options
def worker_pool(queues: tuple[str, ...], queue_groups: tuple[str, ...], url: str, paths: tuple[str, ...],
                **opts: Any) -> None:
    """Run an autoscaling pool of RQ workers on QUEUES (default: `default`), in priority order.

    Every --scaling-period seconds the pool measures utilization: the average
    number of busy workers over the last --utilization-window seconds divided
    by the number of workers now. Above --utilization-threshold it adds a
    worker; below half of it, it retires an idle one with a warm stop.

    With --queue given several times, each group of queues gets workers and
    bounds of its own (e.g. --queue short,default:2-6 --queue long:1), under
    one master and one preload; --max-workers-total caps them together.

    Signals: TERM/INT warm stop (a second one: cold stop), QUIT cold stop,
    TTIN/TTOU add/retire a worker and move both bounds by one, HUP re-fork
    every worker (learned job modules are dropped: new job code loads).
    """
    from ..master.pool import Pool

    sys.path.extend(p for p in paths if p not in sys.path)  # as rq's CLI does, before anything is imported
    config = build_config(requested_groups(queues, queue_groups), opts)
    connection = connect(url)
    setup_logging(config.logging_level)
    sys.exit(Pool(config, connection).run())


main.add_command(demo.demo)
main.add_command(status.status)
main.add_command(simulate.simulate)
