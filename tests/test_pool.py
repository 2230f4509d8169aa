"""The pool end to end: real master, real forked workers, real Redis, short periods."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import psutil
import pytest
from rq import Queue, Worker
from rq import defaults as rq_defaults
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import Worker

from conftest import child_env, run_counts
from rq_orchestrator.infra.config import hostname
from rq_orchestrator.master.worker_names import parse_worker_name
from rq_orchestrator.master.forking import jittered

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")


def finished(jobs: list[Job]) -> bool:
    return all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs)


def pool_processes(pool_name: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(f".{pool_name}{end}" in cmdline for end in (" ", ":", ".")) or f"master {pool_name} " in cmdline:
            found.append(proc)
    return found


def test_scales_up_under_load_and_back_to_min(start_pool, redis):
    pool = start_pool("--min-workers", "1", "--max-workers", "4", *FAST)
    pool.wait_until(lambda: pool.active_workers() == 1, 15, "the first worker")
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("jobs.sleep", 0.2) for _ in range(60)]
    seen = []

    def grown() -> bool:
        seen.append(pool.active_workers())
        return seen[-1] >= 3

    pool.wait_until(grown, 20, "the pool to grow to 3 workers")
    pool.wait_until(lambda: finished(jobs), 30, "all jobs to finish")

    def back_to_min() -> bool:
        seen.append(pool.active_workers())
        return seen[-1] == 1 and len(pool.workers()) == 1

    pool.wait_until(back_to_min, 20, "the pool to shrink back to 1 worker")
    assert max(seen) <= 4 and min(seen) >= 1
    assert set(run_counts(redis).values()) == {1} and len(run_counts(redis)) == 60
    assert "decision=up" in pool.output() and "decision=down" in pool.output()


def test_every_job_runs_exactly_once_while_the_pool_churns(start_pool, redis):
    """Scale-downs every fraction of a second must never drop or interrupt a job."""
    pool = start_pool("--min-workers", "1", "--max-workers", "5", "--scaling-period", "0.1",
                      "--utilization-window", "0.3")
    pool.wait_until(lambda: pool.active_workers() == 1, 15, "the first worker")
    queue = Queue(connection=redis)
    rng = random.Random(7)
    jobs = []
    for _ in range(8):  # bursts and lulls, so the pool grows and shrinks repeatedly
        jobs += [queue.enqueue("jobs.sleep", rng.uniform(0, 0.08)) for _ in range(rng.randint(5, 30))]
        time.sleep(rng.uniform(0.3, 0.9))
    pool.wait_until(lambda: finished(jobs), 60, "all jobs to finish")
    counts = run_counts(redis)
    assert len(counts) == len(jobs) and set(counts.values()) == {1}
    assert FailedJobRegistry(queue=queue).count == 0
    assert StartedJobRegistry(queue=queue).count == 0
    # On a loaded machine the lulls may all pass without a scale-down; the pool still shrinks once the jobs are done.
    pool.wait_until(lambda: pool.output().count("decision=down") >= 2, 30, "two scale-downs")


def test_replaces_a_killed_worker(start_pool):
    pool = start_pool("--num-workers", "2", *FAST)
    pids = pool.wait_until(lambda: len(pool.ready_pids()) == 2 and pool.ready_pids(), 15, "two ready workers")
    os.kill(pids[0], signal.SIGKILL)
    pool.wait_until(
        lambda: len(pool.ready_pids()) == 2 and pids[0] not in pool.ready_pids(), 15, "a replacement worker"
    )
    assert "exited unexpectedly (killed by SIGKILL)" in pool.output()


def test_sigterm_lets_the_running_job_finish(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--name", "termtest", *FAST)
    job = Queue(connection=redis).enqueue("jobs.sleep", 1.5)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    pool.send(signal.SIGTERM)
    assert pool.wait(15) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert run_counts(redis) == {job.id: 1}
    assert pool_processes("termtest") == []


def test_second_sigterm_is_a_cold_stop(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--name", "coldtest", *FAST)
    job = Queue(connection=redis).enqueue("jobs.sleep", 60)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    pool.send(signal.SIGTERM)
    time.sleep(1.5)  # a repeat within a second is the same request (terminal + master), not an escalation
    started = time.monotonic()
    pool.send(signal.SIGTERM)
    pool.wait(10)
    assert time.monotonic() - started < 5
    assert job.get_status(refresh=True) == JobStatus.FAILED  # settled, not left "started"
    assert run_counts(redis) == {}
    assert pool_processes("coldtest") == []


def test_a_worker_killed_in_a_warm_stop_has_its_job_and_registration_settled(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--name", "killedinstop", *FAST)
    job = Queue(connection=redis).enqueue("jobs.sleep", 60)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    (worker,) = pool.wait_until(lambda: pool.ready_pids(), 15, "the worker in the pool's state")
    pool.send(signal.SIGTERM)
    pool.wait_until(lambda: "warm stop" in pool.output(), 15, "the warm stop")
    os.kill(worker, signal.SIGKILL)
    assert pool.wait(15) == 0
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert Worker.all(connection=redis) == []  # no worker left listed until its key expires


def test_burst_mode_exits_when_the_queues_are_empty(start_pool, redis):
    queue = Queue("burst", connection=redis)
    jobs = [queue.enqueue("jobs.noop") for _ in range(20)]
    pool = start_pool("burst", "--min-workers", "2", "--max-workers", "3", "--burst", *FAST)
    assert pool.wait(30) == 0
    assert finished(jobs)
    assert len(run_counts(redis)) == 20


def test_a_burst_group_that_is_done_decides_nothing_more(start_pool, redis):
    """Once a worker found the queues empty the group gets no more workers: no scale-up is logged for it."""
    jobs = [Queue(connection=redis).enqueue("jobs.sleep", 2.0) for _ in range(3)]
    pool = start_pool("--min-workers", "3", "--max-workers", "4", "--burst", *FAST)
    assert pool.wait(60) == 0
    assert finished(jobs)
    output = pool.output()
    assert "decision=up" in output  # three busy workers of three: the fourth came, found nothing and left
    done = output.index("found its queues empty and exited (burst)")
    assert "decision=up" not in output[done:], output[done:]


def test_burst_runs_every_group_s_jobs_when_another_group_is_done_first(start_pool, redis):
    """Group `a` finds its queue empty and is done; `b`'s worker recycles mid-way and is still replaced."""
    jobs = [Queue("b", connection=redis).enqueue("jobs.sleep", 0.2) for _ in range(8)]
    pool = start_pool("--queue", "a:1", "--queue", "b:1", "--max-jobs-per-worker", "2", "--burst", *FAST)
    assert pool.wait(60) == 0
    assert finished(jobs)
    assert "recycling" in pool.output()  # b's worker was replaced after `a` was done


def test_burst_runs_what_a_job_of_another_group_enqueues_for_a_group_scaled_to_zero(start_pool, redis):
    job = Queue("a", connection=redis).enqueue("jobs.enqueue_after", 1.5, "b")
    pool = start_pool("--queue", "a:1", "--queue", "b:0-2", "--burst", *FAST)
    assert pool.wait(30) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert Job.fetch(job.return_value(), connection=redis).get_status() == JobStatus.FINISHED


@pytest.mark.parametrize("retires", [("--max-jobs-per-worker", "1"), ("--learn-job-modules",)], ids=["recycled", "learned"])
def test_burst_runs_the_job_a_retiring_worker_s_job_enqueued(start_pool, redis, retires):
    """The worker running the parent retires after it (its module learned, or its last job): its successor came up
    while the parent ran, found the queue empty and left; the child the parent's end enqueues must still run."""
    queue = Queue(connection=redis)
    parent = queue.enqueue("learned_jobs.hold", 1.5)
    child = queue.enqueue("jobs.noop", depends_on=parent)
    others = [queue.enqueue("jobs.sleep", 0.5) for _ in range(2)]  # the other worker is busy when the module is learned
    pool = start_pool("--num-workers", "2", "--burst", *retires, *FAST)
    assert pool.wait(60) == 0
    assert finished([parent, child, *others]), pool.output()
    assert queue.count == 0


@pytest.mark.skipif(not hasattr(Queue, "ready_job_registry"), reason="rq < 3 has no ready registry")
@pytest.mark.parametrize("burst", [True, False], ids=["burst", "running"])
def test_a_dependent_rq_left_in_its_ready_registry_runs(start_pool, redis, burst):
    """rq 3.0 leaves a dependent whose move to the queue lost a WATCH race in the ready registry, in no queue,
    until its 10-minute clean-up: the pool enqueues it at its next period after a job's end (and before a burst ends)."""
    from rq.registry import ReadyJobRegistry

    queue = Queue(connection=redis)
    running = queue.enqueue("jobs.sleep", 1.5)
    pool = start_pool("--num-workers", "1", *(["--burst"] if burst else []), *FAST)
    pool.wait_until(lambda: running.get_status(refresh=True) == JobStatus.STARTED, 15, "a job to start")
    # After the start's clean-up (which recovers it too), what rq's lost race leaves: moved deferred -> ready only.
    parent = Queue("elsewhere", connection=redis).enqueue("jobs.noop")  # a queue no worker takes: it never runs
    child = queue.enqueue("jobs.noop", depends_on=parent)
    with redis.pipeline() as pipe:
        pipe.watch(queue.key)
        pipe.multi()
        ReadyJobRegistry(queue=queue).register_jobs([child], pipe)
        pipe.execute()
    assert child.get_status(refresh=True) == JobStatus.READY_TO_ENQUEUE
    if burst:
        assert pool.wait(30) == 0
    else:
        pool.wait_until(lambda: child.get_status(refresh=True) == JobStatus.FINISHED, 15, "the dependent to run")
    assert child.get_status(refresh=True) == JobStatus.FINISHED
    assert "enqueued 1 dependent job that rq had left in its ready registries" in pool.output()


def test_a_suspended_burst_with_no_minimum_exits_leaving_the_jobs_queued(start_pool, redis):
    """As rq's own burst workers do when suspended."""
    from rq.suspension import suspend

    suspend(redis)
    job = Queue(connection=redis).enqueue("jobs.noop")
    pool = start_pool("--min-workers", "0", "--max-workers", "2", "--burst", *FAST)
    assert pool.wait(30) == 0
    assert job.get_status(refresh=True) == JobStatus.QUEUED


@pytest.mark.parametrize("queued", [0, 3])
def test_burst_with_no_minimum_runs_what_is_queued_and_exits(start_pool, redis, queued):
    jobs = [Queue(connection=redis).enqueue("jobs.noop") for _ in range(queued)]
    pool = start_pool("--min-workers", "0", "--max-workers", "2", "--burst", *FAST)
    assert pool.wait(30) == 0
    assert finished(jobs)
    assert len(run_counts(redis)) == queued


def test_queue_priority_order_is_kept(start_pool, redis):
    low, high = Queue("low", connection=redis), Queue("high", connection=redis)
    low_jobs = [low.enqueue("jobs.noop") for _ in range(5)]
    high_jobs = [high.enqueue("jobs.noop") for _ in range(5)]
    pool = start_pool("high", "low", "--num-workers", "1", "--burst")
    assert pool.wait(30) == 0
    order = [entry.decode().split(":")[1] for entry in redis.lrange("test:order", 0, -1)]
    assert order == [j.id for j in high_jobs] + [j.id for j in low_jobs]


@pytest.mark.parametrize("worker_class", ["rq.SimpleWorker", "rq.Worker"])
def test_worker_classes_run_jobs(start_pool, redis, worker_class):
    jobs = [Queue(connection=redis).enqueue("jobs.noop") for _ in range(5)]
    pool = start_pool("--num-workers", "2", "--burst", "--worker-class", worker_class)
    assert pool.wait(30) == 0
    assert finished(jobs)


def test_workers_are_registered_with_readable_names(start_pool, redis):
    from rq import Worker

    pool = start_pool("--num-workers", "2", "--name", "names", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    names = sorted(w.name for w in Worker.all(connection=redis))
    assert len(names) == 2
    parsed = [parse_worker_name(name) for name in names]
    assert [(p.slot, p.origin) for p in parsed] == [(1, f"{hostname()}.names"), (2, f"{hostname()}.names")]
    assert {p.pid for p in parsed} == {int(pid) for pid in pool.ready_pids()}


def test_the_pool_counts_finished_and_failed_jobs(start_pool, redis):
    pool = start_pool("--num-workers", "2", *FAST)
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("jobs.noop"), queue.enqueue("jobs.fail"), queue.enqueue("jobs.die"), queue.enqueue("jobs.noop")]
    pool.wait_until(lambda: all(job.get_status(refresh=True) in ("finished", "failed") for job in jobs), 30, "the jobs")
    pool.wait_until(lambda: pool.state()["counters"]["jobs"] == {"finished": 2, "failed": 2}, 10,
                    "the counters: 2 finished, 2 failed (one raised, one's process died)")


def test_scheduled_jobs_are_enqueued_by_the_master(start_pool, redis):
    from datetime import timedelta

    queue = Queue(connection=redis)
    job = queue.enqueue_in(timedelta(seconds=1), "jobs.noop")
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the scheduled job to run")
    assert run_counts(redis) == {job.id: 1}


@pytest.mark.parametrize("worker_class", ["rq.Worker", "rq.SimpleWorker"])
def test_job_of_a_killed_worker_is_failed_at_once(start_pool, redis, worker_class):
    from rq import Worker

    redis.set("test:horse", "1" if worker_class == "rq.Worker" else "0")
    queue = Queue(connection=redis)
    pool = start_pool("--num-workers", "1", "--worker-class", worker_class, *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    doomed = queue.enqueue("jobs.kill_my_worker")
    pool.wait_until(lambda: doomed.get_status(refresh=True) == JobStatus.FAILED, 15, "the job to be failed")
    doomed.refresh()
    assert "killed by SIGKILL" in doomed.meta["rq_orchestrator_failure"]
    assert StartedJobRegistry(queue=queue).count == 0
    after = queue.enqueue("jobs.noop")
    pool.wait_until(lambda: after.get_status(refresh=True) == JobStatus.FINISHED, 15, "the replacement to work")
    pool.wait_until(lambda: len(Worker.all(connection=redis)) == 1, 5, "the dead worker to be unregistered")


def test_a_failure_callback_that_raises_does_not_stop_the_master(start_pool, redis):
    from rq import Callback

    redis.set("test:horse", "1")
    queue = Queue(connection=redis)
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    doomed = queue.enqueue("jobs.kill_my_worker", on_failure=Callback("jobs.raising_callback"))
    pool.wait_until(lambda: "exited unexpectedly" in pool.output(), 15, "the worker's death")
    after = queue.enqueue("jobs.noop")
    pool.wait_until(lambda: after.get_status(refresh=True) == JobStatus.FINISHED, 15, "the next job")
    assert pool.proc.poll() is None
    # rq 2.x/3.x log the callback's error and fail the job; rq 1.x's clean-up raises it, and leaves the job to itself
    assert doomed.get_status(refresh=True) == JobStatus.FAILED or "rq's clean-up failed" in pool.output()
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    redis.delete(queue.registry_cleaning_key)  # rq 1.x lets its lock expire: the next clean-up would wait 15 min
    again = start_pool("--num-workers", "1", *FAST)  # its first registry clean-up meets that job (rq 1.x) again
    again.wait_until(lambda: len(again.ready_pids()) == 1, 15, "a ready worker after a restart")


def test_a_failure_callback_that_starts_a_thread_runs_outside_the_master(start_pool, redis):
    """rq's clean-up runs it when the master settles a dead worker's job: in the master, its thread would stop the forks."""
    from rq import Callback

    redis.set("test:horse", "1")
    queue = Queue(connection=redis)
    pool = start_pool("--num-workers", "1", *FAST)
    first = pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")[0]
    doomed = queue.enqueue("jobs.kill_my_worker", on_failure=Callback("jobs.thread_starting_callback"))
    pool.wait_until(lambda: doomed.get_status(refresh=True) == JobStatus.FAILED, 15, "the job to be failed")
    pool.wait_until(lambda: (pids := pool.ready_pids()) and pids[0] != first, 15, "a replacement forked")
    callback_pids = {int(pid) for pid in redis.lrange("test:callback-pids", 0, -1)}
    assert len(callback_pids) == 1 and pool.pid not in callback_pids  # it ran, in a throwaway fork
    assert "refusing to fork" not in pool.output() and pool.proc.poll() is None


def test_job_of_a_killed_worker_is_retried_when_its_retry_allows(start_pool, redis):
    from rq import Retry

    redis.set("test:horse", "1")
    queue = Queue(connection=redis)
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    doomed = queue.enqueue("jobs.kill_my_worker", retry=Retry(max=1))
    pool.wait_until(lambda: run_counts(redis).get(doomed.id) == 2, 20, "the job to run again")
    pool.wait_until(lambda: doomed.get_status(refresh=True) == JobStatus.FAILED, 20, "the job to fail for good")


def test_workers_recycle_after_max_jobs_without_losing_jobs(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--max-jobs-per-worker", "5", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    first = set(pool.ready_pids())
    jobs = [Queue(connection=redis).enqueue("jobs.noop") for _ in range(40)]
    pool.wait_until(lambda: finished(jobs), 30, "all jobs to finish")
    assert set(run_counts(redis).values()) == {1}
    # The published state may still show the first two (it lags): wait for two ready workers, none of them those.
    pool.wait_until(lambda: len(pool.ready_pids()) == 2 and not first & set(pool.ready_pids()), 15,
                    "two ready workers again, all new")
    assert "recycles (max jobs: 5 done)" in pool.output()  # exactly 5: no jitter below 10
    assert pool.state()["counters"]["restarts"]["max_jobs"] >= 1
    assert "unexpectedly" not in pool.output()


def test_workers_recycle_over_the_memory_limit(start_pool, redis):
    # The limit must be above a fresh worker's resident memory (the master's), so the job grows the worker past it.
    pool = start_pool("--num-workers", "1", "--max-memory-per-worker", "200MB", "--worker-class", "rq.SimpleWorker",
                      *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    first = pool.ready_pids()[0]
    job = Queue(connection=redis).enqueue("jobs.hold_memory", 256)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, "the job")
    pool.wait_until(lambda: (pids := pool.ready_pids()) and pids[0] != first, 15, "a fresh worker")
    assert "resident memory" in pool.output()


def test_graceful_timeout_turns_a_warm_stop_cold(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--graceful-timeout", "1", *FAST)
    job = Queue(connection=redis).enqueue("jobs.sleep", 60)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    started = time.monotonic()
    pool.send(signal.SIGTERM)
    pool.wait(15)
    assert time.monotonic() - started < 8
    assert "graceful timeout" in pool.output()


def test_master_killed_workers_finish_their_job_and_exit(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--name", "orphans", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    job = Queue(connection=redis).enqueue("jobs.sleep", 2)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    os.kill(pool.pid, signal.SIGKILL)
    pool.proc.wait()
    from conftest import wait_until

    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, "the job to finish")
    wait_until(lambda: not pool_processes("orphans"), 5, "every worker to exit")


def test_max_jobs_jitter_is_up_to_ten_percent_and_none_below_ten():
    assert jittered(None) is None
    assert {jittered(1) for _ in range(200)} == {1}  # a fresh worker per job means one job, not one or two
    assert {jittered(9) for _ in range(200)} == {9}
    assert {jittered(100) for _ in range(2000)} == set(range(100, 111))


def test_ttin_and_ttou_resize_a_live_pool(start_pool):
    pool = start_pool("--min-workers", "1", "--max-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "one ready worker")
    for expected in (2, 3):  # one at a time: pending signals of one kind coalesce
        pool.send(signal.SIGTTIN)
        pool.wait_until(lambda: len(pool.ready_pids()) == expected, 15, f"{expected} workers after TTIN")
    state = pool.state()["groups"][0]
    assert (state["min"], state["max"]) == (3, 4)
    pool.send(signal.SIGTTOU)
    pool.wait_until(lambda: len(pool.workers()) == 2, 15, "two workers after TTOU")
    pool.wait_until(lambda: pool.state()["groups"][0]["last_change"]["reason"] == "SIGTTOU: bounds 2-3", 5,
                    "the resize shown as the last change")
    state = pool.state()["groups"][0]
    assert (state["min"], state["max"]) == (2, 3)
    assert (state["last_change"]["action"], state["last_change"]["target"]) == ("down", 2)


def test_a_worker_retired_while_starting_leaves_quietly(start_pool, redis):
    """TTOU picks the worker still starting (slot 2): stopped before rq's handlers, it dies of the TERM, no job lost."""
    pool = start_pool("--num-workers", "2", "--worker-class", "jobs.SlowSecondBirth", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "the first worker")
    assert [w["state"] for w in pool.workers()].count("starting") == 1
    pool.send(signal.SIGTTOU)
    pool.wait_until(lambda: len(pool.workers()) == 1, 15, "the starting worker gone")
    assert "exited unexpectedly" not in pool.output()
    assert [w.name for w in Worker.all(connection=redis)] == [pool.workers()[0]["name"]]


def test_ttin_stops_at_the_worker_bound(start_pool, monkeypatch):
    monkeypatch.setenv("RQ_ORCHESTRATOR_MAX_WORKERS", "2")
    pool = start_pool("--num-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    pool.send(signal.SIGTTIN)
    pool.wait_until(lambda: "resize default: bounds 2-2, target 2" in pool.output(), 15, "the resize")
    time.sleep(0.5)
    assert len(pool.workers()) == 2
    state = pool.state()["groups"][0]
    assert (state["min"], state["max"]) == (2, 2)
    assert state["scale_ups"] == 0  # at the bound, the TTIN added nothing: a hold, not a scale-up
    pool.send(signal.SIGTTOU)  # undoes the TTIN, which raised nothing: the bounds stay, no worker leaves
    pool.wait_until(lambda: pool.output().count("resize default: bounds 2-2, target 2") == 2, 15, "the resize down")
    time.sleep(0.5)
    assert len(pool.workers()) == 2
    assert [(g["min"], g["max"]) for g in pool.state()["groups"]] == [(2, 2)]
    pool.send(signal.SIGTTOU)  # a TTOU of its own
    pool.wait_until(lambda: len(pool.workers()) == 1, 15, "one worker after a second TTOU")
    pool.wait_until(lambda: [(g["min"], g["max"]) for g in pool.state()["groups"]] == [(1, 1)], 5, "bounds 1-1")


def test_ttin_keeps_the_groups_together_within_the_worker_bound(start_pool, monkeypatch):
    monkeypatch.setenv("RQ_ORCHESTRATOR_MAX_WORKERS", "4")
    pool = start_pool("--queue", "a:2", "--queue", "b:2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 4, 15, "four ready workers")
    pool.send(signal.SIGTTIN)
    pool.wait_until(lambda: "resize b: bounds 2-2, target 2" in pool.output(), 15, "the resize")
    time.sleep(0.5)
    assert len(pool.workers()) == 4
    assert [(g["min"], g["max"]) for g in pool.state()["groups"]] == [(2, 2), (2, 2)]


def test_workers_failing_at_start_up_stop_the_pool(start_pool):
    pool = start_pool("--num-workers", "2", "--worker-class", "jobs.BrokenWorker", *FAST)
    assert pool.wait(20) == 1
    assert "workers fail at start-up" in pool.output()


def test_a_worker_class_that_cannot_be_built_stops_the_pool_with_one_line(start_pool):
    pool = start_pool("--num-workers", "2", "--worker-class", "jobs.UnbuildableWorker", *FAST)
    assert pool.wait(20) == 1
    assert "cannot build a worker of class jobs.UnbuildableWorker: RuntimeError: this worker cannot be built" \
        in pool.output()
    assert "Traceback" not in pool.output()


def test_scale_to_zero_wakes_within_a_second_of_a_job(start_pool, redis):
    pool = start_pool("--min-workers", "0", "--max-workers", "2", "--scaling-period", "30", "--utilization-window", "30")
    pool.wait_until(lambda: pool.state() is not None, 15, "the pool to publish")
    time.sleep(1.5)
    assert pool.workers() == []
    enqueued = time.monotonic()
    job = Queue(connection=redis).enqueue("jobs.noop")
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 10, "the job to run")
    assert time.monotonic() - enqueued < 5  # far sooner than the 30 s period
    assert "job waiting and no worker" in pool.output() or "waited" in pool.output()


def test_queue_wait_grows_the_pool_between_periods(start_pool, redis):
    pool = start_pool("--min-workers", "1", "--max-workers", "3", "--max-queue-wait", "0.5",
                      "--scaling-period", "30", "--utilization-window", "30")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "one worker")
    jobs = [Queue(connection=redis).enqueue("jobs.sleep", 1) for _ in range(6)]
    pool.wait_until(lambda: pool.active_workers() >= 2, 8, "a second worker long before the 30 s period")
    pool.wait_until(lambda: finished(jobs), 20, "the jobs")


PREFIXED_ENQUEUE = """
import sys
from redis import Redis
from rq import Queue
queue = Queue(connection=Redis.from_url(sys.argv[1]))
print(" ".join(queue.enqueue(sys.argv[2], *map(float, sys.argv[4:])).id for _ in range(int(sys.argv[3]))))
"""


@pytest.mark.skipif(not hasattr(rq_defaults, "RQ_KEY_PREFIX"), reason="rq < 3: no key prefix")
def test_the_master_reads_rq_s_keys_under_rq_key_prefix(start_pool, redis, redis_url, monkeypatch):
    """rq 3 names its keys after RQ_KEY_PREFIX: the master's settling of a dead worker and its queue look follow."""
    monkeypatch.setenv("RQ_KEY_PREFIX", "tenant1")  # the pool's and the enqueuer's environment, not this process's rq

    def enqueue(function: str, count: int, *args: float) -> list[str]:
        out = subprocess.run([sys.executable, "-c", PREFIXED_ENQUEUE, redis_url, function, str(count), *map(str, args)],
                             env=child_env(), capture_output=True, text=True, check=True).stdout
        return out.split()

    def status(job_id: str) -> bytes | None:
        return redis.hget(f"tenant1:job:{job_id}", "status")

    redis.set("test:horse", "1")
    pool = start_pool("--min-workers", "1", "--max-workers", "3", "--max-queue-wait", "0.5",
                      "--scaling-period", "30", "--utilization-window", "30")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "one worker")
    assert redis.scard("tenant1:workers") == 1 and not redis.exists("rq:workers")
    [doomed] = enqueue("jobs.kill_my_worker", 1)
    pool.wait_until(lambda: status(doomed) == b"failed", 15, "the dead worker's job to be failed at once")
    assert b"killed by SIGKILL" in redis.hget(f"tenant1:job:{doomed}", "meta")  # pickled meta: the reason is in it
    pool.wait_until(lambda: redis.scard("tenant1:workers") == 1, 10, "the dead worker to be unregistered")
    jobs = enqueue("jobs.sleep", 6, 1.0)
    pool.wait_until(lambda: pool.active_workers() >= 2, 8, "a second worker long before the 30 s period")
    pool.wait_until(lambda: all(status(job) == b"finished" for job in jobs), 20, "the jobs")


def test_memory_ceiling_also_holds_back_growth_between_periods(start_pool, redis):
    """Queue-wait growth between periods must respect --max-pool-memory like the period tick does."""
    pool = start_pool("--min-workers", "1", "--max-workers", "3", "--max-queue-wait", "0.2",
                      "--max-pool-memory", "1MB", "--scaling-period", "30", "--utilization-window", "30")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "one worker")
    jobs = [Queue(connection=redis).enqueue("jobs.sleep", 0.5) for _ in range(8)]
    sizes = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # well past the 0.2 s wait, long before the 30 s period
        sizes.append(pool.active_workers())
        time.sleep(0.1)
    assert max(sizes) == 1
    pool.wait_until(lambda: finished(jobs), 20, "the jobs, on the one worker")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT])
def test_a_stop_during_a_huge_round_is_answered_and_leaves_no_process(start_pool, monkeypatch, signum):
    """A pool asked for far more workers than it can fork at once answers a stop between forks."""
    monkeypatch.setenv("RQ_ORCHESTRATOR_MAX_WORKERS", "100000")  # past the machine's bound, on purpose
    pool = start_pool("--num-workers", "100000", "--name", "hugeround", "--no-prewarm", *FAST)
    master = psutil.Process(pool.pid)
    pool.wait_until(lambda: len(master.children()) > 40, 30, "the master to be forking its rounds")
    children = master.children(recursive=True)
    asked = time.monotonic()
    pool.send(signum)
    pool.wait(30)
    stopped_in = time.monotonic() - asked
    assert stopped_in < 20, stopped_in  # a few seconds on a busy machine; it spun for good before
    from conftest import wait_until

    wait_until(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), 10,
               "every forked worker to be gone")
    assert not pool_processes("hugeround")


def test_a_suspended_pool_whose_worker_goes_idle_still_counts_the_jobs_that_wait(start_pool, redis):
    """The master saw the suspension (jobs waited, the worker busy); once the worker is idle it still counts them."""
    from rq.suspension import resume, suspend

    pool = start_pool("--num-workers", "1", "--preload", "jobs", *FAST)  # (nothing to learn: no re-fork)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    queue = Queue(connection=redis)
    long = queue.enqueue("jobs.sleep", 1.5)
    pool.wait_until(lambda: long.get_status(refresh=True) == JobStatus.STARTED, 10, "the long job")
    suspend(redis)
    jobs = [queue.enqueue("jobs.noop") for _ in range(3)]
    pool.wait_until(lambda: "rq workers are suspended" in pool.output(), 10, "the master to see the suspension")
    pool.wait_until(lambda: [w["state"] for w in pool.workers()] == ["idle"], 10, "the worker idle, suspended")
    time.sleep(1)  # what was published while the worker was busy is past
    pool.wait_until(lambda: pool.state()["groups"][0]["queued"] == len(queue) == 3, 10, "status to count the jobs")
    resume(redis)
    pool.wait_until(lambda: finished(jobs), 20, "the jobs after rq resume")
    pool.wait_until(lambda: "no longer suspended" in pool.output(), 10, "the master to see the end")


def test_a_suspended_pool_neither_grows_nor_shrinks_for_the_jobs_that_wait(start_pool, redis):
    """`rq suspend`: workers take no job, so the pool does not start one for the waiting jobs (rq resume ends it)."""
    from rq.suspension import resume, suspend

    pool = start_pool("--min-workers", "0", "--max-workers", "2", *FAST)
    pool.wait_until(lambda: pool.state() is not None, 15, "the pool to publish")
    suspend(redis)
    jobs = [Queue(connection=redis).enqueue("jobs.noop") for _ in range(3)]
    pool.wait_until(lambda: "rq workers are suspended" in pool.output(), 10, "the master to see the suspension")
    for _ in range(10):
        assert pool.workers() == [] and "decision=up" not in pool.output()
        time.sleep(0.2)
    resume(redis)
    pool.wait_until(lambda: finished(jobs), 20, "the jobs after rq resume")
    assert "no longer suspended" in pool.output()


@pytest.mark.parametrize("level,more", [("INFO", False), ("DEBUG", True)])
def test_a_pool_that_holds_says_so_once_not_every_period(start_pool, level, more):
    pool = start_pool("--num-workers", "1", "--scaling-period", "0.2", "--utilization-window", "1",
                      "--logging-level", level)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    time.sleep(1)
    said = pool.output().count("decision=hold")
    time.sleep(2)  # ten more periods of the same hold
    assert said >= 1 and (pool.output().count("decision=hold") >= said + 5 if more else
                          pool.output().count("decision=hold") == said)
