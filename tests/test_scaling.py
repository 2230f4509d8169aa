"""ScalingPolicy.decide, ScalingSettings validation, and a replay of the seed scenario.

Pure tests: no Redis, no processes, a virtual clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import pytest

from rq_orchestrator.group import WorkerGroup
from rq_orchestrator.scaling import Action, Decision, Observation, ScalingPolicy, ScalingSettings


def decide(workers, utilization, idle=None, queued=0, min_workers=2, max_workers=8, threshold=0.5):
    policy = ScalingPolicy(ScalingSettings(min_workers, max_workers, threshold))
    if idle is None:
        idle = workers
    return policy.decide(
        Observation(now=100.0, workers=workers, idle_workers=idle, utilization=utilization, queued_jobs=queued)
    )


def assert_decision(decision, action, target):
    assert isinstance(decision, Decision)
    assert decision.action is action
    assert decision.target == target
    assert isinstance(decision.reason, str) and decision.reason


# -- settings ---------------------------------------------------------------
def test_settings_defaults_are_the_seed():
    s = ScalingSettings()
    assert (s.min_workers, s.max_workers, s.utilization_threshold) == (2, 8, 0.5)
    assert s.scale_down_below == 0.25


@pytest.mark.parametrize(
    "min_workers, max_workers, threshold",
    [
        (3, 2, 0.5),  # min > max
        (9, 8, 0.5),
        (-1, 8, 0.5),  # negative min
        (-5, -1, 0.5),
        (0, 0, 0.5),  # max < 1
        (0, -3, 0.5),
        (2, 8, 0.0),  # threshold 0
        (2, 8, -0.1),
        (2, 8, 1.0000001),  # threshold > 1
        (2, 8, 1.5),
        (2, 8, float("nan")),
    ],
)
def test_settings_validation_errors(min_workers, max_workers, threshold):
    with pytest.raises(ValueError):
        ScalingSettings(min_workers, max_workers, threshold)


@pytest.mark.parametrize(
    "min_workers, max_workers, threshold",
    [(0, 1, 0.5), (1, 1, 0.5), (2, 2, 1.0), (0, 8, 1e-9), (8, 8, 0.5)],
)
def test_settings_valid_edges(min_workers, max_workers, threshold):
    s = ScalingSettings(min_workers, max_workers, threshold)
    assert s.scale_down_below == threshold / 2


def test_settings_are_frozen():
    s = ScalingSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.min_workers = 3  # type: ignore[misc]


def test_action_values():
    assert (Action.UP.value, Action.DOWN.value, Action.HOLD.value) == ("up", "down", "hold")


# -- decide: the band ---------------------------------------------------------
@pytest.mark.parametrize("workers", [2, 3, 5, 7])
def test_up_above_threshold(workers):
    assert_decision(decide(workers, 0.75), Action.UP, workers + 1)


def test_up_just_above_threshold():
    assert_decision(decide(4, math.nextafter(0.5, 1.0)), Action.UP, 5)


def test_up_by_one_only_even_when_saturated():
    assert_decision(decide(2, 1.0, idle=0), Action.UP, 3)
    assert_decision(decide(2, float("inf"), idle=0), Action.UP, 3)


def test_up_at_max_holds():
    assert_decision(decide(8, 0.99, idle=0), Action.HOLD, 8)
    assert_decision(decide(8, 0.99, idle=8), Action.HOLD, 8)


def test_up_at_max_with_min_equal_max_holds():
    assert_decision(decide(3, 0.9, min_workers=3, max_workers=3), Action.HOLD, 3)


@pytest.mark.parametrize("workers", [3, 4, 8])
def test_down_below_half_threshold(workers):
    assert_decision(decide(workers, 0.1, idle=1), Action.DOWN, workers - 1)


def test_down_just_below_half_threshold():
    assert_decision(decide(4, math.nextafter(0.25, 0.0), idle=2), Action.DOWN, 3)


def test_down_at_zero_utilization():
    assert_decision(decide(5, 0.0), Action.DOWN, 4)


def test_down_at_min_holds():
    assert_decision(decide(2, 0.0), Action.HOLD, 2)


def test_down_at_min_of_one_holds():
    assert_decision(decide(1, 0.0, min_workers=1), Action.HOLD, 1)


def test_down_with_every_worker_busy_holds():
    assert_decision(decide(5, 0.1, idle=0), Action.HOLD, 5)


@pytest.mark.parametrize("utilization", [0.25, 0.3, 0.4, 0.49, 0.5])
def test_in_band_holds(utilization):
    assert_decision(decide(4, utilization, idle=2), Action.HOLD, 4)


def test_exactly_at_threshold_holds():
    # utilization == threshold is NOT above it
    assert_decision(decide(4, 0.5), Action.HOLD, 4)
    assert_decision(decide(4, 1.0, threshold=1.0), Action.HOLD, 4)
    assert_decision(decide(4, 0.3, threshold=0.3), Action.HOLD, 4)


def test_exactly_at_half_threshold_holds():
    assert_decision(decide(4, 0.25), Action.HOLD, 4)
    s = ScalingSettings(2, 8, 0.3)
    assert_decision(decide(4, s.scale_down_below, threshold=0.3), Action.HOLD, 4)
    assert_decision(decide(4, math.nextafter(s.scale_down_below, 0.0), threshold=0.3), Action.DOWN, 3)


# -- decide: the bounds -------------------------------------------------------
@pytest.mark.parametrize(
    "workers, utilization, min_workers, expected",
    [
        (1, 0.0, 2, 2),
        (1, 0.9, 2, 2),  # jumps straight to min, not n + 1
        (0, 0.0, 5, 5),
        (2, 0.0, 5, 5),
        (4, 1.0, 5, 5),
    ],
)
def test_below_min_goes_up_to_min(workers, utilization, min_workers, expected):
    assert_decision(decide(workers, utilization, min_workers=min_workers), Action.UP, expected)


def test_zero_workers_below_min_goes_up_without_queued_jobs():
    assert_decision(decide(0, 0.0, queued=0, min_workers=2), Action.UP, 2)


@pytest.mark.parametrize("utilization", [0.0, 0.3, 0.9])
def test_above_max_goes_down_by_one(utilization):
    assert_decision(decide(10, utilization, idle=1, max_workers=8), Action.DOWN, 9)
    assert_decision(decide(9, utilization, idle=3, max_workers=8), Action.DOWN, 8)


def test_above_max_with_every_worker_busy_holds():
    assert_decision(decide(10, 0.0, idle=0, max_workers=8), Action.HOLD, 10)
    assert_decision(decide(10, 1.0, idle=0, max_workers=8), Action.HOLD, 10)


def test_zero_workers_with_queued_jobs_goes_up_to_one():
    assert_decision(decide(0, 0.0, idle=0, queued=1, min_workers=0), Action.UP, 1)
    assert_decision(decide(0, 0.0, idle=0, queued=500, min_workers=0, max_workers=8), Action.UP, 1)
    # the ledger says inf when work happened but there are no workers: still one
    assert_decision(decide(0, float("inf"), idle=0, queued=3, min_workers=0), Action.UP, 1)


def test_zero_workers_without_queued_jobs_holds():
    assert_decision(decide(0, 0.0, idle=0, queued=0, min_workers=0), Action.HOLD, 0)
    assert_decision(decide(0, float("inf"), idle=0, queued=0, min_workers=0), Action.HOLD, 0)


def test_decide_is_pure():
    policy = ScalingPolicy(ScalingSettings())
    obs = Observation(now=5.0, workers=3, idle_workers=1, utilization=0.9)
    first = policy.decide(obs)
    assert policy.decide(obs) == first
    assert policy.settings == ScalingSettings()


# -- the seed scenario --------------------------------------------------------
class SeedSimulation:
    """Workers simulated by the test; events happen on a 0.5 s grid (exact floats)."""

    def __init__(self, period=5.0, window=30.0, min_workers=2, max_workers=8, threshold=0.5):
        self.period = period
        self.policy = ScalingPolicy(ScalingSettings(min_workers, max_workers, threshold))
        self.group = WorkerGroup("default", ("default",), self.policy, window=window, now=0.0)
        self.queue: deque[str] = deque()
        self.running: dict[str, float] = {}  # worker key -> end time of its job
        self.next_key = 0
        self.next_job = 0
        self.completed = 0
        self.history: list[tuple[float, int]] = []  # (time, active workers) after each step
        self.decisions: list[tuple[float, Action, int]] = []
        self._spawn(self.group.deficit, 0.0)

    def _spawn(self, count, now):
        for _ in range(count):
            self.next_key += 1
            key = f"w{self.next_key}"
            self.group.worker_born(key, self.group.free_slot(), now)
            self.group.worker_ready(key)

    def _dispatch(self, now):
        while self.queue:
            idle = sorted(self.group.idle, key=lambda w: w.slot)
            if not idle:
                return
            worker = idle[0]
            job = self.queue.popleft()
            self.group.job_started(worker.key, job, now)
            self.running[worker.key] = now + 1.0

    def run(self, until, arrivals_until):
        step = 0
        while True:
            now = step * 0.5
            if now > until:
                return
            for key, end in list(self.running.items()):
                if end <= now:
                    del self.running[key]
                    self.completed += 1
                    self.group.job_ended(key, now)
            if now < arrivals_until:
                self.next_job += 1
                self.queue.append(f"job{self.next_job}")
            self._dispatch(now)
            if now > 0 and now % self.period == 0:
                plan = self.group.tick(now, queued_jobs=len(self.queue))
                self.decisions.append((now, plan.decision.action, plan.decision.target))
                for key in plan.retire:
                    assert key not in self.running  # only idle workers are retired
                    self.group.worker_exited(key, now)
                self._spawn(plan.spawn, now)
                self._dispatch(now)
            assert self.group.deficit == 0
            self.history.append((now, len(self.group.active)))
            step += 1


@pytest.fixture(scope="module")
def seed_run():
    sim = SeedSimulation()
    sim.run(until=240.0, arrivals_until=120.0)
    return sim


def sizes(sim, start, end):
    return [n for t, n in sim.history if start <= t <= end]


def test_seed_scenario_reaches_four_within_30s(seed_run):
    assert max(sizes(seed_run, 0.0, 30.0)) >= 4


def test_seed_scenario_steady_between_60_and_120(seed_run):
    steady = sizes(seed_run, 60.0, 120.0)
    assert len(steady) == 121
    assert min(steady) >= 4
    assert max(steady) <= 5


def test_seed_scenario_respects_bounds(seed_run):
    all_sizes = [n for _, n in seed_run.history]
    assert len(all_sizes) == 481
    assert min(all_sizes) >= 2
    assert max(all_sizes) <= 8


def test_seed_scenario_back_at_min_within_60s_after_load(seed_run):
    first_at_min = next(t for t, n in seed_run.history if t >= 120.0 and n == 2)
    assert first_at_min <= 180.0
    assert sizes(seed_run, first_at_min, 240.0) == [2] * len(sizes(seed_run, first_at_min, 240.0))


def test_seed_scenario_no_job_waits(seed_run):
    # 2 busy workers on average are enough; every job ran, none is left queued
    assert not seed_run.queue
    assert not seed_run.running
    assert seed_run.next_job == 240
    assert seed_run.completed == 240


def test_seed_scenario_exact_decisions(seed_run):
    """The exact trajectory, derived by hand from the seed rule.

    Two jobs run at any instant after t=0.5 (one in [0, 0.5]); the last ends at 120.5.
    t=5: u=9.5/5/2=0.95 -> 3; t=10: u=19.5/10/3=0.65 -> 4; then u<=0.5 (==0.5 from t=35) -> hold.
    After the load: t=135: busy 30.5/30/4=0.254 -> hold; t=140: 20.5/30/4=0.171 -> 3;
    t=145: 10.5/30/3=0.117 -> 2; then hold at the minimum.
    """
    d = {t: (a, n) for t, a, n in seed_run.decisions}
    assert len(d) == 48
    assert d[5.0] == (Action.UP, 3)
    assert d[10.0] == (Action.UP, 4)
    for t in range(15, 140, 5):
        assert d[float(t)] == (Action.HOLD, 4), t
    assert d[140.0] == (Action.DOWN, 3)
    assert d[145.0] == (Action.DOWN, 2)
    for t in range(150, 245, 5):
        assert d[float(t)] == (Action.HOLD, 2), t
    assert seed_run.group.utilization(240.0) == 0.0
