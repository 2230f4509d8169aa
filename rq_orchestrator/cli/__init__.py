"""The `rq-orchestrator` command."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from .. import __version__
from . import demo, simulate, status
from ..infra.connection import DEFAULT_URL, connect
from ..infra.errors import BadInput
from ..infra.descriptors import open_connections
from .group_specs import GroupRequest, check_queues, parse_groups
from .options import OneLineErrors, build_config, given, pool_options, setup_logging
from .rq_settings import apply_logging, log_files, read_settings, settings_url, start_sentry

log = logging.getLogger("rq_orchestrator")


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
@click.option("--config", "-c", "settings_module", default=None, envvar="RQ_CONFIG", metavar="MODULE",
              help="An rq settings module, as `rq worker -c` reads it (REDIS_URL or REDIS_HOST/PORT/DB/PASSWORD/SSL, "
                   "QUEUES, NAME as the pool's name, DICT_CONFIG, SENTRY_DSN), imported in the master before "
                   "forking; options given on the command line win; also $RQ_CONFIG.")
@click.option("--sentry-dsn", default=None, envvar="RQ_SENTRY_DSN", metavar="DSN",
              help="Report failed jobs to Sentry (needs sentry-sdk), as rq 1.x's `rq worker --sentry-dsn`; "
                   "also $RQ_SENTRY_DSN.")
@click.option("--pid", "pid_file", default=None, metavar="FILE", help="Write the master's process id to FILE.")
@pool_options
def worker_pool(queues: tuple[str, ...], queue_groups: tuple[str, ...], url: str, paths: tuple[str, ...],
                settings_module: str | None, sentry_dsn: str | None, pid_file: str | None, **opts: Any) -> None:
    """Run an autoscaling pool of RQ workers on QUEUES (default: `default`), in priority order.

    Every --scaling-period seconds the pool measures utilization: the average
    number of busy workers over the last --utilization-window seconds divided
    by the number of workers now. Above --utilization-threshold it adds a
    worker; below half of it, it retires an idle one with a warm stop.

    With --queue given several times, each group of queues gets workers and
    bounds of its own (e.g. --queue short,default:2-6 --queue long:1), under
    one master and one preload; --max-workers-total caps them together.

    Signals: TERM/INT warm stop (a second one: cold stop), QUIT cold stop,
    TTIN/TTOU add/retire a worker and move both bounds by one (in each group),
    HUP re-fork every worker (learned job modules are dropped: new job code
    loads).
    """
    from ..master.pool import Pool

    sys.path.extend(p for p in paths if p not in sys.path)  # as rq's CLI does, before anything is imported
    before = open_connections()
    settings = read_settings(settings_module) if settings_module else {}
    apply_logging(settings)
    if not (queues or queue_groups) and settings.get("QUEUES"):
        queues = tuple(settings["QUEUES"])
    url = url if given("url") else settings_url(settings) or url
    if not given("name") and settings.get("NAME"):
        opts["name"] = str(settings["NAME"])
    if sentry_dsn or settings.get("SENTRY_DSN"):
        start_sentry(sentry_dsn or settings["SENTRY_DSN"])
    config = build_config(requested_groups(queues, queue_groups), opts)
    logs = log_files()
    shared = {name for fd, name in open_connections() - before if fd not in logs}  # the forks would inherit them
    connection = connect(url)
    if pid_file:
        write_pid(pid_file)
    setup_logging(config.logging_level)
    if shared:
        log.warning("--config/--preload left open in the master, for every worker and job process to share: %s; "
                    "close it at the end of that module (Django: django.db.connections.close_all())",
                    ", ".join(sorted(shared)))
    sys.exit(Pool(config, connection).run())


def write_pid(path: str) -> None:
    try:
        with open(os.path.expanduser(path), "w") as file:
            file.write(str(os.getpid()))
    except OSError as exc:
        raise BadInput(f"--pid: cannot write {path}: {exc.strerror}") from None


main.add_command(demo.demo)
main.add_command(status.status)
main.add_command(simulate.simulate)
