"""WorkerGroup bookkeeping: slots, busy/idle, retiring, target and tick() plans.

Pure tests: no Redis, no processes, a virtual clock.
"""

from __future__ import annotations

import pytest

from rq_orchestrator.policy.group import Plan, WorkerGroup, WorkerRecord
from rq_orchestrator.policy.scaling import Action, ScalingPolicy, ScalingSettings


def make_group(min_workers=2, max_workers=8, threshold=0.5, window=30.0, now=0.0):
    policy = ScalingPolicy(ScalingSettings(min_workers, max_workers, threshold))
    return WorkerGroup("default", ("high", "default"), policy, window=window, now=now)


def populate(group, count, now=0.0, prefix="w"):
    """Start `count` workers in the lowest free slots; keys are f"{prefix}{slot}"."""
    keys = []
    for _ in range(count):
        slot = group.free_slot()
        key = f"{prefix}{slot}"
        group.worker_born(key, slot, now)
        keys.append(key)
    return keys


def slots(records):
    return sorted(w.slot for w in records)


# -- construction and records ------------------------------------------------
def test_new_group_targets_the_minimum():
    group = make_group(min_workers=3)
    assert group.name == "default"
    assert group.queues == ("high", "default")
    assert group.target == 3
    assert group.workers == {}
    assert group.active == []
    assert group.deficit == 3
    assert group.last_decision is None
    assert group.ledger.window == 30.0


def test_a_group_observed_from_later_measures_from_then():
    group = make_group(min_workers=1, window=30.0, now=0.0)
    group.observed_from(4.0)  # the master's start-up (prewarm) took 4 s: no worker existed before
    (key,) = populate(group, 1, now=4.0)
    group.job_started(key, "j", 4.0)
    assert group.utilization(8.0) == 1.0  # busy all the time there was a worker, not 4 s of 8


def test_worker_born_records_the_worker():
    group = make_group()
    record = group.worker_born(1234, 1, 5.0, name="host.pool.w1.1234")
    assert isinstance(record, WorkerRecord)
    assert group.workers[1234] is record
    assert (record.key, record.slot, record.born_at, record.name) == (1234, 1, 5.0, "host.pool.w1.1234")
    assert record.job_id is None and not record.busy
    assert record.jobs_done == 0 and not record.retiring and not record.ready
    assert group.worker_born(99, 2, 5.0).name == "99"  # defaults to str(key)
    group.worker_ready(1234)
    assert record.ready
    assert group.deficit == 0


# -- slots -----------------------------------------------------------------
def test_free_slot_starts_at_one_and_fills_upward():
    group = make_group()
    assert group.free_slot() == 1
    assert populate(group, 3) == ["w1", "w2", "w3"]
    assert group.free_slot() == 4


def test_free_slot_reuses_the_lowest_free_slot():
    group = make_group()
    populate(group, 5)
    group.worker_exited("w4", 1.0)
    group.worker_exited("w2", 1.0)
    assert group.free_slot() == 2
    group.worker_born("new-a", group.free_slot(), 2.0)
    assert group.workers["new-a"].slot == 2
    assert group.free_slot() == 4
    group.worker_born("new-b", group.free_slot(), 2.0)
    assert group.workers["new-b"].slot == 4
    assert group.free_slot() == 6


def test_free_slots_for_a_round_skip_the_ones_held():
    group = make_group()
    populate(group, 5)
    group.worker_exited("w4", 1.0)
    group.worker_exited("w2", 1.0)
    assert group.free_slots(4) == [2, 4, 6, 7]  # a round of forks takes these, none twice
    assert group.free_slots(0) == []
    group.worker_exited("w1", 3.0)
    assert group.free_slot() == 1


def test_retiring_worker_keeps_its_slot_until_it_exits():
    group = make_group()
    populate(group, 3)
    group.mark_retiring("w3")
    assert group.free_slot() == 4  # the retiring process is still alive
    group.worker_exited("w3", 1.0)
    assert group.free_slot() == 3


# -- job events ------------------------------------------------------------
def test_job_events_mark_busy_and_idle():
    group = make_group()
    populate(group, 2)
    group.job_started("w1", "job-1", 1.0)
    assert group.workers["w1"].busy
    assert group.workers["w1"].job_id == "job-1"
    assert slots(group.idle) == [2]
    assert group.ledger.is_busy("w1")
    group.job_ended("w1", 3.0)
    assert not group.workers["w1"].busy
    assert group.workers["w1"].jobs_done == 1
    assert slots(group.idle) == [1, 2]
    assert group.ledger.busy_seconds(3.0) == 2.0


def test_empty_job_id_still_counts_as_busy():
    group = make_group()
    populate(group, 1)
    group.job_started("w1", "", 1.0)  # the pool passes "" when the event has no id
    assert group.workers["w1"].busy
    assert group.idle == []


def test_job_ended_for_idle_worker_is_ignored():
    group = make_group()
    populate(group, 1)
    group.job_ended("w1", 1.0)
    assert group.workers["w1"].jobs_done == 0


def test_job_events_for_unknown_keys_are_ignored():
    group = make_group()
    populate(group, 1)
    group.job_started("ghost", "job-x", 1.0)
    assert "ghost" not in group.workers
    assert group.ledger.busy_workers == 0
    assert not group.ledger.is_busy("ghost")
    group.job_ended("ghost", 2.0)
    group.worker_ready("ghost")
    group.mark_retiring("ghost")
    assert group.worker_exited("ghost", 3.0) is None
    assert list(group.workers) == ["w1"]
    assert group.ledger.busy_seconds(3.0) == 0.0
    assert group.utilization(3.0) == 0.0


def test_worker_exited_returns_the_record_and_closes_its_job():
    group = make_group()
    populate(group, 2)
    group.job_started("w2", "job-1", 4.0)
    record = group.worker_exited("w2", 10.0)
    assert record is not None and record.key == "w2" and record.job_id == "job-1"
    assert "w2" not in group.workers
    assert not group.ledger.is_busy("w2")
    assert group.ledger.busy_seconds(10.0) == 6.0
    assert group.worker_exited("w2", 11.0) is None


# -- views ------------------------------------------------------------------
def test_active_idle_and_observe():
    group = make_group()
    populate(group, 4)
    group.job_started("w1", "j1", 0.0)
    group.job_started("w2", "j2", 0.0)
    group.mark_retiring("w4")
    assert slots(group.active) == [1, 2, 3]
    assert slots(group.idle) == [3]
    obs = group.observe(10.0, queued_jobs=7)
    assert obs.now == 10.0
    assert obs.workers == 3
    assert obs.idle_workers == 1
    assert obs.queued_jobs == 7
    # 20 busy seconds over a 10 s young window = 2 busy on average, over 3 active workers
    assert obs.utilization == 2.0 / 3.0
    assert group.utilization(10.0) == 2.0 / 3.0


# -- tick ------------------------------------------------------------------
def test_tick_on_high_utilization_spawns_one():
    group = make_group()
    populate(group, 2)
    group.job_started("w1", "j1", 0.0)
    group.job_started("w2", "j2", 0.0)
    plan = group.tick(5.0, queued_jobs=4)
    assert isinstance(plan, Plan)
    assert plan.decision.action is Action.UP
    assert plan.decision.target == 3
    assert plan.spawn == 1
    assert plan.retire == ()
    assert group.target == 3
    assert group.deficit == 1
    assert group.last_decision == plan.decision
    populate(group, 1, now=5.0)
    assert group.deficit == 0


def test_tick_at_max_holds_and_spawns_nothing():
    group = make_group(min_workers=1, max_workers=2)
    populate(group, 2)
    group.job_started("w1", "j1", 0.0)
    group.job_started("w2", "j2", 0.0)
    plan = group.tick(5.0)
    assert (plan.decision.action, plan.decision.target, plan.spawn, plan.retire) == (Action.HOLD, 2, 0, ())


def test_tick_on_low_utilization_retires_the_highest_slot_idle_worker():
    group = make_group()
    populate(group, 4)
    group.target = 4
    plan = group.tick(10.0)
    assert plan.decision.action is Action.DOWN
    assert plan.decision.target == 3
    assert plan.spawn == 0
    assert plan.retire == ("w4",)
    assert group.workers["w4"].retiring
    assert "w4" in group.workers  # still alive until it exits
    assert [w.key for w in group.active] == ["w1", "w2", "w3"]
    assert "w4" not in [w.key for w in group.idle]
    assert group.target == 3
    assert group.deficit == 0
    # its exit is expected: no replacement
    group.worker_exited("w4", 11.0)
    assert group.deficit == 0
    # next tick retires the next highest; then the minimum holds
    assert group.tick(15.0).retire == ("w3",)
    group.worker_exited("w3", 15.0)
    plan = group.tick(20.0)
    assert (plan.decision.action, plan.decision.target, plan.retire, plan.spawn) == (Action.HOLD, 2, (), 0)


def test_retirement_orders_by_slot_not_by_key_or_birth():
    group = make_group()
    group.worker_born(900, 1, 0.0)
    group.worker_born(100, 3, 0.0)
    group.worker_born(500, 2, 0.0)
    group.target = 3
    assert group.tick(10.0).retire == (100,)


def test_busy_worker_is_never_chosen_for_retirement():
    group = make_group()
    populate(group, 4)
    group.target = 4
    group.job_started("w4", "j", 9.5)  # highest slot busy; 0.5 busy s over 10 s and 4 workers
    plan = group.tick(10.0)
    assert plan.decision.action is Action.DOWN
    assert plan.retire == ("w3",)
    assert not group.workers["w4"].retiring
    assert group.workers["w3"].retiring


def test_no_retirement_when_every_worker_is_busy():
    group = make_group()
    populate(group, 4)
    group.target = 4
    for key in ("w1", "w2", "w3", "w4"):
        group.job_started(key, f"j-{key}", 29.5)  # busy now, idle most of the window
    plan = group.tick(30.0)
    assert plan.decision.action is Action.HOLD
    assert plan.retire == ()
    assert not any(w.retiring for w in group.workers.values())
    assert group.target == 4


def test_above_max_after_resize_retires_one_idle_per_tick():
    group = make_group()
    populate(group, 5)
    group.target = 5
    for key in ("w1", "w2", "w3"):
        group.job_started(key, "j", 0.0)
    group.resize_bounds(1, 3)
    assert group.target == 3
    plan = group.tick(10.0)  # utilization 3/5 is above the threshold, but 5 > max
    assert (plan.decision.action, plan.decision.target) == (Action.DOWN, 4)
    assert plan.retire == ("w5",)
    plan = group.tick(15.0)
    assert plan.retire == ("w4",)
    plan = group.tick(20.0)  # at the maximum with high utilization: hold
    assert (plan.decision.action, plan.decision.target, plan.retire) == (Action.HOLD, 3, ())


def test_below_min_tick_spawns_the_whole_gap():
    group = make_group(min_workers=4)
    populate(group, 1)
    plan = group.tick(5.0)
    # The target is the minimum already: the gap is spawned, and no scale-up is counted for it.
    assert (plan.decision.action, plan.decision.target, plan.spawn) == (Action.HOLD, 4, 3)
    assert plan.decision.reason == "1 worker below the minimum 4 (the target holds it already)"


def test_an_up_to_a_size_already_targeted_is_no_new_scale_up():
    """Jobs wait, no worker, and the one asked for cannot start yet (a crash back-off): asked again, no new decision."""
    group = make_group(min_workers=0)
    first = group.urgent_tick(1.0, queued_jobs=3)
    assert first is not None and (first.decision.action, first.decision.target, first.spawn) == (Action.UP, 1, 1)
    assert group.urgent_tick(2.0, queued_jobs=3) is None  # the worker has not started: same target
    assert group.tick(3.0, queued_jobs=3).decision.action is Action.HOLD
    assert group.deficit == 1


def test_zero_workers_tick_with_and_without_queued_jobs():
    group = make_group(min_workers=0)
    plan = group.tick(5.0, queued_jobs=0)
    assert (plan.decision.action, plan.decision.target, plan.spawn) == (Action.HOLD, 0, 0)
    plan = group.tick(10.0, queued_jobs=2)
    assert (plan.decision.action, plan.decision.target, plan.spawn) == (Action.UP, 1, 1)


# -- crashes ------------------------------------------------------------------
def test_deficit_after_a_crash_is_one():
    group = make_group(min_workers=3)
    populate(group, 3)
    group.job_started("w2", "j", 1.0)
    assert group.deficit == 0
    record = group.worker_exited("w2", 2.0)  # not retiring: a crash
    assert record is not None and not record.retiring
    assert group.target == 3
    assert group.deficit == 1
    assert group.free_slot() == 2  # the replacement takes the crashed worker's slot


def test_exit_of_a_retiring_worker_leaves_no_deficit():
    group = make_group()
    populate(group, 3)
    group.target = 3
    plan = group.tick(10.0)
    assert plan.retire == ("w3",)
    group.worker_exited("w3", 12.0)
    assert group.deficit == 0


def test_a_worker_that_keeps_its_place_is_replaced_only_after_it_exits():
    """Told to leave (a learned module), it stays capacity: its replacement waits, it is not retired twice."""
    group = make_group(min_workers=2)
    populate(group, 2)
    group.mark_retiring("w2", keep_place=True)
    assert slots(group.active) == [1, 2] and slots(group.idle) == [1]
    assert group.capacity == 2 and group.deficit == 0
    group.job_started("w2", "taken before the stop reached it", 1.0)
    assert group.deficit == 0  # no replacement beside the job it took
    assert group.resize_to(1) == ()  # going to one: w2 leaving is that retirement
    assert group.resize_to(2) == () and group.deficit == 0
    group.job_ended("w2", 2.0)
    group.worker_exited("w2", 2.5)
    assert group.deficit == 1 and group.free_slot() == 2


def test_pending_crash_replacement_survives_an_in_band_tick():
    """A HOLD tick between a crash and its respawn must not forget the missing worker."""
    group = make_group()
    populate(group, 4)
    group.target = 4
    group.job_started("w1", "j", 0.0)
    group.job_ended("w1", 30.0)  # 30 busy s / 30 s = 1 busy on average
    group.worker_exited("w4", 29.0)  # crash of an idle worker; 3 survive -> u = 1/3, in band
    assert group.deficit == 1
    plan = group.tick(30.0)
    assert plan.decision.action is Action.HOLD
    assert plan.spawn == 1
    assert group.target == 4


# -- resize ----------------------------------------------------------------
@pytest.mark.parametrize(
    "target, new_min, new_max, expected",
    [
        (2, 4, 8, 4),  # raised to the new minimum
        (6, 1, 3, 3),  # lowered to the new maximum
        (5, 1, 10, 5),  # within the bounds: unchanged
        (0, 0, 1, 0),
        (7, 7, 7, 7),
    ],
)
def test_resize_bounds_clamps_target(target, new_min, new_max, expected):
    group = make_group()
    group.target = target
    group.resize_bounds(new_min, new_max)
    assert group.target == expected
    assert group.policy.settings.min_workers == new_min
    assert group.policy.settings.max_workers == new_max
    assert group.policy.settings.utilization_threshold == 0.5


def test_resize_bounds_rejects_bad_bounds_and_changes_nothing():
    group = make_group()
    group.target = 5
    with pytest.raises(ValueError):
        group.resize_bounds(6, 3)
    assert group.target == 5
    assert (group.policy.settings.min_workers, group.policy.settings.max_workers) == (2, 8)


def test_resize_bounds_applies_to_next_decision():
    group = make_group()
    populate(group, 2)
    group.resize_bounds(4, 8)
    assert group.deficit == 2
    plan = group.tick(5.0)
    assert (plan.decision.action, plan.decision.target, plan.spawn) == (Action.HOLD, 4, 2)


# -- observations for the policy options -------------------------------------------
def test_tick_passes_the_new_measurements_to_the_policy():
    group = make_group()
    populate(group, 2)
    plan = group.tick(5.0, 3, oldest_wait=1.5, pool_memory=123)
    assert plan.decision.action is Action.HOLD
    obs = group.last_observation
    assert (obs.now, obs.queued_jobs, obs.oldest_wait, obs.pool_memory) == (5.0, 3, 1.5, 123)
    group.tick(10.0)  # positional and default use still work
    assert (group.last_observation.oldest_wait, group.last_observation.pool_memory) == (None, None)


def test_urgent_tick_is_none_unless_the_policy_grows():
    group = make_group()
    populate(group, 2)
    assert group.urgent_tick(1.0, 10, oldest_wait=30.0) is None  # the seed's rule: no urgent growth
    assert group.target == 2


def test_urgent_tick_grows_an_empty_group():
    group = make_group(min_workers=0)
    plan = group.urgent_tick(0.4, 1)
    assert plan is not None
    assert (plan.decision.action, plan.decision.target, plan.spawn, plan.retire) == (Action.UP, 1, 1, ())
    assert group.target == 1 and group.last_decision == plan.decision


def test_urgent_tick_on_a_long_wait():
    policy = ScalingPolicy(ScalingSettings(1, 4, 0.5, max_queue_wait=2.0))
    group = WorkerGroup("default", ("default",), policy, window=30.0, now=0.0)
    populate(group, 1)
    group.job_started("w1", "j1", 0.0)
    assert group.urgent_tick(1.0, 1, oldest_wait=1.0) is None
    plan = group.urgent_tick(2.0, 2, oldest_wait=2.5)
    assert (plan.decision.action, plan.spawn) == (Action.UP, 1)
    populate(group, 1, now=2.0)
    assert group.urgent_tick(3.0, 2, oldest_wait=3.5) is None  # the new worker is idle: still starting


def test_arrival_rate_counts_starts_and_queue_growth():
    group = make_group()
    populate(group, 2)
    group.tick(0.0, 0)
    assert group.observe(0.0).arrival_rate is None  # one sample: no rate yet
    for t in (1.0, 2.0, 3.0, 4.0):
        group.job_started("w1", f"j{t}", t)
        group.job_ended("w1", t + 0.5)
    group.tick(5.0, 6)  # 4 started, queue grew by 6 over 5 s
    assert group.last_observation.arrival_rate == 10 / 5


def test_arrival_rate_waits_for_a_scaling_period_of_samples():
    group = make_group()  # period 5 s
    group.tick(0.0, 0)
    group.urgent_tick(1.0, 7)  # 7 jobs in a second: too short a span to call it a rate
    assert group.last_observation.arrival_rate is None
    group.urgent_tick(5.0, 7)
    assert group.last_observation.arrival_rate == 7 / 5


def test_arrival_rate_window_slides():
    group = make_group(window=10.0)
    populate(group, 1)
    group.tick(0.0, 5)
    group.job_started("w1", "j", 1.0)
    group.tick(10.0, 5)
    group.tick(15.0, 3)  # the sample at 0 left the window: from t=10, no start and 2 fewer queued
    assert group.last_observation.arrival_rate == 0.0


def test_mean_job_seconds_is_the_kaplan_meier_mean():
    group = make_group()
    populate(group, 3)
    assert group.observe(1.0).mean_job_seconds is None  # no job ran
    group.job_started("w1", "a", 0.0)
    group.job_ended("w1", 2.0)
    group.job_started("w2", "b", 1.0)  # 60 s job, still running
    # a ended at 2 s; b has run 2 s: half the jobs outlive 2 s, by an unknown margin: 2.0 so far
    assert group.observe(3.0).mean_job_seconds == 2.0
    group.job_started("w1", "c", 3.0)  # just started: adds nothing
    assert group.observe(3.0).mean_job_seconds == 2.0
    # 2/3 of the jobs outlive a's 2 s; c (28 s) and b (30 s) still run: 2 + 2/3 x 28
    assert group.observe(31.0).mean_job_seconds == pytest.approx(2.0 + 2 / 3 * 28.0)
    # the only ended job left the window: the jobs still running bound the mean from below (b: 31.5 s)
    assert group.observe(32.5).mean_job_seconds == 31.5


def test_mean_job_seconds_is_not_inflated_by_young_jobs():
    # just after a scale-up: 1 job of 1 s ended, 4 started 0.9 s ago (time on test would say (1 + 3.6) / 1)
    group = make_group()
    populate(group, 5)
    group.job_started("w1", "a", 0.0)
    group.job_ended("w1", 1.0)
    for key in ("w2", "w3", "w4", "w5"):
        group.job_started(key, key, 1.1)
    assert group.observe(2.0).mean_job_seconds == 1.0


def test_a_job_lost_with_its_worker_does_not_count_as_ended():
    group = make_group()
    populate(group, 2)
    group.job_started("w1", "a", 0.0)
    group.worker_exited("w1", 5.0)
    assert group.observe(6.0).mean_job_seconds is None
    group.job_started("w2", "b", 6.0)
    group.job_ended("w2", 7.0)
    assert group.observe(7.0).mean_job_seconds == 1.0


# -- a worker and the one taking over from it (SIGHUP's re-fork) ---------------
@pytest.mark.parametrize(("utilization_busy", "action", "after"), [(0, Action.DOWN, 2), (1, Action.HOLD, 3)])
def test_a_take_over_counts_once_and_leaves_the_decided_size(utilization_busy, action, after):
    """While a re-forked worker comes up beside its predecessor, the pair is one worker to the policy; once the
    predecessor leaves, the group has what the policy decided (it fell below the minimum before)."""
    group = make_group(min_workers=2, max_workers=8, threshold=0.5, window=10.0)
    keys = populate(group, 3)
    group.target = 3
    for key in keys[:utilization_busy]:
        group.job_started(key, "job", 0.0)
    group.replacement_started()
    [new] = populate(group, 1, prefix="new")
    assert (group.target, group.capacity, group.deficit) == (4, 3, 0)
    plan = group.tick(20.0)
    assert plan.decision.action is action
    assert group.last_observation.workers == 3
    group.replacement_ended()  # the new worker is up: the pool retires its predecessor
    old = keys[-1]
    if not group.workers[old].retiring:
        group.mark_retiring(old)
    assert group.target == after
    assert len(group.active) == after and group.deficit == 0
