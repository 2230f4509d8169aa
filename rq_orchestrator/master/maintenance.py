"""rq's periodic registry clean-up, run once by the master instead of by every worker.

An rq worker cleans its queues' registries (expired started, finished,
failed, deferred and scheduled entries, dead workers, and on rq 2+ the group
registries) when it starts and every 10 minutes after that; the workers of
one pool would each run that code, take turns on Redis' maintenance lock,
and each copy the master's pages that code touches. The pool's workers skip
it (``PoolWorkerMixin.should_run_maintenance_tasks``) and the master runs
rq's own clean-up functions on the same schedule.

Not rq's clean-up of its intermediate lists: on rq 1.15 it fails any job
that a worker has just popped and not yet registered as started, which a
clean-up run by the master, while its workers pop, would hit. Ids stranded
there are requeued by ``dead_workers.StrandedJobs`` after a grace period.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("rq_orchestrator")

INTERVAL_SECONDS = 600.0  # rq's DEFAULT_MAINTENANCE_TASK_INTERVAL
RETRY_SECONDS = 60.0


class RegistryMaintenance:
    """Cleans the pool's queues' registries at start and every INTERVAL_SECONDS after."""

    def __init__(self, queues: tuple[str, ...], connection: Redis, worker_kwargs: dict[str, Any]) -> None:
        self._queues = queues
        self._connection = connection
        self._worker_kwargs = worker_kwargs
        self._due = float("-inf")  # at once: a worker would clean when it starts

    def run_due(self, now: float) -> None:
        if now < self._due:
            return
        try:
            self._clean()
        except RedisError as exc:
            log.warning("registry maintenance failed, retrying in a minute: %s", exc)
            self._due = now + RETRY_SECONDS
            return
        except Exception:  # noqa: BLE001 - rq 1.x's clean-up passes on what a job's failure callback raised
            log.exception("registry maintenance failed")
        self._due = now + INTERVAL_SECONDS

    def _clean(self) -> None:
        from rq import worker_registration
        from rq.queue import Queue
        from rq.registry import clean_registries

        queue_class = self._worker_kwargs.get("queue_class") or Queue
        lookups = {k: v for k, v in self._worker_kwargs.items() if k in ("job_class", "serializer")}
        for name in self._queues:
            queue = queue_class(name, connection=self._connection, **lookups)
            if not queue.acquire_maintenance_lock():
                continue  # another pool's master (or an rq worker) is at it
            log.info("cleaning registries for queue %s", name)
            clean_registries(queue)
            worker_registration.clean_worker_registry(queue)
            if hasattr(queue, "release_maintenance_lock"):  # rq 1.15 lets the lock expire
                queue.release_maintenance_lock()
        try:
            from rq.group import Group
        except ImportError:  # rq < 2 has no groups
            return
        Group.clean_registries(connection=self._connection)
