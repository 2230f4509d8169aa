"""Settling the job of a dead worker, against a real Redis and rq's own worker steps."""

from __future__ import annotations

import threading

from redis import Redis
from rq import Queue, Retry, Worker
from rq.job import JobStatus

from conftest import wait_until
from rq_orchestrator.infra.connection import fresh_copy
from rq_orchestrator.master.dead_workers import settle_job


def started_by_a_worker(redis: Redis, queue: Queue) -> str:
    """A job popped and started by an rq worker (which then 'dies': nothing more is done): its id."""
    job = queue.enqueue("jobs.noop", retry=Retry(max=1))
    worker = Worker([queue], connection=redis)
    worker.register_birth()
    taken, _queue = worker.dequeue_job_and_maintain_ttl(None)
    assert taken.id == job.id
    if hasattr(worker, "prepare_execution"):  # rq 2+: the execution goes in the started registry first
        worker.prepare_execution(taken)
    worker.prepare_job_execution(taken)
    assert taken.get_status(refresh=True) == JobStatus.STARTED
    return job.id


def test_a_job_its_retry_requeued_and_another_worker_popped_is_not_pushed_again(redis):
    queue = Queue(connection=redis)
    job_id = started_by_a_worker(redis, queue)
    popped: list = []
    other = fresh_copy(redis)
    waiter = threading.Thread(target=lambda: popped.append(other.blpop([queue.key], timeout=20)))
    waiter.start()  # another worker, idle in its pop: Redis hands it the job as soon as the retry pushes it
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in redis.client_list()), 10, "the other pop to block")
    settle_job(redis, job_id, "test: its worker died")
    waiter.join(20)
    assert popped and popped[0][1].decode() == job_id
    assert queue.get_job_ids() == []  # once is enough: the other worker has it
