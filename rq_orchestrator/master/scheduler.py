"""RQ's scheduler duty (enqueue_at / enqueue_in / retry intervals), once per pool, inside the master loop.

rq's own pools start a scheduler process from each worker that wins the
per-queue lock. Here the master does the same work between its other chores:
no extra process, no thread, and the same Redis locks, so it cooperates with
any other rq scheduler on those queues.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger("rq_orchestrator")


class MasterScheduler:
    def __init__(
        self, queues: Iterable[str], connection: Any, serializer: Any = None, logging_level: str = "INFO",
        interval: float = 1.0,
    ) -> None:
        from rq.scheduler import RQScheduler

        self._scheduler = RQScheduler(list(queues), connection=connection, serializer=serializer,
                                      logging_level=logging_level)
        self._interval = interval
        self._next = 0.0

    def run_due(self, now: float) -> None:
        """Move due jobs to their queues, at most once per interval."""
        if now < self._next:
            return
        self._next = now + self._interval
        scheduler = self._scheduler
        try:
            if scheduler.should_reacquire_locks:
                scheduler.acquire_locks()
            if scheduler.acquired_locks:
                scheduler.enqueue_scheduled_jobs()
                scheduler.heartbeat()
        except RedisError as exc:
            log.debug("scheduler: %s", exc)

    def stop(self) -> None:
        try:
            self._scheduler.release_locks()
        except RedisError:
            pass
