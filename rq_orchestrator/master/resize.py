"""The groups' bounds after TTIN/TTOU: the start bounds moved by the signals' net count, within the limits.

Worked out from the start each time, not step by step from the bounds before, so that TTINs and as many
TTOUs, in any order that does not push every group against its floor, leave every group as it started,
whatever the worker bound and --max-workers-total held back on the way (a step-by-step count lost what a
limit held back, and took a group's minimum below its start).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..infra.config import GroupSpec

Bounds = list[tuple[int, int]]  # (minimum, maximum) of each group, in the pool's order


def resized_bounds(specs: Sequence[GroupSpec], net: int, worker_bound: int | None, total: int | None) -> Bounds:
    """Each group's bounds after ``net`` more TTINs than TTOUs.

    The maximum moves by ``net``, never below 1, and on the way up the maximums together stay within
    the worker bound; the minimum moves by ``net``, never below 0 nor above the maximum, and on the way
    up the minimums together stay within ``total`` (--max-workers-total). Earlier groups come first,
    and no group goes below its start bounds on the way up.
    """
    maximums = [max(s.max_workers + net, 1) for s in specs]
    if worker_bound is not None and net > 0:
        maximums = _within(maximums, [s.max_workers for s in specs], worker_bound)
    minimums = [min(max(s.min_workers + net, 0), top) for s, top in zip(specs, maximums)]
    if total is not None and net > 0:
        minimums = _within(minimums, [s.min_workers for s in specs], total)
    return list(zip(minimums, maximums))


def _within(wanted: list[int], start: list[int], limit: int) -> list[int]:
    """``wanted`` raised from ``start`` only as far as their sum stays within ``limit``, earlier ones first."""
    granted = list(start)
    for i, value in enumerate(wanted):
        granted[i] = max(min(value, limit - (sum(granted) - granted[i])), start[i])
    return granted


def next_net(specs: Sequence[GroupSpec], net: int, delta: int) -> int:
    """The net count after a TTIN (+1) or TTOU (-1). A TTOU with every group at its floor (maximum 1,
    minimum 0) is not counted: nothing goes lower, and the next TTIN raises them, as gunicorn's would.
    A TTIN the limits held back is counted: the next TTOU undoes it, and nothing goes below its start."""
    floor = -max(max(s.max_workers - 1, s.min_workers) for s in specs)
    return max(net + delta, floor) if delta < 0 else net + delta
