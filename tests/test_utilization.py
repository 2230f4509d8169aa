"""BusyLedger: exact busy-time accounting over a sliding window (virtual clock).

Times are multiples of 0.5 (or small integers) so every sum is exact in binary
floating point and results can be compared with ``==``.
"""

from __future__ import annotations

import math
import random

import pytest

from rq_orchestrator.policy.utilization import BusyLedger


def brute_busy(intervals, open_starts, now, window):
    """Reference: busy seconds inside [now - window, now], computed from scratch."""
    lo = now - window
    total = 0.0
    for start, end in intervals:
        total += max(min(end, now) - max(start, lo), 0.0)
    for start in open_starts:
        total += max(now - max(start, lo), 0.0)
    return total


# -- construction ------------------------------------------------------------
@pytest.mark.parametrize("window", [0, 0.0, -1.0])
def test_window_must_be_positive(window):
    with pytest.raises(ValueError):
        BusyLedger(window, 0.0)


def test_empty_ledger():
    ledger = BusyLedger(30.0, 0.0)
    assert ledger.busy_seconds(100.0) == 0.0
    assert ledger.busy_average(100.0) == 0.0
    assert ledger.utilization(100.0, 4) == 0.0
    assert ledger.busy_workers == 0
    assert not ledger.is_busy("a")


# -- long jobs ---------------------------------------------------------------
def test_job_spanning_several_windows_is_fully_busy_in_each():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 5.0)
    assert ledger.is_busy("a")
    assert ledger.busy_workers == 1
    for now in (15.0, 20.0, 25.0, 30.0, 35.0, 40.5):
        assert ledger.busy_seconds(now) == 10.0
        assert ledger.busy_average(now) == 1.0
        assert ledger.utilization(now, 1) == 1.0
        assert ledger.utilization(now, 4) == 0.25
    ledger.job_ended("a", 45.0)
    assert not ledger.is_busy("a")
    assert ledger.busy_workers == 0
    assert ledger.busy_seconds(45.0) == 10.0
    assert ledger.busy_seconds(50.0) == 5.0
    assert ledger.busy_seconds(54.5) == 0.5
    assert ledger.busy_seconds(55.0) == 0.0
    assert ledger.busy_seconds(70.0) == 0.0


@pytest.mark.parametrize("window", [7.7, 0.3, 2.2, 3.3, 12.1, 30.0])
def test_a_job_covering_the_whole_window_counts_exactly_the_window(window):
    """``now - (now - W)`` is not W in binary floating point for these W: one busy worker of two read above 0.5."""
    ledger = BusyLedger(window, 0.0)
    ledger.job_started("a", 0.25)
    for now in (100.1, 123.456789, 1e6 + 0.1):
        assert ledger.busy_seconds(now) == window
        assert ledger.utilization(now, 2) == 0.5
    ledger.job_ended("a", 200.0)
    ledger.job_started("b", 200.0)  # another worker's job, from the end of the first on
    assert ledger.utilization(300.0, 2) == 0.5


def test_job_started_before_window_counts_only_its_part_inside():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 2.0)
    ledger.job_ended("a", 15.0)
    # window [10, 20]: only [10, 15] counts
    assert ledger.busy_seconds(20.0) == 5.0
    assert ledger.busy_average(20.0) == 0.5
    assert ledger.utilization(20.0, 2) == 0.25


def test_still_running_job_counts_its_elapsed_part():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 17.0)
    assert ledger.busy_seconds(17.0) == 0.0
    assert ledger.busy_seconds(18.5) == 1.5
    assert ledger.busy_seconds(20.0) == 3.0
    assert ledger.busy_average(20.0) == 0.3
    # a running job that began before the window counts from the window start
    ledger.job_started("b", 5.0)
    assert ledger.busy_seconds(20.0) == 3.0 + 10.0


def test_mix_of_closed_and_running_jobs():
    ledger = BusyLedger(30.0, 0.0)
    ledger.job_started("a", 10.0)
    ledger.job_ended("a", 20.0)  # 10 s
    ledger.job_started("b", 25.0)
    ledger.job_ended("b", 27.5)  # 2.5 s
    ledger.job_started("c", 35.0)  # running: 5 s at t=40
    assert ledger.busy_seconds(40.0) == 10.0 + 2.5 + 5.0
    assert ledger.busy_average(40.0) == 17.5 / 30.0
    assert ledger.utilization(40.0, 3) == 17.5 / 30.0 / 3


# -- workers that come and go -------------------------------------------------
def test_worker_born_inside_the_window():
    ledger = BusyLedger(30.0, 0.0)
    # "a" has been busy all along; "b" was born at t=90 and starts work at once
    ledger.job_started("a", 0.0)
    ledger.job_started("b", 90.0)
    ledger.job_ended("b", 95.0)
    ledger.job_started("b", 97.5)
    # window [70, 100]: a = 30, b = 5 + 2.5
    assert ledger.busy_seconds(100.0) == 37.5
    assert ledger.busy_average(100.0) == 1.25
    # divided by the workers there are now (2), not by an average headcount
    assert ledger.utilization(100.0, 2) == 0.625


def test_exited_worker_work_counts_until_it_leaves_the_window():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 8.0)
    ledger.worker_exited("a", 12.0)
    assert not ledger.is_busy("a")
    assert ledger.busy_workers == 0
    assert ledger.busy_seconds(12.0) == 4.0
    assert ledger.busy_seconds(15.0) == 4.0  # window [5, 15]
    assert ledger.busy_seconds(19.0) == 3.0  # window [9, 15]
    assert ledger.busy_seconds(21.0) == 1.0
    assert ledger.busy_seconds(22.0) == 0.0
    assert ledger.busy_seconds(30.0) == 0.0


def test_exit_of_idle_or_unknown_worker_changes_nothing():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 1.0)
    ledger.job_ended("a", 3.0)
    ledger.worker_exited("a", 5.0)
    ledger.worker_exited("ghost", 5.0)
    ledger.job_ended("ghost", 5.0)
    assert ledger.busy_seconds(10.0) == 2.0


def test_job_ended_is_idempotent():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 1.0)
    ledger.job_ended("a", 3.0)
    ledger.job_ended("a", 4.0)
    ledger.job_ended("a", 6.0)
    assert ledger.busy_seconds(10.0) == 2.0


# -- age and capacity ---------------------------------------------------------
def test_young_ledger_divides_by_its_age():
    ledger = BusyLedger(30.0, 100.0)
    ledger.job_started("a", 100.0)
    ledger.job_ended("a", 105.0)
    assert ledger.span(110.0) == 10.0
    assert ledger.busy_seconds(110.0) == 5.0
    assert ledger.busy_average(110.0) == 0.5
    assert ledger.utilization(110.0, 2) == 0.25
    # once older than the window, divides by the window
    assert ledger.span(130.0) == 30.0
    assert ledger.span(500.0) == 30.0
    assert ledger.busy_average(130.0) == 5.0 / 30.0


def test_span_before_birth_and_at_birth():
    ledger = BusyLedger(30.0, 100.0)
    assert ledger.span(100.0) == 0.0
    assert ledger.span(50.0) == 0.0


def test_zero_span_reports_running_jobs():
    ledger = BusyLedger(30.0, 100.0)
    assert ledger.busy_average(100.0) == 0.0
    ledger.job_started("a", 100.0)
    ledger.job_started("b", 100.0)
    assert ledger.busy_average(100.0) == 2.0
    assert ledger.utilization(100.0, 4) == 0.5


def test_fully_busy_young_pool_is_not_diluted():
    ledger = BusyLedger(30.0, 0.0)
    ledger.job_started("a", 0.0)
    ledger.job_started("b", 0.0)
    for now in (0.5, 1.0, 5.0, 29.5, 30.0, 60.0):
        assert ledger.busy_average(now) == 2.0
        assert ledger.utilization(now, 2) == 1.0


def test_utilization_divides_by_workers_now_not_past_capacity():
    ledger = BusyLedger(10.0, 0.0)
    for worker in "abcd":
        ledger.job_started(worker, 10.0)
        ledger.job_ended(worker, 15.0)
    # four workers busy 5 s each in [10, 20]: 20 worker-seconds, average 2
    assert ledger.busy_average(20.0) == 2.0
    assert ledger.utilization(20.0, 4) == 0.5
    assert ledger.utilization(20.0, 2) == 1.0  # two of them have gone since
    assert ledger.utilization(20.0, 1) == 2.0  # can exceed 1
    assert ledger.utilization(20.0, 8) == 0.25


def test_zero_workers():
    ledger = BusyLedger(10.0, 0.0)
    assert ledger.utilization(5.0, 0) == 0.0
    assert ledger.utilization(5.0, -1) == 0.0
    ledger.job_started("a", 5.0)
    ledger.worker_exited("a", 6.0)
    assert ledger.utilization(10.0, 0) == math.inf
    assert ledger.utilization(10.0, -1) == math.inf
    assert ledger.utilization(16.0, 0) == 0.0  # the work has left the window


# -- robustness ---------------------------------------------------------------
def test_pruning_keeps_results_exact_after_many_jobs():
    window = 30.0
    ledger = BusyLedger(window, 0.0)
    rng = random.Random(1234)
    workers = [f"w{i}" for i in range(6)]
    intervals = []
    open_starts = {}
    now = 0.0
    for step in range(20_000):
        now = step * 0.5
        worker = rng.choice(workers)
        if worker in open_starts:
            start = open_starts.pop(worker)
            ledger.job_ended(worker, now)
            if now > start:
                intervals.append((start, now))
        elif rng.random() < 0.6:
            open_starts[worker] = now
            ledger.job_started(worker, now)
        if step % 97 == 0:
            intervals = [(a, b) for a, b in intervals if b > now - window]  # the clock is monotonic
            expected = brute_busy(intervals, open_starts.values(), now, window)
            assert ledger.busy_seconds(now) == expected
            span = min(window, now)
            if span > 0:
                assert ledger.busy_average(now) == expected / span
    assert ledger.busy_seconds(now) == brute_busy(intervals, open_starts.values(), now, window)
    # and pruning did its job: only intervals that can still touch the window remain
    assert len(ledger._closed) <= 6 * int(window / 0.5 + 2)
    assert all(end > now - window for _, end in ledger._closed)


def test_out_of_order_ends_never_produce_negative_busy_time():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 10.0)
    ledger.job_started("b", 4.0)
    ledger.job_ended("a", 20.0)
    ledger.job_ended("b", 12.0)  # reported after a's later end
    assert ledger.busy_seconds(20.0) == 10.0 + 2.0
    assert ledger.busy_seconds(25.0) == 5.0  # b's [4, 12] is now outside [15, 25]
    assert ledger.busy_seconds(29.0) == 1.0
    assert ledger.busy_seconds(30.0) == 0.0
    assert ledger.busy_seconds(40.0) == 0.0


def test_end_before_start_is_ignored():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 10.0)
    ledger.job_ended("a", 8.0)  # a stale end from before the start
    assert not ledger.is_busy("a")
    assert ledger.busy_seconds(12.0) == 0.0
    ledger.job_started("b", 10.0)
    ledger.job_ended("b", 10.0)  # zero-length job
    assert ledger.busy_seconds(12.0) == 0.0


def test_running_job_started_in_the_future_counts_nothing():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 20.0)
    assert ledger.busy_seconds(15.0) == 0.0
    assert ledger.busy_average(15.0) == 0.0


def test_random_out_of_order_reports_are_never_negative_and_stay_exact():
    rng = random.Random(99)
    window = 10.0
    ledger = BusyLedger(window, 0.0)
    intervals = []
    t = 0.0
    now = 0.0
    for i in range(2000):
        t += 0.5
        start = t - rng.randrange(0, 40) * 0.5
        end = start + rng.randrange(0, 20) * 0.5
        worker = f"w{i}"
        ledger.job_started(worker, start)
        ledger.job_ended(worker, end)
        if end > start:
            intervals.append((start, end))
        now = max(now, t, end)  # the clock never runs back behind a reported event
        intervals = [(a, b) for a, b in intervals if b > now - window]  # the clock is monotonic
        busy = ledger.busy_seconds(now)
        assert busy >= 0.0
        assert busy == brute_busy(intervals, (), now, window)


def test_double_start_closes_the_first_interval():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started("a", 2.0)
    ledger.job_started("a", 5.0)  # the IDLE for the first job was lost
    assert ledger.is_busy("a")
    assert ledger.busy_workers == 1
    # [2, 5] closed plus [5, 8] running, not two overlapping intervals
    assert ledger.busy_seconds(8.0) == 6.0
    ledger.job_ended("a", 9.0)
    assert ledger.busy_seconds(9.0) == 7.0
    assert ledger.busy_seconds(14.0) == 5.0  # window [4, 14]: [4, 5] + [5, 9]


def test_busy_workers_and_is_busy_track_open_jobs():
    ledger = BusyLedger(10.0, 0.0)
    ledger.job_started(1, 0.0)
    ledger.job_started(2, 0.0)
    ledger.job_started(("pid", 3), 0.0)  # any hashable key
    assert ledger.busy_workers == 3
    assert ledger.is_busy(("pid", 3))
    ledger.job_ended(2, 1.0)
    assert ledger.busy_workers == 2
    assert not ledger.is_busy(2)
