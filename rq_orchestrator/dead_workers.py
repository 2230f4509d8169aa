"""Settle what a dead worker leaves in Redis: its registration and the job it held.

When a worker dies mid-job (crash, OOM kill, SIGKILL), rq leaves the job in
the started registry until its heartbeat expires and a later cleanup marks it
abandoned, minutes later. The master knows the worker and its job, so it ends
the job at once, through rq's own cleanup: the job's registry entry is marked
expired now and the registry cleans it, which fails the job, or requeues it
where its `Retry` allows, with the failure callback run as rq would.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger("rq_orchestrator")

WORKER_KEY = "rq:worker:{}"
WORKERS_KEY = "rq:workers"
WORKERS_BY_QUEUE_KEY = "rq:workers:{}"


def unregister_worker(connection: Redis, name: str, queues: Iterable[str]) -> None:
    """Remove a dead worker from rq's worker sets (and so from Frappe's RQ Worker list)."""
    key = WORKER_KEY.format(name)
    with connection.pipeline() as pipe:
        pipe.srem(WORKERS_KEY, key)
        for queue in queues:
            pipe.srem(WORKERS_BY_QUEUE_KEY.format(queue), key)
        pipe.delete(key)
        pipe.execute()


def settle_job(connection: Redis, job_id: str, reason: str, job_class: Any = None, serializer: Any = None) -> str | None:
    """End a job whose worker died: failed (or requeued by its Retry) now. Returns its new status."""
    from rq.job import Job
    from rq.registry import StartedJobRegistry

    job_class = job_class or Job
    try:
        job = job_class.fetch(job_id, connection=connection, serializer=serializer)
    except Exception:  # noqa: BLE001 - gone or unreadable: nothing to settle
        return None
    registry = StartedJobRegistry(job.origin, connection=connection, job_class=job_class, serializer=serializer)
    # rq <2 stores the job id; rq >=2 stores "<job id>:<execution id>".
    members = [m for m in _members(connection, registry.key) if m == job_id or m.startswith(f"{job_id}:")]
    if not members:
        return None
    job.meta["rq_orchestrator_failure"] = reason
    job.save_meta()
    connection.zadd(registry.key, {m: 1 for m in members}, xx=True)
    registry.cleanup()
    status = job.get_status(refresh=True)
    log.warning("job %s of a dead worker ended as %s: %s", job_id, getattr(status, "value", status), reason)
    return getattr(status, "value", status)


def settle_dead_worker(
    connection: Redis, name: str, queues: Iterable[str], job_id: str | None, reason: str, worker_kwargs: dict[str, Any]
) -> None:
    try:
        if job_id:
            settle_job(connection, job_id, reason, worker_kwargs.get("job_class"), worker_kwargs.get("serializer"))
        unregister_worker(connection, name, queues)
    except RedisError as exc:
        log.error("could not settle dead worker %s: %s", name, exc)


def _members(connection: Redis, key: str) -> list[str]:
    return [m.decode() if isinstance(m, bytes) else m for m in connection.zrange(key, 0, -1)]
