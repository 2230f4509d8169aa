"""rq's periodic registry clean-up, run once by the master instead of by every worker.

An rq worker cleans its queues' registries (expired started, finished,
failed, deferred and scheduled entries, dead workers, and on rq 2+ the group
registries) when it starts and every ``maintenance_interval`` (10 minutes)
after that; the workers of one pool would each run that code, take turns on
Redis' maintenance lock, and each copy the master's pages that code touches.
The pool's workers skip it (``PoolWorkerMixin.should_run_maintenance_tasks``)
and the master runs it on the same schedule, through the pool's own worker
class, so what is cleaned and how is exactly what rq does.
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("rq_orchestrator")


class RegistryMaintenance:
    """Runs ``run_maintenance_tasks`` of an unregistered instance of the worker class, when due."""

    def __init__(self, queues: tuple[str, ...], connection: Redis, worker_class: type,
                 worker_kwargs: dict[str, Any], name: str) -> None:
        self._queues = queues
        self._connection = connection
        self._worker_class = worker_class
        self._worker_kwargs = worker_kwargs
        self._name = name
        self._maintainer: Any = None
        self._due = float("-inf")  # at once: a worker would clean when it starts

    def run_due(self, now: float) -> None:
        if now < self._due:
            return
        try:
            if self._maintainer is None:  # never registered: it appears in no worker list
                self._maintainer = self._worker_class(list(self._queues), name=self._name,
                                                      connection=self._connection, **self._worker_kwargs)
            self._maintainer.run_maintenance_tasks()
        except RedisError as exc:
            log.warning("registry maintenance failed, retrying in a minute: %s", exc)
            self._due = now + 60
            return
        self._due = now + self._maintainer.maintenance_interval
