"""ScalingPolicy.decide, ScalingSettings validation, and a replay of the seed scenario.

Pure tests: no Redis, no processes, a virtual clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque

import pytest

from rq_orchestrator.policy.group import WorkerGroup
from rq_orchestrator.policy.scaling import Action, Decision, Observation, ScalingPolicy, ScalingSettings


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


# -- the options on top of the seed's rule ---------------------------------------
def observe(now=100.0, workers=2, idle=0, utilization=0.3, queued=0, **extra):
    return Observation(now=now, workers=workers, idle_workers=idle, utilization=utilization, queued_jobs=queued,
                       **extra)


def policy(**settings):
    return ScalingPolicy(ScalingSettings(**{"min_workers": 1, "max_workers": 8, **settings}))


QUEUE_WAIT = dict(max_queue_wait=0.5, max_step=8, scale_on="queue-wait")


def test_new_settings_default_to_the_seed():
    s = ScalingSettings()
    assert (s.max_step, s.max_queue_wait, s.scale_down_delay, s.max_pool_memory) == (1, None, 0.0, None)
    assert (s.scale_on, s.scaling_period, s.reversal_window, s.queue_wait_only) == ("utilization", 5.0, 15.0, False)
    obs = Observation(now=0.0, workers=1, idle_workers=1, utilization=0.0)
    assert (obs.oldest_wait, obs.arrival_rate, obs.mean_job_seconds, obs.pool_memory) == (None, None, None, None)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_step": 0},
        {"max_queue_wait": -1.0},
        {"max_queue_wait": float("nan")},
        {"scale_down_delay": -0.5},
        {"max_pool_memory": 0},
        {"scale_on": "vibes"},
        {"scale_on": "queue-wait"},  # needs max_queue_wait
        {"scaling_period": 0.0},
    ],
)
def test_new_settings_validation(bad):
    with pytest.raises(ValueError):
        ScalingSettings(**bad)


def test_urgent_does_nothing_by_default():
    p = ScalingPolicy(ScalingSettings())
    assert p.urgent(observe(workers=2, idle=0, utilization=1.0, queued=50, oldest_wait=60.0)) is None
    assert p.urgent(observe(workers=0, idle=0, utilization=0.0, queued=0)) is None


def test_urgent_starts_a_worker_when_none_is_alive():
    p = ScalingPolicy(ScalingSettings(min_workers=0))
    assert_decision(p.urgent(observe(workers=0, idle=0, utilization=0.0, queued=3)), Action.UP, 1)
    assert p.last_up_at == 100.0


@pytest.mark.parametrize(
    "obs, grows",
    [
        (observe(oldest_wait=0.6), True),
        (observe(oldest_wait=0.5), False),  # not longer than the limit
        (observe(oldest_wait=None), False),
        (observe(oldest_wait=0.6, idle=1), False),  # an idle worker is one still starting
        (observe(oldest_wait=0.6, workers=8), False),  # at the maximum
        (observe(oldest_wait=0.6, pool_memory=3 * 10**9), False),  # above the memory ceiling
        (observe(oldest_wait=0.6, pool_memory=10**9), True),
    ],
)
def test_urgent_grows_on_a_long_wait(obs, grows):
    decision = policy(max_queue_wait=0.5, max_pool_memory=2 * 10**9).urgent(obs)
    if grows:
        assert_decision(decision, Action.UP, obs.workers + 1)
        assert "waited 0.6 s > 0.5 s" in decision.reason
    else:
        assert decision is None


def test_decide_grows_on_a_long_wait_below_the_threshold():
    assert_decision(policy(max_queue_wait=2.0).decide(observe(utilization=0.3, oldest_wait=2.5)), Action.UP, 3)
    # a long wait while a new worker starts: hold, do not shrink either
    assert_decision(policy(max_queue_wait=2.0).decide(observe(utilization=0.1, idle=1, oldest_wait=2.5)),
                    Action.HOLD, 2)


@pytest.mark.parametrize(
    "extra, expected",
    [
        # 2 jobs/s x 1 s at threshold 0.5 = 4 workers, + 10 queued x 1 s / 5 s period = 6
        ({}, 6),
        ({"max_step": 3}, 5),
        ({"max_workers": 4}, 4),
        ({"queued": 1}, 3),  # never more workers than jobs waiting
        ({"mean_job_seconds": None}, 8),  # no job length yet: one worker per waiting job, up to the step
        ({"arrival_rate": None}, 5),  # no rate: the busy average 1.2 / 0.5 = 2.4, + 2 -> 5
    ],
)
def test_max_step_sizes_growth_to_the_work(extra, expected):
    settings = {"max_step": 8, "max_queue_wait": 0.5}
    for key in ("max_step", "max_workers"):
        if key in extra:
            settings[key] = extra.pop(key)
    fields = {"utilization": 0.6, "queued": 10, "oldest_wait": 1.0, "arrival_rate": 2.0, "mean_job_seconds": 1.0}
    fields.update(extra)
    decision = policy(**settings).decide(observe(**fields))
    assert decision.action is Action.UP
    assert decision.target == expected
    assert decision.reason.endswith(f"; +{expected - 2}")  # the step taken (from 2 workers), the maximum's cap included


def test_max_step_one_is_the_seed_step():
    decision = policy(max_queue_wait=0.5).decide(
        observe(utilization=0.9, queued=100, oldest_wait=9.0, arrival_rate=10.0, mean_job_seconds=5.0))
    assert_decision(decision, Action.UP, 3)


def test_wanted_workers_in_queue_wait_mode_starts_the_backlog_by_the_next_check():
    p = policy(**QUEUE_WAIT)
    obs = observe(queued=5, arrival_rate=2.0, mean_job_seconds=1.0)
    # 2 workers, all their capacity taken by 2 jobs/s of 1 s: k new ones take k jobs, the capacity beyond
    # the arriving work (k workers' worth) starts the other 5 - k within a second: (5 - k) x 1 <= 1 x k -> 3
    assert p.wanted_workers(obs) == 5
    assert policy(max_step=8).wanted_workers(obs) == 5  # utilization mode: 2 / 0.5 = 4, + 5 x 1 s / 5 s period


@pytest.mark.parametrize(
    "workers, queued, rate, mean, expected",
    [
        (4, 2, 2.0, 1.0, 4),  # 2 spare workers start both waiting jobs within the second: no more needed
        (4, 6, 2.0, 1.0, 6),  # (6 - k) x 1 <= 2 + k -> k = 2
        (3, 1, 0.5, 3.0, 4),  # one long job waits: 1.5 spare workers free one only in about 2 s
        (2, 1, 5.0, 1.0, 5),  # the arriving work alone needs 5 workers
        (1, 98, 0.0, 1.0, 50),  # a burst: (98 - k) x 1 <= 1 + k -> k = 49 (the step and the maximum bound it)
        (2, 3, None, 1.0, 3),  # no rate yet: the busy average (0.3 x 2) stands for the arriving work
        (2, 3, 2.0, None, 5),  # no job length yet: one worker per waiting job
    ],
)
def test_queue_wait_step_sizes(workers, queued, rate, mean, expected):
    obs = observe(workers=workers, queued=queued, arrival_rate=rate, mean_job_seconds=mean)
    assert policy(**QUEUE_WAIT).wanted_workers(obs) == expected


def test_a_queue_wait_step_never_outgrows_the_waiting_jobs():
    obs = observe(workers=2, queued=3, oldest_wait=1.0, arrival_rate=20.0, mean_job_seconds=1.0)
    assert_decision(policy(**QUEUE_WAIT).decide(obs), Action.UP, 5)  # 20 workers' worth arriving, 3 waiting


def test_scale_down_delay_after_up_and_after_down():
    p = policy(scale_down_delay=30.0)
    assert_decision(p.decide(observe(now=0.0, utilization=0.9)), Action.UP, 3)
    held = p.decide(observe(now=10.0, workers=3, idle=3, utilization=0.0))
    assert_decision(held, Action.HOLD, 3)
    assert "10.0 s since the last change < 30.0 s" in held.reason
    assert_decision(p.decide(observe(now=30.0, workers=3, idle=3, utilization=0.0)), Action.DOWN, 2)
    assert_decision(p.decide(observe(now=55.0, workers=2, idle=2, utilization=0.0)), Action.HOLD, 2)
    assert_decision(p.decide(observe(now=60.0, workers=2, idle=2, utilization=0.0)), Action.DOWN, 1)


def test_memory_ceiling_blocks_growth_but_not_the_minimum():
    p = policy(min_workers=2, max_pool_memory=2 * 10**9)
    held = p.decide(observe(utilization=0.9, pool_memory=2 * 10**9 + 1))
    assert_decision(held, Action.HOLD, 2)
    assert "GiB" in held.reason
    assert_decision(p.decide(observe(utilization=0.9, pool_memory=2 * 10**9)), Action.UP, 3)
    assert_decision(p.decide(observe(utilization=0.9)), Action.UP, 3)  # not measured: no ceiling
    assert_decision(p.decide(observe(workers=1, utilization=0.9, pool_memory=5 * 10**9)), Action.UP, 2)
    zero = policy(min_workers=0, max_pool_memory=10**6)
    assert_decision(zero.decide(observe(workers=0, utilization=0.0, queued=2, pool_memory=2 * 10**6)),
                    Action.HOLD, 0)


def test_reversals_are_counted_and_said():
    p = policy()
    p.decide(observe(now=5.0, utilization=0.9))  # up
    down = p.decide(observe(now=20.0, workers=3, idle=3, utilization=0.0))  # 15 s later: within 3 periods
    assert down.action is Action.DOWN
    assert p.reversals == 1
    assert "(reversal 1: down 15.0 s after up)" in down.reason
    p.decide(observe(now=40.0, workers=2, idle=2, utilization=0.0))  # same direction
    p.decide(observe(now=56.0, workers=1, idle=0, utilization=0.9))  # up 16 s after the down
    assert p.reversals == 1


def test_reversal_counting_leaves_the_seed_decisions_alone():
    p = ScalingPolicy(ScalingSettings())
    decisions = [p.decide(observe(now=t, workers=n, idle=n, utilization=u))
                 for t, n, u in ((5.0, 2, 0.9), (10.0, 3, 0.0), (15.0, 2, 0.9), (20.0, 3, 0.0))]
    assert [(d.action, d.target) for d in decisions] == [(Action.UP, 3), (Action.DOWN, 2), (Action.UP, 3),
                                                          (Action.DOWN, 2)]
    assert p.reversals == 3


# -- queue-wait mode --------------------------------------------------------------
def test_queue_wait_mode_ignores_utilization_for_growth():
    p = policy(**QUEUE_WAIT)
    assert_decision(p.decide(observe(utilization=1.0, idle=0)), Action.HOLD, 2)
    assert_decision(p.decide(observe(now=101.0, utilization=0.1, oldest_wait=0.7, queued=1)), Action.UP, 3)


def test_queue_wait_mode_shrinks_after_three_calm_periods_with_a_worker_to_spare():
    p = policy(**QUEUE_WAIT)
    p.urgent(observe(now=0.0, workers=3, idle=0, oldest_wait=2.0, queued=4))  # long wait at t=0 -> up to 4
    for t in range(1, 16):
        p.urgent(observe(now=float(t), workers=4, idle=2))  # 2 busy
    assert_decision(p.decide(observe(now=15.0, workers=4, idle=2)), Action.HOLD, 4)  # 15 s is not > 15 s
    assert_decision(p.decide(observe(now=16.0, workers=4, idle=2)), Action.DOWN, 3)
    for t in range(17, 32):
        p.urgent(observe(now=float(t), workers=3, idle=2))  # 1 busy
    assert_decision(p.decide(observe(now=32.0, workers=3, idle=2)), Action.DOWN, 2)  # 2 left, 1 busy: room to spare
    assert_decision(p.decide(observe(now=37.0, workers=2, idle=0)), Action.HOLD, 2)


def test_queue_wait_mode_keeps_a_worker_a_steady_load_needs():
    """Two of three workers busy all along: two left would have no time to spare, and the pool would flap.

    The window's utilization (0.3 here: 0.9 busy workers, as when it reaches back before the load
    began) does not make the load look lighter than the last three periods saw it.
    """
    p = policy(**QUEUE_WAIT)
    p.urgent(observe(now=0.0, workers=2, idle=0, oldest_wait=2.0, queued=4))  # long wait at t=0 -> up
    for t in range(1, 60):
        p.urgent(observe(now=float(t), workers=3, idle=1))  # 2 busy
        if t % 5 == 0:
            decision = p.decide(observe(now=float(t), workers=3, idle=1))
            assert_decision(decision, Action.HOLD, 3)
    assert p.reversals == 0


def test_queue_wait_mode_keeps_a_worker_the_peak_needed():
    p = policy(**QUEUE_WAIT)
    for t in range(0, 20):
        p.urgent(observe(now=float(t), workers=4, idle=0 if t == 10 else 3))  # all busy once, at t=10
    assert_decision(p.decide(observe(now=20.0, workers=4, idle=3)), Action.HOLD, 4)
    for t in range(20, 26):
        p.urgent(observe(now=float(t), workers=4, idle=3))
    assert_decision(p.decide(observe(now=26.0, workers=4, idle=3)), Action.DOWN, 3)


def test_reversals_lengthen_the_calm_needed():
    p = policy(**QUEUE_WAIT)
    assert p.calm_needed(0.0) == 15.0
    p.decide(observe(now=20.0, workers=3, idle=3))  # down
    p.urgent(observe(now=25.0, workers=2, idle=0, oldest_wait=1.0, queued=1))  # up 5 s later: a reversal
    assert p.reversals == 1
    assert p.calm_needed(26.0) == 30.0
    assert p.calm_needed(25.0 + 150.0) == 30.0
    assert p.calm_needed(25.0 + 150.2) == 15.0  # forgotten after ten reversal windows (and the clock slack)


@pytest.mark.parametrize("late", [0.0, 0.003, 0.04])
def test_the_master_s_late_clock_decides_as_the_simulator_s_exact_one(late):
    """The master's ticks and checks run milliseconds late; at exactly three periods they decide as exact ones."""
    p = policy(**QUEUE_WAIT, scaling_period=2.0)
    p.urgent(observe(now=8.0 + late / 2, workers=3, idle=0, oldest_wait=1.0, queued=3))  # long wait: up
    assert_decision(p.decide(observe(now=14.0 + late, workers=6, idle=6)), Action.HOLD, 6)  # calm 6 s not over
    down = p.decide(observe(now=16.0 + late, workers=6, idle=6))
    assert_decision(down, Action.DOWN, 5)
    assert p.reversals == 0  # 8 s after the growth
    back_up = p.urgent(observe(now=22.0 + 2 * late, workers=5, idle=0, oldest_wait=1.0, queued=1))
    assert back_up.action is Action.UP and p.reversals == 1  # 6 s after the scale-down: within three periods


# -- a wait bound to be long, and a scale-down that looks at what n - 1 workers would have done -------------
@pytest.mark.parametrize("mode", [{"max_queue_wait": 0.5}, QUEUE_WAIT])
def test_grows_when_a_wait_is_bound_to_be_long(mode):
    # 2 busy workers, jobs of 3 s on average: the first frees in about 1.5 s, more than the 0.5 s limit
    grows = policy(**mode).urgent(observe(queued=1, oldest_wait=0.1, mean_job_seconds=3.0))
    assert_decision(grows, Action.UP, 3)
    assert "1 job waiting and a busy worker frees in about 1.5 s > 0.5 s" in grows.reason


@pytest.mark.parametrize(
    "obs",
    [
        observe(queued=1, oldest_wait=0.1, mean_job_seconds=1.0),  # frees in about 0.5 s: not more than the limit
        observe(queued=1, oldest_wait=0.1, mean_job_seconds=3.0, idle=1),  # a worker is starting
        observe(queued=0, mean_job_seconds=3.0),  # nothing waits
        observe(queued=1, oldest_wait=0.1),  # no job length known
    ],
)
def test_no_growth_when_a_wait_is_not_bound_to_be_long(obs):
    assert policy(**QUEUE_WAIT).urgent(obs) is None


def test_a_wait_bound_to_be_long_counts_as_a_long_wait_for_the_calm():
    p = policy(**QUEUE_WAIT)
    p.urgent(observe(now=0.0, workers=3, idle=0, queued=1, mean_job_seconds=60.0))  # up to 4
    assert p.last_long_wait_at == 0.0
    assert_decision(p.decide(observe(now=15.0, workers=4, idle=4, utilization=0.0)), Action.HOLD, 4)
    assert_decision(p.decide(observe(now=15.5, workers=4, idle=4, utilization=0.0)), Action.DOWN, 3)


def clump(mean, utilization=0.5):
    """Queue-wait mode, 4 workers, 2 busy every second but at t=10: all 4 busy and 1 queued."""
    p = policy(**QUEUE_WAIT)
    for t in range(20):
        busy, queued = (4, 1) if t == 10 else (2, 0)
        assert p.urgent(observe(now=float(t), workers=4, idle=4 - busy, queued=queued, utilization=utilization,
                                mean_job_seconds=mean)) is None
    return p.decide(observe(now=20.0, workers=4, idle=2, utilization=utilization, mean_job_seconds=mean))


def test_queue_wait_mode_retires_a_worker_a_clump_of_short_jobs_did_not_need():
    # 3 workers would have had the moment's 5 jobs started within 2 x 0.5 s / 3 = 0.33 s <= 0.5 s
    decision = clump(mean=0.5)
    assert_decision(decision, Action.DOWN, 3)
    assert "3 workers would have started the busiest moment's 5 jobs within 0.33 s" in decision.reason


@pytest.mark.parametrize(
    "mean, utilization",
    [
        (1.0, 0.5),  # 2 x 1 s / 3 = 0.67 s > 0.5 s
        (None, 0.5),  # no job length: the busiest moment must fit n - 1 workers
        (0.5, 0.8),  # 3.2 workers busy on average: 3 could not have done the window's work
    ],
)
def test_queue_wait_mode_keeps_a_worker_the_busiest_moment_needed(mean, utilization):
    assert_decision(clump(mean, utilization), Action.HOLD, 4)


def test_a_reversal_lengthens_the_calm_at_and_below_the_size_that_flapped():
    p = policy(**QUEUE_WAIT)
    assert_decision(p.decide(observe(now=20.0, workers=4, idle=4, utilization=0.0)), Action.DOWN, 3)
    p.urgent(observe(now=25.0, workers=3, idle=0, oldest_wait=1.0, queued=1))  # back to 4: 4 was needed
    assert p.reversals == 1
    assert (p.calm_needed(26.0, 4), p.calm_needed(26.0, 3), p.calm_needed(26.0)) == (30.0, 30.0, 30.0)
    assert p.calm_needed(26.0, 5) == 15.0  # a pool grown past 4 comes back down to it at the usual pace


def test_a_pool_idle_for_three_periods_forgets_the_penalty():
    p = policy(**QUEUE_WAIT)
    p.decide(observe(now=20.0, workers=4, idle=4, utilization=0.0))
    p.urgent(observe(now=25.0, workers=3, idle=0, oldest_wait=1.0, queued=1))  # a reversal
    for t in range(26, 42):
        p.urgent(observe(now=float(t), workers=4, idle=4, utilization=0.0))
    assert p.calm_needed(40.0, 4) == 30.0  # the sample at 25 (3 busy, 1 queued) is within 15 s
    assert p.calm_needed(41.0, 4) == 15.0  # nothing ran or waited from 26 to 41


def test_a_reason_shows_the_figures_apart_where_two_decimals_would_not():
    """0.5004 > 0.5 is a scale-up; "0.50 > 0.50" would contradict itself in the log."""
    assert decide(4, 0.5004).reason == "utilization 0.5004 > 0.5000"
    assert decide(4, 0.2496).reason == "utilization 0.2496 < 0.2500"
    assert decide(4, 0.61).reason == "utilization 0.61 > 0.50"
    grows = policy(max_queue_wait=0.5).decide(observe(utilization=0.3, queued=1, oldest_wait=0.54))
    assert grows.reason == "oldest job waited 0.54 s > 0.50 s"
    assert policy(min_workers=0).decide(observe(workers=0, queued=1)).reason == "1 job waiting and no worker"
    assert decide(4, 0.5000000001).reason == "utilization 0.5000000001 > 0.5"  # in full where decimals cannot tell
