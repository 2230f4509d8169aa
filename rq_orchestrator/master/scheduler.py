"""RQ's scheduler duty (enqueue_at / enqueue_in / retry intervals), once per pool, inside the master loop.

rq's own pools start a scheduler process from each worker that wins the
per-queue lock, and it checks every queue's scheduled-job registry every
second (two to five commands a second even when nothing is scheduled). Here
the master looks at the registries' earliest entries every PROBE_SECONDS (one
ZRANGE per queue), and between looks wakes for the earliest job it saw. Only
when a job is due does it take rq's per-queue locks (so it cooperates with any
other rq scheduler on those queues), let rq's own scheduler move the due jobs,
and release the locks. A job scheduled at least PROBE_SECONDS ahead is
enqueued within the master's one-second loop of its time; one scheduled
closer than that may wait up to PROBE_SECONDS (rq's scheduler: up to 1 s).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("rq_orchestrator")

PROBE_SECONDS = 2.0


class MasterScheduler:
    def __init__(
        self, queues: Iterable[str], connection: Any, serializer: Any = None, logging_level: str = "INFO",
    ) -> None:
        from rq.registry import ScheduledJobRegistry
        from rq.scheduler import RQScheduler

        self._queues = list(queues)
        self._connection = connection
        self._scheduler = RQScheduler(self._queues, connection=connection, serializer=serializer,
                                      logging_level=logging_level)
        self._registry_keys = [ScheduledJobRegistry(q, connection=connection, serializer=serializer).key
                               for q in self._queues]
        self._next = 0.0

    def run_due(self, now: float) -> None:
        """Move due jobs to their queues; look again at the earliest scheduled job's time or after PROBE_SECONDS."""
        if now < self._next:
            return
        self._next = now + PROBE_SECONDS
        try:
            earliest = self._earliest_scheduled()
            if earliest is None:
                return
            wait = earliest - time.time()
            if wait <= 0:
                self._enqueue_due()
            else:
                self._next = now + min(wait, PROBE_SECONDS)
        except RedisError as exc:
            log.debug("scheduler: %s", exc)

    def _earliest_scheduled(self) -> float | None:
        """The time (seconds since the epoch) of the earliest scheduled job of any queue, None if there is none."""
        with self._connection.pipeline(transaction=False) as pipe:
            for key in self._registry_keys:
                pipe.zrange(key, 0, 0, withscores=True)
            firsts = [entry[0][1] for entry in pipe.execute() if entry]
        return min(firsts, default=None)

    def _enqueue_due(self) -> None:
        """Under rq's per-queue locks (held by no other scheduler), rq's own scheduler moves the due jobs."""
        scheduler = self._scheduler
        if not scheduler.acquire_locks():
            return  # another scheduler holds them, and moves the jobs
        try:
            scheduler.prepare_registries()
            scheduler.enqueue_scheduled_jobs()
        finally:
            scheduler.release_locks()
        self._next = 0.0  # look again at once: more may be due, or the next one soon

    def stop(self) -> None:
        try:
            self._scheduler.release_locks()
        except RedisError:
            pass
