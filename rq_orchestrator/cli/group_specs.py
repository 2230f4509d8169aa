"""`--queue QUEUES[:N|:MIN-MAX]`: each occurrence is a group of workers with its own queues and bounds.

``short,default:5`` is a fixed group of 5, ``long,default,short:1-3`` an
autoscaled one, and a spec without a suffix uses the pool-wide bounds
(--min-workers/--max-workers/--num-workers), as a single `--queue` always has.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..infra.config import GroupSpec, short_queue_name
from ..infra.errors import BadInput
from .limits import check_workers

SUFFIX = re.compile(r"^(?P<low>\d+)(?:-(?P<high>\d+))?$")


def plain(name: str) -> bool:
    """No spaces or control characters: a name that worker names and log lines carry as one word."""
    return not any(c.isspace() or not c.isprintable() for c in name)


def check_queues(queues: Iterable[str], option: str = "QUEUES") -> tuple[str, ...]:
    names = tuple(q.strip() for q in queues)
    if not names or any(not q for q in names):
        raise BadInput(f"{option}: empty queue name")
    if not all(plain(short_queue_name(q)) for q in names):
        raise BadInput(f"{option}: no spaces or control characters in a queue name after its last ':' "
                       f"(group and worker names carry that part)")
    if len(set(names)) != len(names):
        raise BadInput(f"{option}: a queue is named twice in {','.join(names)}")
    return names

@dataclass(frozen=True)
class GroupRequest:
    queues: tuple[str, ...]
    bounds: tuple[int, int] | None = None  # None: the pool-wide bounds


def parse_group(spec: str, option: str = "--queue") -> GroupRequest:
    names, bounds = spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and (not tail or tail[:1].isdigit() or tail.startswith("-")):  # "name:" is a count left off
        match = SUFFIX.match(tail)
        if not match:
            raise BadInput(f"{option} {spec}: {tail!r} is not N or MIN-MAX" if tail else
                           f"{option} {spec}: no worker count after the colon (N or MIN-MAX)")
        low = int(match["low"])
        high = int(match["high"]) if match["high"] is not None else low
        if low > high:
            raise BadInput(f"{option} {spec}: minimum {low} is greater than maximum {high}")
        if high < 1:
            raise BadInput(f"{option} {spec}: a group needs a maximum of at least 1")
        check_workers(high, f"{option} {spec}")
        names, bounds = head, (low, high)
    return GroupRequest(check_queues(names.split(","), f"{option} {spec or repr(spec)}"), bounds)


def parse_groups(specs: Sequence[str], option: str = "--queue") -> list[GroupRequest]:
    groups = [parse_group(spec, option) for spec in specs]
    seen = [g.queues for g in groups]
    if len(set(seen)) != len(seen):
        raise BadInput(f"{option}: the same group of queues is given twice")
    named: dict[str, str] = {}
    for spec, group in zip(specs, groups):
        name = GroupSpec(group.queues).name
        if name in named:  # the pool tells its groups apart by name: one's jobs would wait for the other's workers
            raise BadInput(f"{option} {named[name]} and {option} {spec}: both groups would be named {name!r} "
                           f"(the queues' names after their last ':', joined with '-')")
        named[name] = spec
    return groups


def check_known(requests: Sequence[GroupRequest], known: Sequence[str]) -> None:
    """Refuse queues of ``requests`` that are not among ``known`` (a bench's queues)."""
    unknown = [q for g in requests for q in g.queues if q not in known]
    if unknown:
        raise BadInput(f"--queue: unknown queue {', '.join(unknown)} (this bench has {', '.join(known)})")


def check_total(groups: Sequence[tuple[int, int]], total: int | None) -> None:
    """--max-workers-total must leave room for every group's minimum; all groups together must fit the machine."""
    if total is None:
        check_workers(sum(high for _, high in groups), "--queue (the groups' maximums together; cap them with "
                                                        "--max-workers-total)")
        return
    if len(groups) == 1:
        raise BadInput("--max-workers-total caps several --queue groups together; one group's most workers is "
                       "--max-workers (or --queue QUEUES:MIN-MAX)")
    if total < 1:
        raise BadInput(f"--max-workers-total must be at least 1, got {total}")
    minimums = sum(low for low, _ in groups)
    if total < minimums:
        raise BadInput(f"--max-workers-total ({total}) is below the sum of the groups' minimums ({minimums})")
