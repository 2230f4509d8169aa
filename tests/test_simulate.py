"""The simulator: the pool's own group and policy replayed on a virtual clock, and its command.

Pure tests: no Redis, no processes. Small synthetic traces give exact numbers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from rq_orchestrator.policy.scaling import Action, ScalingSettings
from rq_orchestrator.cli.simulate import simulate
from rq_orchestrator.policy.simulator import (DEFAULT_SPAWN_DELAY, BadTrace, Result, Simulation, TraceJob, read_trace,
                                              run_simulation, write_trace)

TRACES = Path(__file__).resolve().parent.parent / "benchmarks" / "traces"
UP, DOWN = Action.UP, Action.DOWN
RESPONSIVE = dict(max_queue_wait=0.5, max_step=8, scale_on="queue-wait")


def run(jobs: list[TraceJob], spawn_delay: float = 0.0, until: float | None = None, **settings) -> Result:
    return run_simulation(jobs, ScalingSettings(**settings), 30.0, spawn_delay, until)


def seed_jobs() -> list[TraceJob]:
    return [TraceJob(i * 0.5, 1.0) for i in range(240)]


def at_once(count: int, duration: float = 1.0) -> list[TraceJob]:
    return [TraceJob(0.0, duration) for _ in range(count)]


def waits(result: Result) -> tuple[float, float, float]:
    return result.wait_p50_s, result.wait_p95_s, result.wait_max_s


# -- the seed's rule ------------------------------------------------------------
def test_default_policy_replays_the_seed_trajectory():
    """The trajectory tests/test_scaling.py derives by hand, through the simulator."""
    result = run(seed_jobs())
    assert result.moves == [(5.0, UP, 3), (10.0, UP, 4), (140.0, DOWN, 3), (145.0, DOWN, 2)]
    assert waits(result) == (0.0, 0.0, 0.0)
    # 2 workers for 5 s, 3 for 5 s, 4 for 130 s, 3 for 5 s, 2 until 120 s after the last job ends
    assert result.worker_seconds == 2 * 5 + 3 * 5 + 4 * 130 + 3 * 5 + 2 * 95.5
    assert (result.max_workers, result.min_workers_seen, result.reversals) == (4, 2, 0)
    assert (result.scale_ups, result.scale_downs) == (2, 2)
    assert (result.time_to_max_s, result.makespan_s, result.duration_s) == (10.0, 120.5, 240.5)
    assert result.back_to_min_s == 145.0 - 119.5


@pytest.mark.parametrize("window", [7.7, 0.3, 2.2, 3.3, 12.1])
def test_one_busy_worker_of_two_holds_whatever_the_window(window):
    """Utilization exactly at the threshold holds (the seed's rule adds a worker only above it)."""
    result = run_simulation([TraceJob(0.0, 200.0)], ScalingSettings(max_workers=3, scaling_period=1.0), window)
    assert result.moves == []


def test_fixed_pool_serves_in_arrival_order():
    result = run(at_once(3), min_workers=1, max_workers=1)
    assert waits(result) == (1.0, 2.0, 2.0)
    assert result.makespan_s == 3.0
    assert result.worker_seconds == 1 * (3.0 + 120.0)
    assert result.moves == []
    assert result.back_to_min_s == 0.0


def test_until_extends_the_run_but_never_cuts_a_job():
    assert run(at_once(3), until=500.0, min_workers=1, max_workers=1).duration_s == 500.0
    assert run(at_once(3), until=1.0, min_workers=1, max_workers=1).duration_s == 3.0


def test_spawn_delay_holds_new_workers_back():
    # the minimum is ready at t=0 (the pool was up before the load); growth pays the delay
    result = run(at_once(3), spawn_delay=0.25, min_workers=1, max_workers=2, max_queue_wait=0.5)
    assert result.moves == [(1.0, UP, 2), (10.0, DOWN, 1)]
    assert waits(result) == (1.0, 1.25, 1.25)  # the third job starts when the new worker is ready
    assert result.worker_seconds == 1 * 1 + 2 * 9 + 1 * (2.25 + 120 - 10)


def test_only_idle_workers_are_retired():
    sim = Simulation([TraceJob(i * 0.7, 60.0 if i % 20 == 0 else 0.2) for i in range(600)],
                     ScalingSettings(1, 8, **RESPONSIVE), 30.0, 0.5)
    exited = sim.group.worker_exited

    def checked_exit(key, now):
        assert not sim.group.workers[key].busy
        return exited(key, now)

    sim.group.worker_exited = checked_exit
    result = sim.run()
    assert result.scale_downs > 0


# -- each option on a small trace -------------------------------------------------
def test_max_queue_wait_grows_between_periods():
    seed_rule = run(at_once(3), min_workers=1, max_workers=4)
    assert seed_rule.moves == [(5.0, UP, 2), (10.0, DOWN, 1)]
    assert waits(seed_rule) == (1.0, 2.0, 2.0)
    waited = run(at_once(3), min_workers=1, max_workers=4, max_queue_wait=0.5)
    assert waited.moves == [(1.0, UP, 2), (10.0, DOWN, 1)]  # the check at t=1 sees a job 1 s old
    assert waits(waited) == (1.0, 1.0, 1.0)


def test_a_wait_at_the_limit_is_not_too_long():
    assert run(at_once(4), min_workers=1, max_workers=4, max_queue_wait=0.999).moves[0] == (1.0, UP, 2)
    assert run(at_once(4), min_workers=1, max_workers=4, max_queue_wait=1.0).moves[0] == (2.0, UP, 2)


@pytest.mark.parametrize(
    "step, max_workers, expected",
    [(1, 8, 2), (3, 8, 4), (8, 8, 6), (8, 5, 5)],
)
def test_max_step_sizes_the_first_growth(step, max_workers, expected):
    # At t=1: one job done (1 s), 18 waiting; utilization 1.0 at threshold 0.5 -> 2 workers' worth,
    # plus 18 jobs x 1 s drained within a 5 s period -> 3.6: 6 wanted.
    result = run(at_once(20), min_workers=1, max_workers=max_workers, max_queue_wait=0.5, max_step=step)
    assert result.moves[0] == (1.0, UP, expected)


def test_max_step_never_adds_more_workers_than_jobs_wait():
    result = run(at_once(3), min_workers=1, max_workers=8, max_queue_wait=0.5, max_step=8)
    assert result.moves[0] == (1.0, UP, 2)


def test_scale_down_delay_spaces_the_scale_downs():
    result = run(seed_jobs(), scale_down_delay=30.0)
    assert result.moves == [(5.0, UP, 3), (10.0, UP, 4), (140.0, DOWN, 3), (170.0, DOWN, 2)]
    late = run(seed_jobs(), scale_down_delay=200.0)
    assert late.moves == [(5.0, UP, 3), (10.0, UP, 4), (210.0, DOWN, 3)]


def test_scale_to_zero_and_back_within_a_second():
    result = run([TraceJob(0.3, 1.0), TraceJob(100.0, 2.0)], min_workers=0, max_workers=2)
    assert result.moves == [(1.0, UP, 1), (5.0, DOWN, 0), (100.0, UP, 1), (105.0, DOWN, 0)]
    assert sorted([result.wait_p50_s, result.wait_max_s]) == [0.0, pytest.approx(0.7)]
    assert result.min_workers_seen == 0
    assert result.worker_seconds == pytest.approx(4.0 + 5.0)
    assert result.back_to_min_s == 5.0


def test_from_zero_every_job_gets_a_worker_within_a_second():
    arrivals = [0.1, 30.9, 77.5, 140.999, 200.0]
    result = run([TraceJob(t, 0.5) for t in arrivals], min_workers=0, max_workers=3)
    assert result.wait_max_s <= 1.0
    assert result.scale_ups == len(arrivals)


def test_queue_wait_mode_on_the_seed_trace():
    result = run(seed_jobs(), spawn_delay=0.5, min_workers=1, max_workers=8, **RESPONSIVE)
    # t=1: the job of 0 s ended (1 s long), the one of 0.5 s took the worker, the one of 1 s waits: the
    # worker frees in about 1 s > 0.5 s -> +1 (the work, 2 jobs/s of 1 s, fits 2). Two workers in step
    # from then on, each job waiting 0 or 0.5 s (not more than the limit). After the load, the busiest
    # moment of the last 15 s must fit one worker: at t=140 (the last jobs ran until 121).
    assert result.moves == [(1.0, UP, 2), (140.0, DOWN, 1)]
    assert result.reversals == 0
    assert waits(result) == (0.5, 0.5, 0.5)
    assert result.worker_seconds == 1 * 1 + 2 * 139 + 1 * 101


def test_a_wait_bound_to_be_long_grows_at_the_first_check():
    # a 60 s job holds the only worker; a short job arrives at 0.6 s. At t=1 it has waited 0.4 s only, but
    # the worker frees in about 1 s (the running job's age, the mean's lower bound) > 0.5 s: grow now
    jobs = [TraceJob(0.0, 60.0), TraceJob(0.6, 0.2)]
    result = run(jobs, spawn_delay=0.1, min_workers=1, max_workers=4, **RESPONSIVE)
    assert result.moves[0] == (1.0, UP, 2)
    assert result.wait_max_s == pytest.approx(0.5)  # from 0.6 s to the new worker, ready at 1.1 s
    waited = run(jobs, spawn_delay=0.1, min_workers=1, max_workers=4, max_queue_wait=0.5, max_step=8)
    assert waited.moves[0] == (1.0, UP, 2)  # the same with utilization mode's --max-queue-wait
    late = run(jobs, spawn_delay=0.1, min_workers=1, max_workers=4, **{**RESPONSIVE, "max_queue_wait": 1.0})
    assert late.moves[0] == (2.0, UP, 2)  # a limit of 1 s: the expected 1 s is not more; the job waits 1.4 s


def test_queue_wait_step_starts_the_backlog_by_the_next_check():
    # t=1: the first job ended (1 s), 4 wait, 1 worker whose work is all it carries: k new workers take k
    # jobs at once, the other 4 - k start within the second if 4 - k <= k: +2
    result = run(at_once(6), spawn_delay=0.1, min_workers=1, max_workers=8, **RESPONSIVE)
    assert result.moves[0] == (1.0, UP, 3)
    # jobs 3 and 4 on the new workers at 1.1 s; job 5 on the first worker at 2 s, job 6 at 2.1 s
    assert result.wait_max_s == pytest.approx(2.1)
    assert result.makespan_s == pytest.approx(3.1)


def test_the_default_spawn_delay():
    assert DEFAULT_SPAWN_DELAY == 0.1  # above every measured decision-to-first-job latency of the real pool
    jobs = at_once(6)
    settings = ScalingSettings(1, 8, **RESPONSIVE)
    assert run_simulation(jobs, settings, 30.0).metrics() == run_simulation(jobs, settings, 30.0, 0.1).metrics()
    result = invoke("--help")
    assert "[default: 0.1]" in result.output and "benchmarks/spawn.py" in result.output


def test_reversals_count_changes_of_direction_within_three_periods():
    assert run(at_once(3), min_workers=1, max_workers=4).reversals == 1  # up at 5, down at 10
    slow = run(at_once(3), min_workers=1, max_workers=4, scaling_period=1.5)
    assert slow.moves == [(1.5, UP, 2), (7.5, DOWN, 1)]
    assert slow.reversals == 0  # 6 s apart, more than 3 x 1.5 s


# -- traces -----------------------------------------------------------------------
def test_trace_rows_in_any_order(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("arrival_s,duration_s\n5,1\n0.5,2\n\n2,0\n")
    assert read_trace(path) == [TraceJob(0.5, 2.0), TraceJob(2.0, 0.0), TraceJob(5.0, 1.0)]


def test_write_trace_round_trips(tmp_path):
    jobs = [TraceJob(0.0, 1.5), TraceJob(2.25, 0.2)]
    write_trace(tmp_path / "t.csv", jobs)
    assert read_trace(tmp_path / "t.csv") == jobs


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "first line"),
        ("arrival,duration\n1,1\n", "first line"),
        ("arrival_s,duration_s\n", "no jobs"),
        ("arrival_s,duration_s\n1,1\n2\n", "line 3"),
        ("arrival_s,duration_s\n1,x\n", "line 2"),
        ("arrival_s,duration_s\n-1,1\n", "line 2"),
        ("arrival_s,duration_s\n1,-1\n", "line 2"),
        ("arrival_s,duration_s\n1,inf\n", "line 2"),
        ("arrival_s,duration_s\n1,1,1\n", "line 2"),
    ],
)
def test_bad_traces_are_rejected(tmp_path, text, message):
    path = tmp_path / "t.csv"
    path.write_text(text)
    with pytest.raises(BadTrace, match=message):
        read_trace(path)


def test_shipped_traces():
    seed = read_trace(TRACES / "seed.csv")
    assert seed == seed_jobs()
    assert read_trace(TRACES / "burst.csv") == at_once(300)
    ramp = read_trace(TRACES / "ramp.csv")
    assert 3500 < ramp[-1].arrival < 3600
    rates = [sum(1 for j in ramp if k * 600 <= j.arrival < (k + 1) * 600) for k in range(6)]
    assert rates[0] < rates[2] and rates[3] > rates[5]  # rising, then falling
    mixed = read_trace(TRACES / "mixed.csv")
    assert {j.duration for j in mixed} == {60.0, 0.2}
    assert 0.03 < sum(j.duration == 60.0 for j in mixed) / len(mixed) < 0.07


def test_an_hour_of_trace_is_simulated_whole():
    jobs = read_trace(TRACES / "ramp.csv")
    result = run(jobs, spawn_delay=0.5, min_workers=1, max_workers=8, **RESPONSIVE)
    assert result.duration_s > 3600 and result.jobs == len(jobs)


# -- the command ------------------------------------------------------------------
def invoke(*args: str):
    return CliRunner().invoke(simulate, list(args))


def test_json_is_one_object_with_every_metric():
    result = invoke("--trace", str(TRACES / "seed.csv"), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data) == ["jobs", "wait_p50_s", "wait_p95_s", "wait_max_s", "worker_seconds", "max_workers",
                          "min_workers_seen", "reversals", "scale_ups", "scale_downs", "time_to_max_s",
                          "makespan_s", "back_to_min_s", "duration_s"]
    assert (data["jobs"], data["max_workers"], data["worker_seconds"]) == (240, 4, 751.0)


def test_table_and_profile_with_bounds():
    result = invoke("--trace", str(TRACES / "seed.csv"), "--profile", "responsive", "--min-workers", "1",
                    "--spawn-delay", "0.5")
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.output.splitlines())
    assert rows["reversals"] == "0"
    assert rows["max_workers"] == "2"


def test_plot_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "sim.png"
    result = invoke("--trace", str(TRACES / "burst.csv"), "--json", "--plot", str(path))
    assert result.exit_code == 0, result.output
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, name",
    [
        (["--max-step", "0"], "--max-step"),
        (["--scale-down-delay", "-1"], "--scale-down-delay"),
        (["--max-queue-wait", "-0.5"], "--max-queue-wait"),
        (["--max-pool-memory", "2GB"], "No such option: --max-pool-memory"),  # the simulator has no memory
        (["--scaling-period", "1e-6", "--utilization-window", "1"], "--scaling-period must be from 0.1"),
        (["--utilization-window", "5000"], "--utilization-window must be at most"),
        (["--plot", "sim.txt"], "--plot: sim.txt must end in"),
        (["--scale-on", "queue-wait"], "--max-queue-wait"),
        (["--profile", "fast"], "--profile"),
        (["--spawn-delay", "-1"], "--spawn-delay"),
        (["--until", "-1"], "--until"),
        (["--until", "inf"], "--until"),  # it ran until the memory was gone
        (["--until", "1e9"], "--until must be 0 to 604800"),
        (["--spawn-delay", "inf"], "--spawn-delay"),
        (["--min-workers", "3", "--max-workers", "2"], "--min-workers"),
        (["--num-workers", "2", "--max-workers", "4"], "--num-workers"),
        (["--utilization-threshold", "0"], "--utilization-threshold"),
        (["--scaling-period", "10", "--utilization-window", "5"], "--utilization-window"),
        (["--trace", "/nonexistent/trace.csv"], "--trace"),
    ],
)
def test_bad_input_is_one_line_with_status_2(args, name):
    trace = [] if "--trace" in args else ["--trace", str(TRACES / "seed.csv")]
    result = invoke(*trace, *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.output


@pytest.mark.parametrize("rows, message", [
    ("1e300,1", "line 2: the job ends after 604800 s"),
    ("0,400000\n0,400000", "the jobs would still run after 604800 s"),  # one worker: the second ends in 9 days
])
def test_a_trace_past_a_week_is_refused_not_run_for_ever(tmp_path, rows, message):
    path = tmp_path / "long.csv"
    path.write_text(f"arrival_s,duration_s\n{rows}\n")
    result = invoke("--trace", str(path), "--num-workers", "1")
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_simulated_pool_is_not_bound_by_this_machine():
    result = invoke("--trace", str(TRACES / "seed.csv"), "--max-workers", "100000", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_workers"] >= 4


def test_missing_trace_is_bad_input():
    result = invoke()
    assert result.exit_code == 2
    assert "--trace" in result.output


def test_registered_in_the_main_command():
    from rq_orchestrator.cli import main

    result = CliRunner().invoke(main, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--trace", "--min-workers", "--scaling-period", "--profile", "--max-step", "--spawn-delay"):
        assert option in result.output


# -- steady load holds steady ----------------------------------------------------
def moves_during(result: Result, start: float, end: float) -> list[tuple[float, Action, int]]:
    return [move for move in result.moves if start < move[0] < end]


@pytest.mark.parametrize("min_workers", [1, 2])
def test_the_seed_load_with_real_job_lengths_holds_steady(min_workers):
    """benchmarks/traces/seed-real.csv: the seed's load with the busy time the real pool measured per job (1.025 s).

    2.05 workers' worth: two workers fall behind, so the pool needs three and must keep them
    while the load lasts (a real bench flapped 2 -> 3 -> 2 -> 3 on it).
    """
    jobs = read_trace(TRACES / "seed-real.csv")
    assert {job.duration for job in jobs} == {1.025} and len(jobs) == 240
    result = run(jobs, DEFAULT_SPAWN_DELAY, min_workers=min_workers, max_workers=8, **RESPONSIVE)
    assert result.reversals == 0
    assert [action for _, action, _ in moves_during(result, 0.0, 120.0)] == [UP] * (3 - min_workers)
    assert result.max_workers == 3 and result.wait_p95_s <= 0.5
    seed_rule = run(jobs, DEFAULT_SPAWN_DELAY)
    assert seed_rule.reversals == 0 and DOWN not in [a for _, a, _ in moves_during(seed_rule, 0.0, 120.0)]


@pytest.mark.parametrize("seed", range(4))
def test_a_steady_load_at_full_use_of_the_smaller_pool_does_not_flap(seed):
    """Two workers' worth of work with a little noise, the pool up 10 s before it starts.

    Two workers are (on average) always busy and their queue drifts: the old rule retired the
    third worker whenever the window looked light and grew back when waits came.
    """
    rng = random.Random(seed)
    jobs = [TraceJob(max(10.0 + i * 0.5 + rng.gauss(0, 0.03), 0.0), 1.0 + rng.gauss(0, 0.015)) for i in range(240)]
    result = run(jobs, DEFAULT_SPAWN_DELAY, min_workers=2, max_workers=8, **RESPONSIVE)
    assert result.reversals == 0
    assert DOWN not in [action for _, action, _ in moves_during(result, 10.0, 129.0)], result.moves
