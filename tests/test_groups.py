"""Queue groups: one master, several groups of workers with their own queues and bounds."""

from __future__ import annotations

import time

import pytest
from rq import Queue

from rq_orchestrator.cli.group_specs import GroupRequest, parse_group
from rq_orchestrator.infra.errors import BadInput
from test_cli import run_cli
from test_pool import FAST, finished


def group_sizes(pool) -> dict[str, int]:
    state = pool.state()
    return {g["name"]: g["workers"] for g in state["groups"]} if state else {}


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("short,default", GroupRequest(("short", "default"))),
        ("short,default:5", GroupRequest(("short", "default"), (5, 5))),
        ("long,default,short:1-3", GroupRequest(("long", "default", "short"), (1, 3))),
        ("batch:0-3", GroupRequest(("batch",), (0, 3))),
        # Only a suffix that starts like a number is read as bounds: rq queue names may hold ':'.
        ("app:high-priority", GroupRequest(("app:high-priority",))),
        # Frappe names a bench's queues after its path, spaces and all: only the part after the last ':' is a name.
        ("home-me-My Bench:short,home-me-My Bench:long:1-2",
         GroupRequest(("home-me-My Bench:short", "home-me-My Bench:long"), (1, 2))),
    ],
)
def test_group_specs_parse(spec, expected):
    assert parse_group(spec) == expected


@pytest.mark.parametrize("spec", [":3", "a,,b:2", "a:5-2", "a:3x", "a:2-", "a:-1", "a,a:2", "a:0", "a:", "a,b:"])
def test_bad_group_specs_are_rejected(spec):
    with pytest.raises(BadInput):
        parse_group(spec)


def test_an_empty_queue_name_is_shown_quoted():
    with pytest.raises(BadInput, match="^--queue '': empty queue name$"):
        parse_group("")


@pytest.mark.parametrize(
    "args,names",
    [
        (["--queue", "a:5-2"], "--queue"),
        (["--queue", ",:2"], "--queue"),
        (["--queue", "a,a:2"], "--queue"),
        (["--queue", "a:1", "--queue", "a:2"], "--queue"),
        (["--queue", "p:a:0-2", "--queue", "q:a:0-2"], "--queue p:a:0-2 and --queue q:a:0-2: both groups would be"),
        (["--queue", "a-b:1", "--queue", "a,b:1"], "both groups would be named 'a-b'"),
        (["--queue", "a: 2"], "--queue a: 2: no spaces or control characters in a queue name"),
        (["tab\tqueue"], "QUEUES: no spaces"),
        (["--queue", "a:2", "--queue", "b:2", "--max-workers-total", "3"], "--max-workers-total"),
        (["default", "--queue", "a:1"], "either as arguments or with --queue"),
        (["--num-workers", "2", "--queue", "a:1-3"], "--num-workers: every --queue group has its own worker count"),
        (["--max-workers", "4", "--queue", "a:1", "--queue", "b:2"], "--max-workers: every --queue group"),
    ],
)
def test_bad_group_command_lines_exit_2(redis_url, args, names):
    result = run_cli("worker-pool", "--url", redis_url, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and names in result.stderr


def test_load_on_one_group_scales_that_group_only(start_pool, redis):
    pool = start_pool("--queue", "fast:1-4", "--queue", "slow:1-4", *FAST)
    pool.wait_until(lambda: group_sizes(pool) == {"fast": 1, "slow": 1}, 15, "one worker per group")
    jobs = [Queue("fast", connection=redis).enqueue("jobs.sleep", 0.2) for _ in range(40)]
    seen = []

    def fast_grew() -> bool:
        seen.append(group_sizes(pool))
        return seen[-1].get("fast", 0) >= 3

    pool.wait_until(fast_grew, 20, "the fast group to grow")
    pool.wait_until(lambda: finished(jobs), 30, "the jobs")
    assert all(sizes.get("slow", 1) == 1 for sizes in seen)
    names = [w["name"] for w in pool.workers()]
    assert any(n.endswith(".fast") for n in names) and any(n.endswith(".slow") for n in names)
    assert "group=fast" in pool.output()


def test_total_cap_holds_and_capacity_moves_to_where_jobs_wait(start_pool, redis):
    pool = start_pool("--queue", "a:0-3", "--queue", "b:0-3", "--max-workers-total", "3", *FAST)
    a_jobs = [Queue("a", connection=redis).enqueue("jobs.sleep", 0.3) for _ in range(30)]
    totals = []

    def watch(predicate):
        def check() -> bool:
            totals.append(len(pool.workers()))
            return predicate()
        return check

    pool.wait_until(watch(lambda: group_sizes(pool).get("a") == 3), 20, "group a to take the whole cap")
    pool.wait_until(watch(lambda: finished(a_jobs)), 30, "a's jobs")
    b_jobs = [Queue("b", connection=redis).enqueue("jobs.sleep", 0.3) for _ in range(30)]
    pool.wait_until(watch(lambda: group_sizes(pool).get("b", 0) >= 2), 20, "capacity to move to group b")
    pool.wait_until(watch(lambda: finished(b_jobs)), 30, "b's jobs")
    assert max(totals) <= 3
    assert "--max-workers-total 3 is full: a quiet group's idle worker moves here" in pool.output()


def test_a_group_below_its_minimum_has_the_first_claim_on_a_free_slot(start_pool, redis):
    """Under the cap, a group whose worker left gets the freed slot before a busy group's growth."""
    from rq.command import send_shutdown_command

    pool = start_pool("--queue", "b:1-3", "--queue", "a:1-3", "--max-workers-total", "3", *FAST)
    pool.wait_until(lambda: group_sizes(pool) == {"b": 1, "a": 1}, 15, "one worker each")
    b_jobs = [Queue("b", connection=redis).enqueue("jobs.sleep", 1.0) for _ in range(30)]
    pool.wait_until(lambda: group_sizes(pool).get("b") == 2 and pool.state()["groups"][0]["target"] == 3, 15,
                    "group b to want more than the cap leaves it")
    a_worker = next(w for w in pool.workers() if w["name"].endswith(".a"))
    send_shutdown_command(redis, a_worker["name"])  # a's only worker leaves (as one retired or recycled would)
    pool.wait_until(lambda: any(w["name"].endswith(".a") and w["pid"] != a_worker["pid"] and w["state"] == "idle"
                                for w in pool.workers()), 10, "a's minimum back")
    assert not finished(b_jobs)  # b still had jobs waiting: the slot went to a all the same


def test_ttin_moves_every_group_but_keeps_their_minimums_within_the_total_cap(start_pool):
    """The cap holds the groups' minimums together (a start with more is refused); the first group gets the room."""
    import signal

    pool = start_pool("--queue", "a:1", "--queue", "b:1-2", "--max-workers-total", "3", *FAST)
    pool.wait_until(lambda: group_sizes(pool) == {"a": 1, "b": 1}, 15, "one worker each")
    pool.send(signal.SIGTTIN)
    pool.wait_until(lambda: "resize b" in pool.output(), 10, "the resize of both groups")
    assert "resize a: bounds 2-2, target 2" in pool.output()
    assert "resize b: bounds 1-3, target 1" in pool.output()  # a minimum or a worker more: 4 > 3 in all
    pool.wait_until(lambda: group_sizes(pool) == {"a": 2, "b": 1}, 15, "a's new minimum, within the cap")
    pool.send(signal.SIGTTOU)  # undoes the TTIN: b's minimum, which the cap held back, stays where it started
    pool.wait_until(lambda: "resize b: bounds 1-2, target 1" in pool.output(), 10, "the resize down")
    assert "resize a: bounds 1-1, target 1" in pool.output()
    pool.wait_until(lambda: [(g["min"], g["max"]) for g in pool.state()["groups"]] == [(1, 1), (1, 2)], 5,
                    "the bounds as at the start, published")
    pool.wait_until(lambda: group_sizes(pool) == {"a": 1, "b": 1}, 15, "one worker each, as at the start")
    pool.send(signal.SIGTTOU)  # a TTOU of its own lowers b's minimum
    pool.wait_until(lambda: "resize b: bounds 0-1" in pool.output(), 10, "the second resize down")


def test_ttou_on_a_busy_group_retires_a_busy_worker_once_its_job_is_done(start_pool, redis):
    """Busy workers take the next job at once, so none is ever idle to retire: one leaves after its job."""
    import signal

    pool = start_pool("--queue", "c:2", "--no-learn-job-modules", *FAST)  # learning would replace them anyway
    pool.wait_until(lambda: group_sizes(pool) == {"c": 2}, 15, "two workers")
    jobs = [Queue("c", connection=redis).enqueue("jobs.sleep", 1.0) for _ in range(12)]
    pool.wait_until(lambda: [w["state"] for w in pool.workers()] == ["busy", "busy"], 10, "both workers busy")
    pool.send(signal.SIGTTOU)
    pool.wait_until(lambda: len(pool.workers()) == 1, 5, "one worker left with jobs still waiting")
    assert not finished(jobs)
    pool.wait_until(lambda: finished(jobs), 30, "the jobs, on one worker")


def test_new_bounds_are_published_at_once_even_where_no_worker_changes(start_pool):
    import signal

    pool = start_pool("--queue", "a:0-3", "--scaling-period", "30", "--utilization-window", "30")
    pool.wait_until(lambda: group_sizes(pool) == {"a": 0}, 15, "the pool, with no worker")
    pool.send(signal.SIGTTOU)  # 0-2: nothing to retire, a hold
    pool.wait_until(lambda: pool.state()["groups"][0]["max"] == 2, 3, "the new maximum in the state")


def test_a_group_scaled_to_zero_wakes_when_a_job_arrives(start_pool, redis):
    pool = start_pool("--queue", "main:1", "--queue", "rare:0-3", *FAST)
    pool.wait_until(lambda: group_sizes(pool) == {"main": 1, "rare": 0}, 15, "no worker for the idle group")
    time.sleep(1)
    assert group_sizes(pool)["rare"] == 0
    job = Queue("rare", connection=redis).enqueue("jobs.noop")
    pool.wait_until(lambda: finished([job]), 10, "the rare group to wake and run the job")
