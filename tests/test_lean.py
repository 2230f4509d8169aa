"""Coalesced bookkeeping (worker.lean): fewer Redis commands a job, the same picture for monitors, suspension kept."""

from __future__ import annotations

import time

import pytest
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.suspension import resume, suspend

try:
    from rq.exceptions import StopRequested
except ImportError:  # rq < 2
    from rq.worker import StopRequested

from rq_orchestrator.worker import lean
from rq_orchestrator.worker.process import build_worker, prepare_for_work

JOBS = 40


def pool_worker(redis, name: str = "w1.lean"):
    """A --no-fork pool worker run in this process (burst mode: no master, no idle wait)."""
    worker = build_worker(SimpleWorker, ["default"], {}, redis, no_fork=True)
    prepare_for_work(worker, name)
    return worker


def commands(redis) -> int:
    return sum(stats["calls"] for stats in redis.info("commandstats").values())


def commands_for_jobs(redis, worker) -> float:
    """Redis commands the worker sends per job, over JOBS jobs that return at once."""
    queue = Queue(connection=redis)
    for _ in range(JOBS):
        queue.enqueue("builtins.len", "abc")
    before = commands(redis)
    worker.work(burst=True, logging_level="WARNING")
    return (commands(redis) - before) / JOBS


def test_a_pool_worker_sends_fewer_commands_a_job_than_rqs_own(redis):
    own = commands_for_jobs(redis, SimpleWorker(["default"], connection=redis))
    pool = commands_for_jobs(redis, pool_worker(redis))
    # rq's own heartbeats 3-5 times, writes `idle` twice and looks for suspension, a job;
    # the pool's worker sends none of that between back-to-back jobs.
    assert pool <= own - 4, (own, pool)


def test_monitors_see_busy_during_a_job_idle_after_and_a_live_key(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("no_fork_jobs.worker_view", job_timeout=5) for _ in range(5)]
    worker.work(burst=True, logging_level="WARNING")
    floor = worker.worker_ttl + 60 - 5
    for job in jobs:
        state, ttl = Job.fetch(job.id, connection=redis).return_value()
        # rq would give the key job_timeout + 60 = 65 s here: the pool never goes below its idle TTL
        assert state == "busy" and ttl >= floor, (state, ttl)
    assert redis.hget(worker.key, "state") == b"idle"


def test_a_suspension_is_seen_within_the_coalescing_time(redis, monkeypatch):
    monkeypatch.setattr(lean, "COALESCE", 0.2)
    worker = pool_worker(redis)
    worker.check_for_suspension(burst=True)
    suspend(redis)
    try:
        worker.check_for_suspension(burst=True)  # just looked: not again yet
        time.sleep(0.3)
        with pytest.raises(StopRequested):
            worker.check_for_suspension(burst=True)
    finally:
        resume(redis)
