"""`rq-orchestrator status`: every pool publishing on a Redis, on any host, at a glance.

It reads what the masters publish (`state.py`): one index, then one GET and
one PTTL per pool, never a scan; and whether `rq suspend` is in force. The
same rendering serves the bench command `bench worker-pool-status`
(`commands/status.py`).

Exit status, for scripts and health checks: 0 every pool is publishing, 1 a
pool stopped publishing (its master died or hangs), 2 bad input or Redis
unreachable, 3 no pool has published on this Redis.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

import click
from redis import Redis
from redis.exceptions import RedisError
from rq.suspension import is_suspended

from ..master.cluster import leases_in_use
from ..infra.connection import DEFAULT_URL, connect, describe
from ..infra.keys import pool_address
from ..infra.wording import counted
from ..infra.errors import BadInput
from .options import OneLineErrors, given
from ..master.state import forget_pool, read_pools

HEALTHY, STALE, UNREACHABLE, NO_POOL = 0, 1, 2, 3
CLEAR_SCREEN = "\x1b[H\x1b[2J"
SUSPENDED = ("rq workers are suspended (rq suspend): they take no new job, and the pools start no worker for "
             "the jobs that wait; `rq resume` ends it")
COLUMNS = ("POOL", "HOST", "PID", "QUEUES", "WORKERS/MIN/MAX", "TARGET", "BUSY", "UTIL", "OLDEST WAIT",
           "LAST DECISION", "STATE")


def status_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The display options shared by `rq-orchestrator status` and `bench worker-pool-status`."""
    options = [
        click.option("--json", "as_json", is_flag=True, help="Print JSON (one document per refresh with --watch)."),
        click.option("--watch", is_flag=True, help="Refresh until interrupted (in place on a terminal)."),
        click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
                     help="Seconds between refreshes with --watch."),
        click.option("--forget-stale", is_flag=True,
                     help="After showing them, drop the stale pools from the list (a dead pool is otherwise listed for "
                          "15 minutes; a live one that was only late is back at its next publish)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("status", cls=OneLineErrors)
@click.option("--url", "-u", default=None, envvar="RQ_REDIS_URL",
              help="Redis URL (default redis://localhost:6379/0, or $RQ_REDIS_URL).")
@status_options
def status(url: str | None, **opts: Any) -> None:
    """Show every worker pool publishing on this Redis, on any host.

    One row per pool (per group of workers): size and bounds, utilization,
    how long the oldest queued job has waited, and the last scaling
    decision. Exit status: 0 all pools publishing, 1 one stopped publishing
    (stale), 2 bad input or Redis unreachable, 3 no pool found.
    """
    check_display(opts)
    sys.exit(show_status(connect(url or DEFAULT_URL), **opts))


def check_display(opts: dict[str, Any]) -> None:
    """--interval alone would be taken and never used: refused, as any option that cannot apply."""
    if given("interval") and not opts["watch"]:
        raise BadInput(f"--interval is the time between refreshes with --watch: give --watch too "
                       f"(got --interval {opts['interval']:g} alone)")


def show_status(connection: Redis, as_json: bool, watch: bool, interval: float, forget_stale: bool,
                out: TextIO | None = None) -> int:
    """Print the pools once (or until interrupted with ``watch``); returns the exit status."""
    out = out or sys.stdout
    in_place = watch and not as_json and out.isatty()
    code = NO_POOL
    try:
        while True:
            text, code = report(connection, as_json, compact=watch, forget_stale=forget_stale)
            out.write((CLEAR_SCREEN if in_place else "") + text + "\n")
            out.flush()
            if not watch:
                return code
            time.sleep(interval)
    except KeyboardInterrupt:
        return code


def report(connection: Redis, as_json: bool, compact: bool = False, forget_stale: bool = False) -> tuple[str, int]:
    """The text to show and the exit status it means; a Redis failure is shown, not raised."""
    try:
        pools = read_pools(connection)
        clusters = cluster_usage(connection, pools)
        suspended = bool(is_suspended(connection))
        if forget_stale:
            forget_dead(connection, pools)
    except RedisError as exc:
        return f"cannot read the pools from {describe(connection)}: {exc}", UNREACHABLE
    code = health(pools)
    if as_json:
        document = {"redis": describe(connection), "status": code, "suspended": suspended, "pools": pools,
                    "clusters": clusters}
        return json.dumps(document, indent=None if compact else 1, default=str), code
    text = render_table(pools, clusters, describe(connection))
    return (f"{text}\n{SUSPENDED}" if suspended else text), code


def health(pools: list[dict[str, Any]]) -> int:
    if not pools:
        return NO_POOL
    return STALE if any(p["stale"] for p in pools) else HEALTHY


def cluster_usage(connection: Redis, pools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Cluster name -> its cap and the leases in use now, for the clusters the pools belong to."""
    limits = {p["cluster"]["name"]: p["cluster"]["limit"] for p in pools if p.get("cluster")}
    return {name: {"limit": limit, "in_use": leases_in_use(connection, name)} for name, limit in limits.items()}


def forget_dead(connection: Redis, pools: list[dict[str, Any]]) -> None:
    """Drop the stale pools (they were shown): dead ones go; a live one that was only late is back at its next publish."""
    for pool in pools:
        if pool["stale"]:
            forget_pool(connection, pool["key"])


# -- the table ----------------------------------------------------------------
def render_table(pools: list[dict[str, Any]], clusters: dict[str, dict[str, Any]], where: str) -> str:
    if not pools:
        return f"no pool has published on {where}"
    stale = sum(p["stale"] for p in pools)
    head = f"{counted(len(pools), 'pool')} on {where} at {datetime.now():%Y-%m-%d %H:%M:%S}"
    head += f", {stale} stale" if stale else ""
    rows = [row for pool in pools for row in pool_rows(pool)]
    lines = [head, "", *table([COLUMNS, *rows])]
    lines += [f"cluster {name}: {c['in_use']}/{c['limit']} worker slots in use" for name, c in clusters.items()]
    lines += [service_text(pool, service) for pool in pools for service in pool.get("services") or ()]
    return "\n".join(lines)


def service_text(pool: dict[str, Any], service: dict[str, Any]) -> str:
    """``pool default (pid 4711): service frappe-scheduler running, pid 4712, 0 restarts``."""
    state = service["state"]
    if service["pid"] is not None:
        state += f", pid {service['pid']}"
    if service.get("last_exit"):
        state += f", last exit: {service['last_exit']}"
    if pool["stale"]:
        state = f"{state} when last seen"
    return f"pool {pool['name']} (pid {pool['pid']}): service {service['name']} {state}, {service['restarts']} restarts"


def pool_rows(pool: dict[str, Any]) -> list[tuple[str, ...]]:
    """One row per group of the pool; a pool whose state expired is one row saying so."""
    if "name" not in pool:
        host, pid = pool_address(pool["key"])
        seen = f"stale: {pool['stale_reason']}, last seen {since(time.time() - pool['last_seen'])} ago"
        return [("?", host, pid, *["-"] * 7, seen)]
    state = (f"stale: {pool['stale_reason']}" if pool["stale"] else
             f"stopping ({pool['stopping']})" if pool.get("stopping") else "ok")
    multi = len(pool["groups"]) > 1
    return [group_row(pool, group, multi, state) for group in pool["groups"]]


def group_row(pool: dict[str, Any], group: dict[str, Any], multi: bool, state: str) -> tuple[str, ...]:
    wait = group.get("oldest_wait_s") if group.get("queued") else None
    return (
        f"{pool['name']}/{group['name']}" if multi else pool["name"],
        pool["host"],
        str(pool["pid"]),
        ",".join(group["queues"]),
        f"{group['workers']}/{group['min']}/{group['max']}",
        str(group["target"]),
        str(group["busy"]),
        "-" if group["utilization"] is None else f"{group['utilization']:.2f}",
        "-" if wait is None else since(wait),
        decision_text(pool, group.get("last_decision")),
        state,
    )


def decision_text(pool: dict[str, Any], decision: dict[str, Any] | None) -> str:
    """``up 4, 12s ago: utilization 0.61 > 0.50``; its age measured on the master's clock."""
    if not decision:
        return "-"
    age = pool.get("age_s", 0.0) + pool["updated_at"] - decision["at"]
    return f"{decision['action']} {decision['target']}, {since(age)} ago: {decision['reason']}"


def since(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
