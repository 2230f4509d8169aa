"""rq's worker commands reach pool workers through the master: stop-job, kill-horse, shutdown, on real processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from rq import Queue
from rq.command import PUBSUB_CHANNEL_TEMPLATE, send_kill_horse_command, send_shutdown_command, send_stop_job_command
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from acl_user import BENCH_ID, frappe_url, make_user  # noqa: F401 - fixtures
from conftest import PoolProcess, alive, wait_until
from rq_orchestrator.infra.embedded_redis import RedisServer

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")


def busy_worker(pool: PoolProcess, job: Job) -> dict:
    """The pool's worker that runs ``job`` (as the master published it), once it does."""
    return pool.wait_until(lambda: next((w for w in pool.workers() if w["job"] == job.id), None), 15,
                           f"a worker to start job {job.id}")


def status_of(job: Job) -> JobStatus | None:
    return job.get_status(refresh=True)


def one_worker_running(start_pool, redis, seconds: float, *args: str) -> tuple[PoolProcess, Queue, Job, dict]:
    """A pool of one worker, running a job of ``seconds``: (pool, queue, job, worker).

    The jobs' module is preloaded: the worker is not replaced after its first job to share it.
    """
    pool = start_pool("--num-workers", "1", "--preload", "jobs", *FAST, *args)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    queue = Queue(connection=redis)
    job = queue.enqueue("jobs.sleep", seconds)
    worker = busy_worker(pool, job)
    pool.wait_until(lambda: status_of(job) == JobStatus.STARTED, 15, "the job to start")
    return pool, queue, job, worker


def assert_the_worker_goes_on(pool: PoolProcess, queue: Queue, worker: dict) -> None:
    after = queue.enqueue("jobs.sleep", 0)
    pool.wait_until(lambda: status_of(after) == JobStatus.FINISHED, 15, "the next job on the same worker")
    assert pool.ready_pids() == [worker["pid"]]


def test_stop_job_kills_the_work_process_and_the_worker_goes_on(start_pool, redis):
    pool, queue, job, worker = one_worker_running(start_pool, redis, 60)
    send_stop_job_command(redis, job.id)
    pool.wait_until(lambda: status_of(job) == JobStatus.STOPPED, 15, "the job to be stopped")
    assert job.id in FailedJobRegistry(queue=queue).get_job_ids()
    assert_the_worker_goes_on(pool, queue, worker)
    assert "rq command: stop job" in pool.output()
    pool.wait_until(lambda: pool.state()["counters"]["jobs"] == {"stopped": 1, "finished": 1}, 5,
                    "the stopped job counted as stopped")


def test_kill_horse_fails_the_job_as_rq_does_and_the_worker_goes_on(start_pool, redis):
    pool, queue, job, worker = one_worker_running(start_pool, redis, 60)
    send_kill_horse_command(redis, worker["name"])
    pool.wait_until(lambda: status_of(job) == JobStatus.FAILED, 15, "the job to fail")
    assert "terminated unexpectedly" in (job.exc_info or "")
    assert_the_worker_goes_on(pool, queue, worker)


def test_no_fork_workers_ignore_stop_job_and_kill_horse_and_say_so(start_pool, redis):
    pool, queue, job, worker = one_worker_running(start_pool, redis, 1.5, "--no-fork")
    send_stop_job_command(redis, job.id)
    send_kill_horse_command(redis, worker["name"])
    pool.wait_until(lambda: status_of(job) == JobStatus.FINISHED, 15, "the job to finish all the same")
    assert pool.output().count("ignored: with --no-fork its job runs in the worker itself") == 2
    assert_the_worker_goes_on(pool, queue, worker)


def test_shutdown_stops_the_worker_warm_and_the_pool_replaces_it(start_pool, redis):
    pool, _, job, worker = one_worker_running(start_pool, redis, 1.5)
    send_shutdown_command(redis, worker["name"])
    pool.wait_until(lambda: status_of(job) == JobStatus.FINISHED, 15, "the job to finish (a warm stop)")
    pool.wait_until(lambda: [w["pid"] for w in pool.workers()] not in ([], [worker["pid"]]) and len(pool.workers()) == 1,
                    15, "the worker gone and one replacement")
    assert "rq command: shutdown" in pool.output()


def test_the_pool_s_warm_stop_lets_a_retiring_worker_finish_its_job(start_pool, redis):
    pool, _, job, worker = one_worker_running(start_pool, redis, 4)
    send_shutdown_command(redis, worker["name"])
    pool.wait_until(lambda: "rq command: shutdown" in pool.output(), 15, "the shutdown relayed")
    time.sleep(1.5)  # past the second within which a repeated TERM counts as the same request
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert status_of(job) == JobStatus.FINISHED
    assert "cold shut down" not in pool.output()


def test_a_retiring_worker_whose_master_dies_finishes_its_job(start_pool, redis):
    pool, _, job, worker = one_worker_running(start_pool, redis, 4)
    send_shutdown_command(redis, worker["name"])
    pool.wait_until(lambda: "rq command: shutdown" in pool.output(), 15, "the shutdown relayed")
    time.sleep(1.5)
    pool.send(signal.SIGKILL)  # the worker's parent-death signal is a TERM
    wait_until(lambda: status_of(job) == JobStatus.FINISHED, 15, "the job to finish")
    wait_until(lambda: not alive(worker["pid"]), 15, "the worker to exit")


def test_a_worker_killed_while_retiring_with_a_job_has_its_job_settled(start_pool, redis):
    """A warm stop waits for the job; a worker that dies meanwhile (killed, Redis gone) still has its job failed."""
    pool, _, job, worker = one_worker_running(start_pool, redis, 60)
    send_shutdown_command(redis, worker["name"])
    pool.wait_until(lambda: "rq command: shutdown" in pool.output(), 15, "the shutdown relayed")
    os.kill(worker["pid"], signal.SIGKILL)
    pool.wait_until(lambda: status_of(job) == JobStatus.FAILED, 15, "the job failed, not left started")
    assert "while retiring" in (Job.fetch(job.id, connection=redis).meta.get("rq_orchestrator_failure") or "")


def test_commands_for_other_workers_or_other_jobs_change_nothing(start_pool, redis):
    pool, queue, job, worker = one_worker_running(start_pool, redis, 2)
    send_shutdown_command(redis, "w1.1.elsewhere.other-pool")
    send_kill_horse_command(redis, "no-such-worker")
    channel = PUBSUB_CHANNEL_TEMPLATE % worker["name"]
    redis.publish(channel, json.dumps({"command": "stop-job", "job_id": "not-the-running-job"}))
    redis.publish(channel, "not json")
    pool.wait_until(lambda: status_of(job) == JobStatus.FINISHED, 15, "the job to finish undisturbed")
    assert pool.ready_pids() == [worker["pid"]]
    assert "rq command" not in pool.output()


def test_the_master_subscribes_again_after_redis_restarts(tmp_path: Path):
    with RedisServer(persistent=True) as server:
        client = server.client()
        pool = PoolProcess(server.url, ("--num-workers", "1", *FAST), tmp_path / "pool.log")
        try:
            pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
            server.stop()
            time.sleep(1)
            server.start()
            pool.wait_until(lambda: "rq's worker commands: subscribed again" in pool.output(), 30, "a new subscription")
            job = Queue(connection=client).enqueue("jobs.sleep", 60)
            busy_worker(pool, job)
            pool.wait_until(lambda: status_of(job) == JobStatus.STARTED, 15, "the job to start")
            send_stop_job_command(client, job.id)
            pool.wait_until(lambda: status_of(job) == JobStatus.STOPPED, 15, "the job to be stopped")
        finally:
            pool.cleanup()


def test_without_channel_rights_the_pool_says_so_at_start(frappe_url, tmp_path: Path):
    pool = PoolProcess(frappe_url, (f"{BENCH_ID}:default", "--num-workers", "1", *FAST), tmp_path / "pool.log")
    try:
        pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker under Frappe's user")
        lines = [line for line in pool.output().splitlines() if "rq's worker commands" in line]
        assert len(lines) == 1 and "WARNING" in lines[0] and "may not subscribe" in lines[0]
    finally:
        pool.cleanup()


def test_a_stop_job_for_a_job_that_ended_does_not_touch_the_next_one(start_pool, redis):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    queue = Queue(connection=redis)
    first = queue.enqueue("jobs.sleep", 0)
    wait_until(lambda: status_of(first) == JobStatus.FINISHED, 15, "the first job")
    second = queue.enqueue("jobs.sleep", 2)
    worker = busy_worker(pool, second)
    send_stop_job_command(redis, first.id)  # rq sends it: the first job still names its worker
    redis.publish(PUBSUB_CHANNEL_TEMPLATE % worker["name"], json.dumps({"command": "stop-job", "job_id": first.id}))
    wait_until(lambda: status_of(second) == JobStatus.FINISHED, 15, "the second job to finish")
