"""TTIN/TTOU's bounds: the start bounds moved by the net count of the signals, within the limits (pure)."""

from __future__ import annotations

import itertools
import random

import pytest

from rq_orchestrator.infra.config import GroupSpec
from rq_orchestrator.master.resize import next_net, resized_bounds


def specs(*bounds: tuple[int, int]) -> list[GroupSpec]:
    return [GroupSpec((f"q{i}",), low, high) for i, (low, high) in enumerate(bounds)]


def replay(groups: list[GroupSpec], signals: str, bound: int | None = None, total: int | None = None):
    """The bounds after each signal of ``signals`` ('+' TTIN, '-' TTOU)."""
    net, seen = 0, []
    for signal in signals:
        net = next_net(groups, net, +1 if signal == "+" else -1)
        seen.append(resized_bounds(groups, net, bound, total))
    return seen


def test_every_bound_moves_by_one_and_back():
    groups = specs((1, 2))
    assert replay(groups, "++--") == [[(2, 3)], [(3, 4)], [(2, 3)], [(1, 2)]]


def test_a_minimum_the_total_held_back_is_not_lowered_by_the_next_ttou():
    """--queue qa:1-2 --queue qb:1-2 --max-workers-total 3: TTIN, TTOU left qb at 0-3 and retired its worker."""
    groups = specs((1, 2), (1, 2))
    assert replay(groups, "+-", total=3) == [[(2, 3), (1, 3)], [(1, 2), (1, 2)]]
    assert replay(groups, "++--", total=3)[-1] == [(1, 2), (1, 2)]


def test_at_the_worker_bound_a_ttin_that_raised_nothing_is_undone_by_the_next_ttou():
    groups = specs((2, 2))
    assert replay(groups, "+--", bound=2) == [[(2, 2)], [(2, 2)], [(1, 1)]]
    assert replay(specs((1, 4)), "++--", bound=4) == [[(2, 4)], [(3, 4)], [(2, 4)], [(1, 4)]]


def test_a_ttou_at_the_floor_is_not_counted():
    assert replay(specs((0, 1)), "-+-") == [[(0, 1)], [(1, 2)], [(0, 1)]]


def test_a_ttou_that_moved_some_groups_is_undone_by_a_ttin():
    """a 0-2, b 1, c 2 under a total of 3: a TTOU and a TTIN left c at 1-2 (it started at 2-2)."""
    groups = specs((0, 2), (1, 1), (2, 2))
    assert replay(groups, "-+", total=3) == [[(0, 1), (0, 1), (1, 1)], [(0, 2), (1, 1), (2, 2)]]


def test_the_limits_hold_on_the_way_up_and_no_group_goes_below_its_start():
    groups = specs((1, 3), (2, 3), (0, 2))
    for net in range(0, 8):
        bounds = resized_bounds(groups, net, 9, 4)
        assert sum(high for _, high in bounds) <= 9 and sum(low for low, _ in bounds) <= 4
        assert all(low >= s.min_workers and high >= s.max_workers for (low, high), s in zip(bounds, groups))
        assert all(0 <= low <= high for low, high in bounds)


@pytest.mark.parametrize("seed", range(20))
def test_ttins_then_as_many_ttous_come_back_to_the_start(seed):
    rng = random.Random(seed)
    lows = [rng.randint(0, 3) for _ in range(rng.randint(1, 3))]
    groups = specs(*[(low, max(low + rng.randint(0, 3), 1)) for low in lows])
    bound = rng.choice([None, sum(s.max_workers for s in groups) + rng.randint(0, 3)])
    total = rng.choice([None, sum(s.min_workers for s in groups) + rng.randint(0, 2)]) if len(groups) > 1 else None
    start = [(s.min_workers, s.max_workers) for s in groups]
    for ups, downs in itertools.product(range(1, 5), range(0, 4)):
        # a walk that never goes below the start: k TTINs, fewer TTOUs and as many TTINs, then k TTOUs
        downs = min(downs, ups)
        signals = "+" * ups + "-" * downs + "+" * downs + "-" * ups
        assert replay(groups, signals, bound, total)[-1] == start, signals
