"""What the RQ Worker Pool desk view shows, built from the state pools publish (no frappe here).

Rows are the ones `rq-orchestrator status` prints (its `pool_rows`), one per
group of every pool on the Redis, with the numbers behind them for sorting
and the form; a form adds the group's history from the last hour, thinned
for a chart, and its scale decisions. Reading costs the reader one index read
and one GET/PTTL per pool (one LRANGE more for a form): never the master.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from redis import Redis

from ....cli.status import decision_text, pool_rows
from ....infra.config import short_queue_name
from ....infra.keys import pool_address
from ....master.state import HISTORY_SECONDS, read_history, read_pools

# `status`'s table columns, in order, as fields (None: shown from the numbers instead).
STATUS_FIELDS = ("pool", "host", None, "queues_full", None, None, None, None, "oldest_wait", "last_decision", None)
DECISION_FIELDS = ("t", "action", "target", "workers", "busy", "utilization", "queued", "oldest_wait_s", "reason")
SERIES = ("workers", "busy", "queued")
CHART_POINTS = 240  # at most this many points per chart: an hour at a 15 s resolution


def list_rows(pools: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per group of every pool (one for a pool whose state expired), all with the same keys."""
    return [row for pool in pools for row in _rows_of(pool)]


def _rows_of(pool: Mapping[str, Any]) -> list[dict[str, Any]]:
    texts = [{f: v for f, v in zip(STATUS_FIELDS, row) if f} for row in pool_rows(dict(pool))]
    groups = pool.get("groups") or [None]
    return [_row(pool, group, text) for group, text in zip(groups, texts)]


def _row(pool: Mapping[str, Any], group: Mapping[str, Any] | None, text: dict[str, str]) -> dict[str, Any]:
    host, pid = pool_address(pool["key"])
    group = group or {}
    stale = bool(pool["stale"])
    seen = pool.get("updated_at", pool.get("last_seen"))
    return {
        "name": f"{host}:{pid}:{group['name']}" if group else f"{host}:{pid}",
        **text,
        "pid": pid,
        "pool_key": pool["key"],
        "group_name": group.get("name"),
        "queues": ", ".join(short_queue_name(q) for q in group.get("queues", ())) or "-",
        "state": "stale" if stale else "stopping" if pool.get("stopping") else "ok",
        "stale_reason": pool.get("stale_reason") if stale else None,
        "size": f"{group['workers']} ({group['min']}–{group['max']})" if group else "-",
        "workers": group.get("workers"),
        "min_workers": group.get("min"),
        "max_workers": group.get("max"),
        "target": group.get("target"),
        "busy": group.get("busy"),
        "utilization": None if group.get("utilization") is None else round(100 * group["utilization"], 1),
        "queued": group.get("queued"),
        "oldest_wait_s": group.get("oldest_wait_s") if group.get("queued") else None,
        "last_change": decision_text(dict(pool), group.get("last_change")) if group else "-",
        "scale_ups": group.get("scale_ups"),
        "scale_downs": group.get("scale_downs"),
        "started_at": pool.get("started_at"),
        "updated_at": seen,
    }


def page(rows: list[dict[str, Any]], filters: Any, start: int, page_length: int) -> list[dict[str, Any]]:
    """The rows a list asks for: its filters (a cell's click, the search boxes), then the page."""
    kept = [row for row in rows if all(_matches(row, f) for f in _conditions(filters))]
    return kept[start:start + page_length] if page_length else kept[start:]


def _conditions(filters: Any) -> list[tuple[str, str, Any]]:
    """Frappe's filter shapes: ``{field: value}``, ``{field: [op, value]}`` or ``[[doctype, field, op, value]]``."""
    if isinstance(filters, str):
        filters = json.loads(filters)
    if not filters:
        return []
    if isinstance(filters, Mapping):
        return [(f, *v[:2]) if isinstance(v, (list, tuple)) else (f, "=", v) for f, v in filters.items()]
    return [tuple(f[1:4]) if len(f) > 3 else tuple(f) for f in filters]


def _matches(row: Mapping[str, Any], condition: tuple[str, str, Any]) -> bool:
    field, op, value = condition
    op = op.lower()
    if field not in row:
        return True  # a filter this view cannot apply narrows nothing
    if op in ("=", "!="):
        return (str(row[field]) == str(value)) == (op == "=")
    if op in ("like", "not like"):  # the list's search boxes: SQL's LIKE, case-insensitive as MariaDB's
        return bool(_like(str(value)).fullmatch(str(row[field]))) == (op == "like")
    if op in ("in", "not in"):
        values = value.split(",") if isinstance(value, str) else value
        return (str(row[field]) in {str(v).strip() for v in values}) == (op == "in")
    return True


def _like(pattern: str) -> re.Pattern[str]:
    """SQL's LIKE pattern (``%`` any run, ``_`` any one character) as a regular expression."""
    parts = (".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def read_rows(connection: Redis) -> list[dict[str, Any]]:
    return list_rows(read_pools(connection))


def read_group(connection: Redis, name: str, now: float | None = None) -> dict[str, Any] | None:
    """One row with its chart and decision log, or None when no pool publishes it any more."""
    row = next((r for r in read_rows(connection) if r["name"] == name), None)
    if row is None:
        return None
    samples = [s for s in read_history(connection, row["pool_key"]) if s.get("group") == row["group_name"]]
    if row["group_name"] is not None:  # the figures now: the history only records changes
        samples.append({"kind": "tick", "t": row["updated_at"], **{k: row[k] for k in SERIES + ("target",)}})
    return {**row, **history_view(samples, time.time() if now is None else now)}


def history_view(samples: list[dict[str, Any]], now: float, points: int = CHART_POINTS) -> dict[str, Any]:
    """The last hour as chart series (at most ``points`` buckets, each the busiest moment in it) and decisions.

    Buckets are evenly spaced in time. A pool records a tick sample only when
    its figures change, so an empty bucket repeats the figures before it (a
    step, not a slope). Buckets keep each series' maximum, so a short peak of
    the queue or of busy workers is not averaged away; a bucket in which a
    scale decision was taken carries its new target in ``decided`` (None
    elsewhere).
    """
    recent = [s for s in samples if s["t"] >= now - HISTORY_SECONDS]
    ticks = [s for s in recent if s["kind"] == "tick"]
    decisions = [s for s in recent if s["kind"] == "decision"]
    log = [{key: d.get(key) for key in DECISION_FIELDS} for d in reversed(decisions)]
    chart: dict[str, list[Any]] = {"t": [], "workers": [], "busy": [], "queued": [], "target": [], "decided": []}
    if not ticks:
        return {"chart": chart, "decisions": log}
    first, width = ticks[0]["t"], max((ticks[-1]["t"] - ticks[0]["t"]) / points, 1e-9)

    def bucket(t: float) -> int:
        return min(max(int((t - first) / width), 0), points - 1)

    buckets: dict[int, list[dict[str, Any]]] = {}
    for sample in ticks:
        buckets.setdefault(bucket(sample["t"]), []).append(sample)
    decided = {bucket(d["t"]): d["target"] for d in decisions}  # the last decision of a bucket wins
    held = ticks[0]
    for index in range(bucket(ticks[-1]["t"]) + 1):
        members = buckets.get(index) or [{**held, "t": first + index * width}]
        held = members[-1]
        chart["t"].append(held["t"])
        for series in SERIES:
            chart[series].append(max(m[series] for m in members))
        chart["target"].append(held["target"])
        chart["decided"].append(decided.get(index))
    return {"chart": chart, "decisions": log}

