"""What the RQ Worker Pool desk view shows, built from the state pools publish (no frappe here).

Rows are the ones `rq-orchestrator status` prints (its `pool_rows`), one per
group of every pool on the Redis, with the numbers behind them for sorting
and the form; a form adds the group's history from the last hour, thinned
for a chart, and its scale decisions. Reading costs the reader one index read
and one GET/PTTL per pool (one LRANGE more for a form): never the master.
"""

from __future__ import annotations

import json
import operator
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
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


DateRanges = Callable[[str, Any], Sequence[Any]]  # (operator, value) -> (first day, last day); Frappe's reading


def page(rows: list[dict[str, Any]], filters: Any, start: int, page_length: int, order_by: str | None = None,
         date_ranges: DateRanges | None = None) -> list[dict[str, Any]]:
    """The rows a list asks for: its filters (a cell's click, the search boxes, the filter bar), its order, the page.

    A field the rows do not have (the sidebar's ``_assign``, ``owner``) is
    empty in every row, as an unset column is. ``date_ranges`` turns a
    ``timespan``/``previous``/``next`` filter ("this week") into a range; an
    operator this view cannot apply is refused (``ValueError``), never
    ignored: the list would show every row as if it matched.
    """
    kept = [row for row in rows if all(_matches(row, f, date_ranges) for f in _conditions(filters))]
    kept = ordered(kept, order_by)
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


def _matches(row: Mapping[str, Any], condition: tuple[str, str, Any], date_ranges: DateRanges | None) -> bool:
    field, op, value = condition
    op = op.lower()
    cell = row.get(field)
    figure = row.get(FIGURE_OF.get(field, field))  # what a range reads: the number behind a text column
    if op in ("timespan", "previous", "next") and date_ranges is not None:
        op, value = "between", _date_range(date_ranges, op, value)
    if op in ("=", "!="):
        return _equal(cell, value) == (op == "=")
    if op in ("like", "not like"):  # the list's search boxes: SQL's LIKE, case-insensitive as MariaDB's
        return bool(_like(str(value)).fullmatch("" if cell is None else str(cell))) == (op == "like")
    if op in ("in", "not in"):
        values = value.split(",") if isinstance(value, str) else value
        return any(_equal(cell, str(v).strip()) for v in values) == (op == "in")
    if op == "is":  # the filter bar's "is set" / "is not set"
        return (cell not in (None, "")) == (str(value).lower() == "set")
    if op in COMPARISONS:  # a missing figure is in no range
        return figure is not None and COMPARISONS[op](*_comparable(figure, value))
    if op == "between":
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"the RQ Worker Pool list needs two values for 'between', got {value!r}")
        low, high = (str(v) if isinstance(v, date) else v for v in value)
        if isinstance(high, str) and DATE_ONLY.fullmatch(high):
            high += " 23:59:59.999999"  # a date range picked for a time: to the end of its last day, as Frappe's
        return figure is not None and operator.le(*_comparable(low, figure)) and operator.le(*_comparable(figure, high))
    raise ValueError(f"the RQ Worker Pool list cannot filter with {op!r}")


COMPARISONS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _date_range(date_ranges: DateRanges, op: str, value: Any) -> Sequence[Any]:
    try:
        found = date_ranges(op, value)
    except (KeyError, ValueError, TypeError):
        found = None
    if not found:
        raise ValueError(f"the RQ Worker Pool list cannot read the {op} {value!r}")
    return found


def _equal(cell: Any, value: Any) -> bool:
    """Equal as numbers where both read as one (a click on 0 % sends 0 for 0.0), else as text."""
    a, b = _comparable("" if cell is None else cell, value)
    return a == b


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    """Both as numbers where both read as one, else both as text (times compare as ``YYYY-MM-DD HH:MM:SS`` do)."""
    try:
        return float(a), float(b)
    except (TypeError, ValueError):
        return str(a), str(b)


ORDER = re.compile(r"(?:`?tab[^`.]*`?\.)?`?(\w+)`?(?:\s+(asc|desc))?", re.IGNORECASE)
FIGURE_OF = {"size": "workers", "oldest_wait": "oldest_wait_s"}  # text shown; ranges and order read the number


def ordered(rows: list[dict[str, Any]], order_by: str | None) -> list[dict[str, Any]]:
    """The rows in a list's order (``field desc, other``; Frappe's ```tabRQ Worker Pool`.`modified` desc``).

    A field the rows do not have leaves the order as it was; a missing figure
    sorts first ascending and last descending, as MariaDB sorts NULL.
    """
    for part in reversed((order_by or "").split(",")):
        match = ORDER.fullmatch(part.strip())
        if match is None or not rows or match[1] not in rows[0]:
            continue
        field = FIGURE_OF.get(match[1], match[1])
        rows = sorted(rows, key=lambda row: _sort_key(row.get(field)), reverse=(match[2] or "").lower() == "desc")
    return rows


def _sort_key(value: Any) -> tuple[int, float, str]:
    if value is None:
        return 0, 0.0, ""
    if isinstance(value, (int, float)):
        return 1, float(value), ""
    return 2, 0.0, str(value)


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

