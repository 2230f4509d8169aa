"""rq's periodic registry clean-up, run once by the master instead of by every worker.

An rq worker cleans its queues' registries (expired started, finished,
failed, deferred and scheduled entries, dead workers, and on rq 2+ the group
registries) when it starts and every 10 minutes after that; the workers of
one pool would each run that code, take turns on Redis' maintenance lock,
and each copy the master's pages that code touches. The pool's workers skip
it (``PoolWorkerMixin.should_run_maintenance_tasks``) and the master runs
rq's own clean-up functions on the same schedule, in an errand (a throwaway
fork): cleaning an abandoned job runs its failure callback, the application's
code, which may start a thread (Frappe's does).

Not rq's clean-up of its intermediate lists: on rq 1.15 it fails any job
that a worker has just popped and not yet registered as started, which a
clean-up run by the master, while its workers pop, would hit. Ids stranded
there are requeued by ``dead_workers.StrandedJobs`` after a grace period.
"""

from __future__ import annotations

import logging
from typing import Any

from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from ..infra.connection import fresh_copy
from ..infra.wording import counted
from .dead_workers import clean_with_handlers
from .errand import Say, run_errand

log = logging.getLogger("rq_orchestrator")

INTERVAL_SECONDS = 600.0  # rq's DEFAULT_MAINTENANCE_TASK_INTERVAL
RETRY_SECONDS = 60.0
ERRAND_SECONDS = 300.0  # a clean-up still at it then is killed, and tried again on the next interval


class RegistryMaintenance:
    """Cleans the pool's queues' registries at start and every INTERVAL_SECONDS after."""

    def __init__(self, queues: tuple[str, ...], connection: Redis, worker_kwargs: dict[str, Any],
                 stop_asked: Callable[[], bool] = lambda: False) -> None:
        self._queues = queues
        self._connection = connection
        self._worker_kwargs = worker_kwargs
        self._stop_asked = stop_asked
        self._due = float("-inf")  # at once: a worker would clean when it starts

    def run_due(self, now: float) -> None:
        if now < self._due:
            return
        said, why = run_errand(self._clean_in_errand, "rq-orchestrator: registry clean-up", ERRAND_SECONDS,
                               self._stop_asked)
        if said:  # Redis could not be reached
            log.warning("registry maintenance failed, retrying in a minute: %s", said.decode(errors="replace"))
            self._due = now + RETRY_SECONDS
            return
        if why:
            log.warning("registry maintenance cut short (%s)", why)
        self._due = now + INTERVAL_SECONDS

    def _clean_in_errand(self, say: Say) -> None:
        """In the errand: clean, on a client of its own; say what Redis said if it could not be reached."""
        self._connection = fresh_copy(self._connection)
        try:
            self._clean()
        except RedisError as exc:
            say(str(exc).encode() or b"Redis error")
        except Exception:  # noqa: BLE001 - rq 1.x's clean-up passes on what a job's failure callback raised
            log.exception("registry maintenance failed")

    def recover_ready(self) -> int:
        """rq 3+: enqueue the dependents left in the queues' ready registries; how many (0 on a Redis error).

        A job's end moves its dependents deferred -> ready -> queue. When two ends
        race for one queue's ready registry, rq 3.0 leaves the loser's dependents
        there "for now", in no queue, until the 10-minute clean-up (a burst would
        exit without them). rq's ``cleanup`` enqueues each under WATCH: never twice.
        """
        recovered = 0
        try:
            for name in self._queues:
                registry = getattr(self._queue(name), "ready_job_registry", None)  # rq < 3 has none
                if registry is not None:
                    recovered += len(registry.cleanup())
        except RedisError as exc:
            log.debug("looking at the ready registries failed: %s", exc)
        if recovered:
            log.info("enqueued %s that rq had left in its ready registries", counted(recovered, "dependent job"))
        return recovered

    def _queue(self, name: str) -> Any:
        from rq.queue import Queue

        queue_class = self._worker_kwargs.get("queue_class") or Queue
        lookups = {k: v for k, v in self._worker_kwargs.items() if k in ("job_class", "serializer")}
        return queue_class(name, connection=self._connection, **lookups)

    def _clean(self) -> None:
        from rq import worker_registration
        from rq.registry import clean_registries

        for name in self._queues:
            queue = self._queue(name)
            if not queue.acquire_maintenance_lock():
                continue  # another pool's master (or an rq worker) is at it
            log.info("cleaning registries for queue %s", name)
            clean_with_handlers(clean_registries, self._worker_kwargs.get("exception_handlers"), queue)
            worker_registration.clean_worker_registry(queue)
            if hasattr(queue, "release_maintenance_lock"):  # rq 1.15 lets the lock expire
                queue.release_maintenance_lock()
        try:
            from rq.group import Group
        except ImportError:  # rq < 2 has no groups
            return
        Group.clean_registries(connection=self._connection)
