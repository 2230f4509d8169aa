"""The `rq-orchestrator` command."""

from __future__ import annotations

import sys
from typing import Any

import click
from redis.exceptions import RedisError

from . import __version__
from .connection import BadRedisURL, from_url, redact
from .options import BadInput, OneLineErrors, build_config, check_queues, pool_options, setup_logging

DEFAULT_URL = "redis://localhost:6379/0"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rq-orchestrator")
def main() -> None:
    """An autoscaling, pre-forking pool of RQ workers."""


def connect(url: str) -> Any:
    """A Redis client for URL that answered PING, or BadInput naming the URL (password hidden)."""
    try:
        connection = from_url(url, socket_connect_timeout=5)
        connection.ping()
    except BadRedisURL as exc:
        raise BadInput(f"--url: {exc}") from None
    except RedisError as exc:
        raise BadInput(f"--url: cannot reach Redis at {redact(url)}: {exc}") from None
    return connection


def requested_groups(queues: tuple[str, ...], queue_groups: tuple[str, ...]) -> list[Any]:
    """QUEUES arguments are one group; --queue may give several."""
    from .group_specs import GroupRequest, parse_groups

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
@pool_options
def worker_pool(queues: tuple[str, ...], queue_groups: tuple[str, ...], url: str, **opts: Any) -> None:
    """Run an autoscaling pool of RQ workers on QUEUES (default: `default`), in priority order.

    Every --scaling-period seconds the pool measures utilization: the average
    number of busy workers over the last --utilization-window seconds divided
    by the number of workers now. Above --utilization-threshold it adds a
    worker; below half of it, it retires an idle one with a warm stop.

    With --queue given several times, each group of queues gets workers and
    bounds of its own (e.g. --queue short,default:2-6 --queue long:1), under
    one master and one preload; --max-workers-total caps them together.

    Signals: TERM/INT warm stop (a second one: cold stop), QUIT cold stop,
    TTIN/TTOU add/retire a worker and move both bounds by one.
    """
    from .pool import Pool

    config = build_config(requested_groups(queues, queue_groups), opts)
    connection = connect(url)
    setup_logging(config.logging_level)
    sys.exit(Pool(config, connection).run())


from .demo import demo  # noqa: E402

main.add_command(demo)

from .status import status  # noqa: E402

main.add_command(status)

from .simulate import simulate  # noqa: E402

main.add_command(simulate)
