"""--no-fork end to end: jobs run in the worker process itself, and a worker in doubt is replaced by a fresh fork."""

from __future__ import annotations

import random
import signal
from collections import Counter

import pytest
from rq import Queue
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, StartedJobRegistry

from conftest import run_counts
from rq_orchestrator.worker.no_fork import in_doubt

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")
ENDED = (JobStatus.FINISHED, JobStatus.FAILED)


def ran_in(redis, job: Job) -> int:
    """The pid of the process that ran ``job`` (tests/no_fork_jobs.py records it)."""
    return int(redis.hget("test:pid", job.id))


def one_worker(start_pool, *args: str):
    pool = start_pool("--num-workers", "1", "--no-fork", *FAST, *args)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    return pool, pool.ready_pids()[0]


def run(pool, queue: Queue, func: str, *args, status: str = JobStatus.FINISHED, **kwargs) -> Job:
    job = queue.enqueue(func, *args, **kwargs)
    pool.wait_until(lambda: job.get_status(refresh=True) == status, 30, f"{func} to end {status}")
    return job


def test_the_doubt_rule():
    assert in_doubt(None) is None
    assert in_doubt(ValueError()) is None
    assert in_doubt(Exception()) is None
    for exc in (SystemExit(0), KeyboardInterrupt(), GeneratorExit(), MemoryError()):
        assert in_doubt(exc) == f"the job raised {type(exc).__name__}"


@pytest.mark.parametrize("worker_class", ["rq.Worker", "rq.SimpleWorker", "no_fork_jobs.StopOnTimeout"])
def test_jobs_run_in_the_worker_process(start_pool, redis, worker_class):
    pool, worker = one_worker(start_pool, "--worker-class", worker_class)
    queue = Queue(connection=redis)
    jobs = [run(pool, queue, "no_fork_jobs.pid") for _ in range(3)]
    assert {ran_in(redis, job) for job in jobs} == {worker}
    assert pool.ready_pids() == [worker]


def test_fork_mode_still_forks(start_pool, redis):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    job = run(pool, Queue(connection=redis), "no_fork_jobs.pid")
    assert ran_in(redis, job) != pool.ready_pids()[0]


def test_an_ordinary_exception_fails_the_job_and_the_worker_goes_on(start_pool, redis):
    pool, worker = one_worker(start_pool)
    queue = Queue(connection=redis)
    failed = run(pool, queue, "no_fork_jobs.boom", status=JobStatus.FAILED)
    after = run(pool, queue, "no_fork_jobs.pid")
    assert ran_in(redis, failed) == ran_in(redis, after) == worker
    assert "in doubt" not in pool.output()


def replaced(pool, redis, queue: Queue, worker: int) -> int:
    """The worker left and a fresh one took over: the pid that ran the next job."""
    pool.wait_until(lambda: len(pool.ready_pids()) == 1 and pool.ready_pids()[0] != worker, 15, "a fresh worker")
    after = run(pool, queue, "no_fork_jobs.pid")
    assert ran_in(redis, after) not in (worker, 0)
    return ran_in(redis, after)


@pytest.mark.parametrize("worker_class", ["rq.Worker", "no_fork_jobs.StopOnTimeout"])
def test_a_timed_out_job_fails_with_rqs_timeout_and_its_worker_is_replaced(start_pool, redis, worker_class):
    pool, worker = one_worker(start_pool, "--worker-class", worker_class)
    queue = Queue(connection=redis)
    job = run(pool, queue, "no_fork_jobs.overrun", 30, job_timeout=1, status=JobStatus.FAILED)
    assert ran_in(redis, job) == worker
    job.refresh()
    assert "JobTimeoutException" in (job.exc_info or "")
    replaced(pool, redis, queue, worker)
    assert FailedJobRegistry(queue=queue).get_job_ids() == [job.id]
    assert StartedJobRegistry(queue=queue).count == 0
    assert "its timeout fired" in pool.output()
    assert "unexpectedly" not in pool.output()


def test_a_job_that_swallows_its_timeout_still_retires_its_worker(start_pool, redis):
    pool, worker = one_worker(start_pool)
    queue = Queue(connection=redis)
    run(pool, queue, "no_fork_jobs.swallow_timeout", 30, job_timeout=1)
    replaced(pool, redis, queue, worker)


@pytest.mark.parametrize("kind", ["SystemExit", "KeyboardInterrupt", "MemoryError"])
def test_a_job_in_doubt_is_failed_and_its_worker_replaced(start_pool, redis, kind):
    pool, worker = one_worker(start_pool)
    queue = Queue(connection=redis)
    job = run(pool, queue, "no_fork_jobs.raise_base", kind, status=JobStatus.FAILED)
    assert ran_in(redis, job) == worker
    job.refresh()
    assert kind in (job.exc_info or "")
    replaced(pool, redis, queue, worker)
    assert f"the job raised {kind}" in pool.output()
    assert run_counts(redis)[job.id] == 1


def test_max_jobs_recycles_no_fork_workers(start_pool, redis):
    pool, worker = one_worker(start_pool, "--max-jobs-per-worker", "3")
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("no_fork_jobs.pid") for _ in range(12)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 30, "all jobs")
    pids = [ran_in(redis, job) for job in jobs]
    assert pids[0] == worker and sorted(Counter(pids).values()) == [3] * 4  # no jitter below 10 jobs
    assert set(run_counts(redis).values()) == {1}
    assert "recycles (" in pool.output()


def test_a_worker_killed_mid_job_has_its_job_settled(start_pool, redis):
    redis.set("test:horse", "0")  # jobs.kill_my_worker kills its own process: the worker itself
    pool, worker = one_worker(start_pool)
    queue = Queue(connection=redis)
    job = run(pool, queue, "jobs.kill_my_worker", status=JobStatus.FAILED)
    job.refresh()
    assert "killed by SIGKILL" in job.meta["rq_orchestrator_failure"]
    replaced(pool, redis, queue, worker)
    assert StartedJobRegistry(queue=queue).count == 0


def test_a_cold_stop_fails_the_job_in_hand_as_a_cold_stop_not_as_a_worker_in_doubt(start_pool, redis):
    pool, worker = one_worker(start_pool)
    job = Queue(connection=redis).enqueue("jobs.sleep", 30)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    pool.send(signal.SIGQUIT)
    pool.wait(20)
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert "cold stop: the worker was stopped without waiting for its job" in (job.exc_info or "")
    assert "in doubt" not in pool.output()  # it leaves in the stop: no retirement, no replacement counted


def test_no_job_is_lost_while_workers_in_doubt_churn(start_pool, redis):
    """Scaling every 0.1 s, and a third of the jobs retire their worker: every job ends, each ran once."""
    pool = start_pool("--min-workers", "1", "--max-workers", "4", "--no-fork", "--scaling-period", "0.1",
                      "--utilization-window", "0.3", "--max-jobs-per-worker", "7")
    pool.wait_until(lambda: pool.active_workers() >= 1, 15, "the first worker")
    queue = Queue(connection=redis)
    rng = random.Random(13)
    kinds = [("no_fork_jobs.pid", ()), ("no_fork_jobs.boom", ()), ("no_fork_jobs.raise_base", ("SystemExit",)),
             ("no_fork_jobs.raise_base", ("KeyboardInterrupt",))]
    jobs = [queue.enqueue(func, *args) for func, args in (rng.choice(kinds) for _ in range(120))]
    pool.wait_until(lambda: all(j.get_status(refresh=True) in ENDED for j in jobs), 90, "every job to end")
    counts = run_counts(redis)
    assert len(counts) == len(jobs) and set(counts.values()) == {1}
    for job in jobs:
        expected = JobStatus.FINISHED if job.func_name == "no_fork_jobs.pid" else JobStatus.FAILED
        assert job.get_status(refresh=True) == expected
    assert StartedJobRegistry(queue=queue).count == 0
    assert "unexpectedly" not in pool.output()


def test_a_job_whose_workers_die_before_starting_it_is_failed_after_three_tries(start_pool, redis):
    """Put back in front each time, it would stop the queue for good: the third death fails it."""
    queue = Queue(connection=redis)
    pool = start_pool("--num-workers", "1", "--no-fork", "--worker-class", "jobs.BrokenPerformJob", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    job = queue.enqueue("jobs.noop")
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 60, "the job to be failed")
    assert pool.output().count(f"job {job.id} was popped by a worker that never started it") == 2
    job.refresh()
    assert job.meta["rq_orchestrator_failure"].startswith("its worker died before starting it 3 times; the last: ")
    assert job.id in FailedJobRegistry(queue=queue) and pool.proc.poll() is None
    FailedJobRegistry(queue=queue).requeue(job.id)  # an operator tries it again: three tries again, not one
    pool.wait_until(lambda: pool.output().count(f"job {job.id} was popped by a worker that never started it") == 4
                    and job.get_status(refresh=True) == JobStatus.FAILED, 60, "the requeued job to be failed again")
