"""Idle workers block on Redis for rq's whole dequeue_timeout, and a stop still ends their wait at once, losing no job.

Both kinds of wait are covered: BLMOVE (one queue; the stop shuts the wait's
socket) and BLPOP on several queues plus the worker's wake key (the stop pushes
a token). Every test runs on whichever rq the suite runs with (1.15 to 3.x).
"""

from __future__ import annotations

import os
import random
import signal
import time

import psutil
import pytest
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus

from conftest import run_counts, wait_until
from rq_orchestrator.infra.keys import wake_key
from rq_orchestrator.master.dead_workers import StrandedJobs
from rq_orchestrator.worker.idle_wait import JOB_PREFIX, WAKE_TOKEN, IdleWait
from rq_orchestrator.worker.lean import prefetched

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")
ONE_QUEUE, TWO_QUEUES = ("default",), ("high", "default")


def pops(redis) -> int:
    """Blocking pops Redis has served so far (BLPOP and BLMOVE calls)."""
    stats = redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("blpop", "blmove"))


def worker_names(pool) -> dict[int, str]:
    return {w["pid"]: w["name"] for w in pool.workers() if w["state"] in ("idle", "busy")}


def all_finished(jobs: list[Job]) -> bool:
    return all(job.get_status(refresh=True) == JobStatus.FINISHED for job in jobs)


@pytest.mark.parametrize("queues", [ONE_QUEUE, TWO_QUEUES], ids=["blmove", "blpop"])
def test_idle_workers_wait_in_one_long_pop(start_pool, redis, queues):
    pool = start_pool(*queues, "--num-workers", "3", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 3, 15, "three ready workers")
    time.sleep(0.5)  # every worker is inside its first wait
    before = pops(redis)
    time.sleep(3)
    assert pops(redis) == before  # with one-second polls there would be about 9 more


@pytest.mark.parametrize("queues", [ONE_QUEUE, TWO_QUEUES], ids=["blmove", "blpop"])
def test_a_stop_ends_an_idle_wait_at_once(start_pool, redis, queues):
    pool = start_pool(*queues, "--num-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    time.sleep(0.5)
    started = time.monotonic()
    pool.send(signal.SIGTERM)
    assert pool.wait(30) == 0
    assert time.monotonic() - started < 10  # not the ~400 s of the wait
    assert all(redis.ttl(key) > 0 for key in redis.keys(wake_key("*")))  # a token nobody popped expires
    assert "cold shut down" not in pool.output()


@pytest.mark.parametrize("queues", [ONE_QUEUE, TWO_QUEUES], ids=["blmove", "blpop"])
def test_a_retired_idle_worker_leaves_and_the_rest_still_take_jobs(start_pool, redis, queues):
    pool = start_pool(*queues, "--min-workers", "1", "--max-workers", "3", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "one ready worker")
    pool.send(signal.SIGTTIN)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two workers after TTIN")
    pool.send(signal.SIGTTOU)
    pool.wait_until(lambda: len(pool.workers()) == 1, 15, "one worker after TTOU")
    jobs = [Queue(queues[-1], connection=redis).enqueue("jobs.sleep", 0) for _ in range(5)]
    pool.wait_until(lambda: all_finished(jobs), 15, "the jobs to run on the remaining worker")


@pytest.mark.parametrize("queues", [ONE_QUEUE, TWO_QUEUES], ids=["blmove", "blpop"])
def test_stops_racing_with_jobs_lose_none_and_run_none_twice(start_pool, redis, queues):
    """Idle workers are retired while jobs keep arriving: every job runs exactly once."""
    pool = start_pool(*queues, "--min-workers", "1", "--max-workers", "4", "--scaling-period", "0.1",
                      "--utilization-window", "0.3")
    pool.wait_until(lambda: len(pool.ready_pids()) >= 1, 15, "a ready worker")
    rng = random.Random(11)
    jobs = []
    for _ in range(10):
        queue = Queue(rng.choice(queues), connection=redis)
        jobs += [queue.enqueue("jobs.sleep", rng.uniform(0, 0.05)) for _ in range(rng.randint(3, 15))]
        time.sleep(rng.uniform(0.2, 0.6))
        idle = [w["pid"] for w in pool.workers() if w["state"] == "idle"]
        if len(idle) > 1:  # retire one by hand too, at a random moment of its wait
            os.kill(rng.choice(idle), signal.SIGTERM)
    pool.wait_until(lambda: all_finished(jobs), 60, "every job to finish")
    counts = run_counts(redis)
    assert len(counts) == len(jobs) and set(counts.values()) == {1}


def test_a_stray_wake_token_does_not_stop_a_worker(start_pool, redis):
    pool = start_pool(*TWO_QUEUES, "--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    (pid, name), = worker_names(pool).items()
    time.sleep(0.5)
    redis.rpush(wake_key(name), WAKE_TOKEN)
    wait_until(lambda: not redis.exists(wake_key(name)), 10, "the worker to take the token")
    job = Queue("default", connection=redis).enqueue("jobs.sleep", 0)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, "a job after the token")
    assert list(worker_names(pool)) == [pid]


@pytest.mark.parametrize("queues", [ONE_QUEUE, TWO_QUEUES], ids=["blmove", "blpop"])
def test_idle_workers_leave_soon_after_their_master_dies(start_pool, redis, queues):
    pool = start_pool(*queues, "--num-workers", "2", "--name", "widowed", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    workers = [psutil.Process(pid) for pid in pool.ready_pids()]
    time.sleep(0.5)
    os.kill(pool.pid, signal.SIGKILL)
    pool.proc.wait()
    wait_until(lambda: not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers), 10,
               "both idle workers to exit")


def test_a_job_stranded_in_the_intermediate_list_goes_back_to_its_queue(start_pool, redis):
    """As if a pop's reply had been lost when a worker was killed inside its wait: the master requeues the id."""
    pool = start_pool(*ONE_QUEUE, "--num-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    queue = Queue("default", connection=redis)
    with redis.pipeline() as pipe:  # enqueue and strand at once, before an idle worker can pop it
        job = queue.enqueue("jobs.sleep", 0, pipeline=pipe)
        pipe.lmove(queue.key, f"{queue.key}:intermediate")
        pipe.execute()
    os.kill(pool.ready_pids()[0], signal.SIGKILL)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 30, "the stranded job to run")
    assert run_counts(redis) == {job.id: 1}


def test_a_stop_handled_inside_a_finalizer_still_ends_a_blmove_wait(redis_url):
    """A signal lands wherever Python is, also in a ``__del__``, where an exception raised by its handler is lost."""
    redis = Redis.from_url(redis_url, socket_timeout=120)  # as rq's worker: reads outlast the pop's timeout
    wait, stranded = IdleWait(), []
    wait.arm(wake_key("finalized"), redis, lambda: stranded.append(True))
    queue_key = Queue("default", connection=redis).key

    class Finalized:
        def __del__(self) -> None:
            wait.wake()  # the stop's handler, run where the signal landed

    def lmove_after_a_finalizer(blocking):
        Finalized()  # collected at once: the stop is handled in its __del__, inside the wait
        return Queue.lmove(blocking, queue_key, 60)

    started = time.monotonic()
    try:
        assert wait.pop_move(queue_key, lmove_after_a_finalizer, redis) is None
    finally:
        wait.blocking.close()
        redis.close()
    assert time.monotonic() - started < 30  # not the BLMOVE's 60 s
    assert stranded  # a job Redis moved meanwhile would be in the intermediate list: the master is told


@pytest.mark.parametrize("one_queue", [True, False], ids=["lmove", "lpop"])
def test_a_job_hash_the_script_cannot_read_leaves_the_pop_done_and_the_read_to_rq(redis, one_queue):
    """Redis keeps a script's pop when a later command fails: the read must not fail the script, or the id is lost."""
    wait = IdleWait()
    wait.arm(wake_key("unreadable"), redis, lambda: None)
    redis.set(f"{JOB_PREFIX}odd", "not a hash")
    redis.rpush("rq:queue:odd", "odd")

    def no_blocking_pop(*_args):
        pytest.fail("the job was waiting: the script pops it")

    if one_queue:
        found = wait.pop_move("rq:queue:odd", no_blocking_pop, redis)
        wait.blocking.close()
    else:
        found = wait.pop_list(["rq:queue:odd"], 1, redis)
    assert found == (b"rq:queue:odd", b"odd")
    assert redis.lrange("rq:queue:odd:intermediate", 0, -1) == ([b"odd"] if one_queue else [])
    assert prefetched.take(f"{JOB_PREFIX}odd") == {}  # nothing read: rq's own fetch reads it, and fails as rq's does
    assert wait.pop_and_read is not None  # the scripts were not refused


def test_an_id_left_in_an_intermediate_list_of_a_deleted_job_is_removed(redis):
    stranded = StrandedJobs(["default"], grace=0)
    redis.rpush("rq:queue:default:intermediate", "deleted")
    stranded.recover(redis, 0.0, set(), {})
    assert redis.llen("rq:queue:default:intermediate") == 0
    stranded.recover(redis, 1.0, set(), {})
    assert not stranded.waiting  # nothing left to look at every few seconds
