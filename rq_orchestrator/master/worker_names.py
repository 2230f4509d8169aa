"""Pool worker names: ``w<slot>.<pid>.<host>.<pool>[.<group>]``, made and read back.

What tells two workers apart (slot, pid) comes first, so it survives a list
column that cuts a long name (Frappe's RQ Worker list shows ``w2.12360.vm.s…``);
host and pool follow, so names stay unique across hosts and pools.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_NAME = re.compile(r"w(?P<slot>\d+)\.(?P<pid>\d+)\.(?P<origin>.+)")


class WorkerName(NamedTuple):
    slot: int
    pid: int
    origin: str  # ``<host>.<pool>`` or ``<host>.<pool>.<group>``


def worker_name(host: str, pool: str, slot: int, pid: int) -> str:
    """``pool``: the pool's name, followed by ``.<group>`` when the pool has several groups."""
    return f"w{slot}.{pid}.{host}.{pool}"


def parse_worker_name(name: str) -> WorkerName | None:
    """The parts of a pool worker's name; None for any other name (rq's uuids, Frappe's)."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    return WorkerName(int(match["slot"]), int(match["pid"]), match["origin"])


def of_pool(name: str, host: str, pool: str) -> bool:
    """Is this the name of a worker of pool ``pool`` on ``host`` (any group, any run)?"""
    parsed = parse_worker_name(name)
    origin = f"{host}.{pool}"
    return parsed is not None and (parsed.origin == origin or parsed.origin.startswith(origin + "."))
