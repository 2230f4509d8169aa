"""The master cleans rq's registries for its workers (rq_orchestrator.master.maintenance), on a real Redis."""

from __future__ import annotations

import time

from rq import Queue, Worker
from rq.defaults import DEFAULT_MAINTENANCE_TASK_INTERVAL as INTERVAL
from rq.registry import FinishedJobRegistry

from rq_orchestrator.master.maintenance import RegistryMaintenance
from test_pool import FAST


def expired_entry(redis, queue_name: str = "default") -> FinishedJobRegistry:
    """A finished-job registry holding an entry whose time is long past, as rq leaves them."""
    registry = FinishedJobRegistry(queue_name, connection=redis)
    redis.zadd(registry.key, {"gone-job": 1})
    return registry


def test_maintenance_cleans_at_once_then_on_rqs_interval(redis):
    registry = expired_entry(redis)
    maintenance = RegistryMaintenance(("default",), redis, {})
    maintenance.run_due(100.0)
    assert redis.zcard(registry.key) == 0
    redis.zadd(registry.key, {"gone-again": 1})
    maintenance.run_due(100.0 + INTERVAL - 1)  # not due yet
    assert redis.zcard(registry.key) == 1
    for lock in redis.keys("rq:clean_registries:*"):  # rq 1.15 keeps its lock as long as the interval
        redis.delete(lock)
    maintenance.run_due(100.0 + INTERVAL)
    assert redis.zcard(registry.key) == 0
    assert Worker.all(connection=redis) == []  # nothing registers as a worker for it


def test_maintenance_leaves_a_job_being_popped_alone(redis):
    # A worker has moved the job's id to rq's intermediate list and not yet registered it as
    # started: rq 1.15's own clean-up of that list would fail the job at this instant.
    queue = Queue(connection=redis)
    job = queue.enqueue("jobs.noop")
    redis.lmove(queue.key, f"{queue.key}:intermediate")
    RegistryMaintenance(("default",), redis, {}).run_due(0.0)
    assert job.get_status(refresh=True) == "queued"
    assert redis.lrange(f"{queue.key}:intermediate", 0, -1) == [job.id.encode()]


def test_pool_workers_leave_maintenance_to_the_master(start_pool, redis):
    registry = expired_entry(redis)
    pool = start_pool("--num-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 20, "two ready workers")
    pool.wait_until(lambda: redis.zcard(registry.key) == 0, 10, "the registry to be cleaned")
    job = Queue(connection=redis).enqueue("jobs.noop")
    pool.wait_until(lambda: job.get_status(refresh=True) == "finished", 20, "the job")
    time.sleep(0.5)
    cleaning = [line for line in pool.output().splitlines() if "leaning registries" in line]
    assert cleaning == [line for line in cleaning if "INFO cleaning registries for queue default" in line], cleaning
