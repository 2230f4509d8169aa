"""Settle what a dead worker leaves in Redis: its registration and the job it held.

When a worker dies mid-job (crash, OOM kill, SIGKILL), rq leaves the job in
the started registry until its heartbeat expires and a later cleanup marks it
abandoned, minutes later. The master knows the worker and its job, so it ends
the job at once, through rq's own cleanup: the job's registry entry is marked
expired now and the registry cleans it, which fails the job, or requeues it
where its `Retry` allows, with the failure callback run as rq would. That
callback is the application's code (Frappe's starts a cache thread), so the
settling runs in an errand, a throwaway fork of the master.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ..infra.connection import fresh_copy
from ..infra.processes import running
from ..infra.rq_keys import WORKERS_KEY, intermediate_key, worker_key, workers_by_queue_key
from .errand import Say, run_errand
from .worker_names import of_pool, parse_worker_name

log = logging.getLogger("rq_orchestrator")

MAX_PUT_BACKS = 2  # a job popped by workers that died before starting it: back in front this often, then failed
PUT_BACKS_FIELD = "rq_orchestrator_put_backs"  # in the job's hash
SETTLE_SECONDS = 30.0  # an errand that settles dead workers' jobs (their failure callbacks included) and no longer
RETRY_SECONDS = 1.0  # while Redis does not answer, the settling (an errand each time) is tried again this often


def unregister_worker(connection: Redis, name: str, queues: Iterable[str]) -> None:
    """Remove a dead worker from rq's worker sets (and so from Frappe's RQ Worker list)."""
    key = worker_key(name)
    with connection.pipeline() as pipe:
        pipe.srem(WORKERS_KEY, key)
        for queue in queues:
            pipe.srem(workers_by_queue_key(queue), key)
        pipe.delete(key)
        pipe.execute()


def settle_job(connection: Redis, job_id: str, reason: str, job_class: Any = None, serializer: Any = None,
               handlers: list[Any] | None = None) -> str | None:
    """End a job whose worker died: failed (or requeued by its Retry) now. Returns its new status.

    ``handlers``: the workers' exception handlers (--exception-handler), which rq 2+ passes its clean-up too.
    """
    from rq.job import Job, JobStatus
    from rq.registry import StartedJobRegistry

    job_class = job_class or Job
    try:
        job = job_class.fetch(job_id, connection=connection, serializer=serializer)
    except Exception:  # noqa: BLE001 - gone or unreadable: nothing to settle
        return None
    registry = StartedJobRegistry(job.origin, connection=connection, job_class=job_class, serializer=serializer)
    # rq <2 stores the job id; rq >=2 stores "<job id>:<execution id>".
    members = [m for m in _members(connection, registry.key) if m == job_id or m.startswith(f"{job_id}:")]
    never_started = job.get_status(refresh=False) == JobStatus.QUEUED  # as fetched just now
    if never_started or not members:
        if members:  # rq 2/3 register the execution before the work process marks the job started: rq's
            connection.zrem(registry.key, *members)  # cleanup would fail it (2.x: AbandonedJobError), it never ran
        return _requeue_if_never_started(connection, job, died=reason, handlers=handlers)
    job.meta["rq_orchestrator_failure"] = reason
    job.save_meta()
    connection.zadd(registry.key, {m: 1 for m in members}, xx=True)
    return _clean_up(registry, job, reason, handlers)


def _clean_up(registry: Any, job: Any, reason: str, handlers: list[Any] | None) -> str | None:
    """rq's own clean-up of the job's expired entry: its failure callback, Retry, dependents, (rq 2+) handlers."""
    clean_with_handlers(registry.cleanup, handlers)
    # Not requeued here: a job its Retry put back is QUEUED and, once another worker popped it, in no queue either.
    status = job.get_status(refresh=True)
    log.warning("job %s of a dead worker ended as %s: %s", job.id, getattr(status, "value", status), reason)
    return getattr(status, "value", status)


def clean_with_handlers(clean: Callable[..., Any], handlers: list[Any] | None, *args: Any) -> None:
    """Call one of rq's clean-ups with the workers' exception handlers where it takes them (rq 2+), as rq's worker does."""
    if handlers and "exception_handlers" in inspect.signature(clean).parameters:
        clean(*args, exception_handlers=handlers)
    else:
        clean(*args)


def _requeue_if_never_started(connection: Redis, job: Any, died: str | None = None,
                              handlers: list[Any] | None = None) -> str | None:
    """The worker died after popping the job but before rq marked it started: put it back in front.

    ``died``: why the worker that held it died. A job put back so more than
    MAX_PUT_BACKS times since it was last enqueued (a worker class that fails
    before every job, say) is failed instead: put back in front again and
    again, it would stop the queue.
    """
    from rq.job import JobStatus
    from rq.queue import Queue

    if job.get_status(refresh=True) != JobStatus.QUEUED:
        return None
    queue = Queue(job.origin, connection=connection, job_class=type(job), serializer=job.serializer)
    if connection.lpos(queue.key, job.id) is not None:
        return None
    if died is not None and _count_put_back(connection, job) > MAX_PUT_BACKS:
        return _fail_never_started(connection, job, queue, handlers,
                                   f"its worker died before starting it {MAX_PUT_BACKS + 1} times; the last: {died}")
    with connection.pipeline() as pipe:
        pipe.lrem(intermediate_key(queue.name), 0, job.id)
        queue.push_job_id(job.id, pipeline=pipe, at_front=True)
        pipe.execute()
    log.warning("job %s was popped by a worker that never started it: back at the front of %s", job.id, queue.name)
    return JobStatus.QUEUED.value


def _count_put_back(connection: Redis, job: Any) -> int:
    """One more put-back of ``job``; how many since rq last enqueued it (a requeue from the failed registry: anew)."""
    mark = str(job.enqueued_at)  # rq sets it on every enqueue, retries and requeues included; a put-back keeps it
    raw = connection.hget(job.key, PUT_BACKS_FIELD)
    seen, _, count = (raw.decode() if raw else "").rpartition(" ")
    count = int(count) + 1 if raw and seen == mark else 1
    connection.hset(job.key, PUT_BACKS_FIELD, f"{mark} {count}")
    return count


def _fail_never_started(connection: Redis, job: Any, queue: Any, handlers: list[Any] | None, reason: str) -> str | None:
    """Fail it as rq fails a job whose worker died (its callback, Retry, dependents): through the started registry."""
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    job.meta["rq_orchestrator_failure"] = reason
    job.save_meta()
    registry = StartedJobRegistry(job.origin, connection=connection, job_class=type(job), serializer=job.serializer)
    with connection.pipeline() as pipe:
        pipe.lrem(intermediate_key(queue.name), 0, job.id)
        job.set_status(JobStatus.STARTED, pipeline=pipe)  # what rq 2+'s clean-up takes for a job whose worker died
        pipe.zadd(registry.key, {job.id: 1})  # expired long ago
        pipe.execute()
    return _clean_up(registry, job, reason, handlers)


class StrandedJobs:
    """Job ids left in rq's intermediate lists by a pop whose reply never reached a worker.

    That happens when a connection dies between Redis moving the id and the
    worker reading the reply (a Redis restart, a network cut): no worker knows
    the job, and rq itself recovers it only minutes later. An id still there
    after ``grace`` seconds, not started and not held by a live worker of this
    pool, goes back to the front of its queue.
    """

    def __init__(self, queues: Iterable[str], grace: float = 5.0) -> None:
        self.queues = tuple(queues)
        self.grace = grace
        self._first_seen: dict[tuple[str, str], float] = {}

    @property
    def waiting(self) -> bool:
        """Ids seen in an intermediate list and not yet returned to their queue."""
        return bool(self._first_seen)

    def recover(self, connection: Redis, now: float, held: set[str], worker_kwargs: dict[str, Any]) -> None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        with connection.pipeline(transaction=False) as pipe:
            for queue in self.queues:
                pipe.lrange(intermediate_key(queue), 0, -1)
            listed = pipe.execute()
        present = {(q, i.decode() if isinstance(i, bytes) else i) for q, ids in zip(self.queues, listed) for i in ids}
        self._first_seen = {k: self._first_seen.get(k, now) for k in present if k[1] not in held}
        job_class = worker_kwargs.get("job_class") or Job
        for (_queue, job_id), seen in list(self._first_seen.items()):
            if now - seen < self.grace:
                continue
            del self._first_seen[(_queue, job_id)]
            try:
                job = job_class.fetch(job_id, connection=connection, serializer=worker_kwargs.get("serializer"))
            except NoSuchJobError:  # deleted while it waited there: nothing to run, and no id to look at again
                connection.lrem(intermediate_key(_queue), 0, job_id)
                continue
            except Exception:  # noqa: BLE001 - Redis away, or unreadable: looked at again later
                continue
            _requeue_if_never_started(connection, job)


def settle_dead_worker(
    connection: Redis, name: str, queues: Iterable[str], job_id: str | None, reason: str, worker_kwargs: dict[str, Any]
) -> bool:
    """Settle the job and registration of a dead worker; False when Redis could not be reached (retry later)."""
    try:
        unregister_worker(connection, name, queues)
        if job_id:
            settle_job(connection, job_id, reason, worker_kwargs.get("job_class"), worker_kwargs.get("serializer"),
                       worker_kwargs.get("exception_handlers"))
    except RedisError as exc:
        log.debug("could not settle dead worker %s yet: %s", name, exc)
        return False
    except Exception:  # noqa: BLE001 - rq 1.x's clean-up passes on what the job's failure callback raised
        log.exception("job %s of dead worker %s: rq's clean-up failed; the job is left to it", job_id, name)
    return True


def clear_previous_run(connection: Redis, host: str, pool: str, worker_kwargs: dict[str, Any]) -> int:
    """Settle workers a killed earlier run of this pool left registered (same host and pool name).

    Only registrations whose process is gone are touched: a worker of the
    earlier run that still finishes its job is left alone.
    """
    from rq.worker import Worker

    cleared = 0
    for raw in connection.smembers(WORKERS_KEY):
        key = raw.decode() if isinstance(raw, bytes) else raw
        name = key.removeprefix(worker_key(""))
        if not of_pool(name, host, pool) or _process_alive(name):
            continue
        worker = Worker.find_by_key(key, connection=connection, **_lookup_kwargs(worker_kwargs))
        job_id = worker.get_current_job_id() if worker else None
        queues = worker.queue_names() if worker else []
        settle_dead_worker(connection, name, queues, job_id, "left behind by a killed earlier run of this pool",
                           worker_kwargs)
        connection.srem(WORKERS_KEY, key)
        cleared += 1
    if cleared:
        log.warning("cleared %d worker registrations left behind by an earlier run of this pool", cleared)
    return cleared


def _process_alive(worker_name: str) -> bool:
    """Pool worker names carry their pid; is that process still running (a zombie is not)?"""
    parsed = parse_worker_name(worker_name)
    return parsed is None or running(parsed.pid)  # not one of our names: leave it alone


def _lookup_kwargs(worker_kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: worker_kwargs[k] for k in ("job_class", "serializer") if k in worker_kwargs}


def _members(connection: Redis, key: str) -> list[str]:
    return [m.decode() if isinstance(m, bytes) else m for m in connection.zrange(key, 0, -1)]


class Aftercare:
    """What the master owes the jobs of workers that are gone.

    Settles each dead worker's job and registration (and retries, while Redis
    is away, until it can), returns stranded pops, and on start settles what a
    killed earlier run of the same pool left behind.

    Only workers on a single queue pop through rq's intermediate list (BLMOVE),
    so only those queues are looked at: every ``check_every`` seconds from the
    moment a pop may have been cut short (a worker said so, or died) until
    nothing waits there any more, and otherwise every ``safety_every`` seconds.
    """

    def __init__(self, connection: Redis, stranded_queues: Iterable[str], worker_kwargs: dict[str, Any],
                 stop_asked: Callable[[], bool], check_every: float = 2.0, safety_every: float = 60.0) -> None:
        self.connection = connection
        self.worker_kwargs = worker_kwargs
        self._stop_asked = stop_asked
        self._pending: list[tuple[str, tuple[str, ...], str | None, str]] = []
        self._retry_at = 0.0  # monotonic: no settling before (Redis did not answer)
        self._stranded = StrandedJobs(stranded_queues)
        self._check_every = check_every
        self._safety_every = safety_every
        self._next_check = 0.0

    def expect_strands(self, now: float) -> None:
        """A pop may have been cut short: look at the intermediate lists soon."""
        self._next_check = min(self._next_check, now + self._check_every)

    def worker_died(self, name: str, queues: tuple[str, ...], job_id: str | None, reason: str) -> None:
        """Settled by the master's next ``settle_pending``: every worker its reaping found dead, in one errand."""
        self._pending.append((name, queues, job_id, reason))
        self._next_check = 0.0  # killed inside a pop, it may have left one

    @property
    def unsettled_jobs(self) -> list[str]:
        """The jobs of dead workers not settled yet (Redis did not answer). A registration alone is not
        waited for: rq drops a dead worker's once its key expires."""
        return [job_id for _name, _queues, job_id, _reason in self._pending if job_id]

    def settle_pending(self) -> None:
        """Settle the dead workers not settled yet, in one errand; those Redis did not answer for stay pending."""
        if not self._pending or time.monotonic() < self._retry_at:
            return
        pending, self._pending = self._pending, []

        def settle_all(connection: Redis, say: Say) -> None:  # in the errand: a byte a worker as it is done, 1: retry
            for dead in pending:
                say(b"0" if settle_dead_worker(connection, *dead, self.worker_kwargs) else b"1")

        said = self._errand(f"settling {len(pending)} dead workers", settle_all)
        self._pending += [dead for dead, done in zip(pending, said) if done != ord("0")]
        self._pending += pending[len(said):]  # not reached: the errand was cut short; tried again
        self._retry_at = time.monotonic() + RETRY_SECONDS if self._pending else 0.0

    def _errand(self, what: str, task: Callable[[Redis, Say], None]) -> bytes:
        """``task`` in an errand, on a client of its own; what it said."""
        said, why = run_errand(lambda say: task(fresh_copy(self.connection), say), f"rq-orchestrator: aftercare, {what}",
                               SETTLE_SECONDS, self._stop_asked)
        if why:
            log.warning("aftercare, %s: cut short (%s)", what, why)
        return said

    def recover_stranded(self, now: float, held: set[str]) -> None:
        """``held``: the jobs live workers of this pool have reported."""
        if now < self._next_check or not self._stranded.queues:
            return
        self._next_check = now + self._check_every
        try:
            self._stranded.recover(self.connection, now, held, self.worker_kwargs)
        except RedisError:
            return  # the master logs the outage once; look again soon
        if not self._stranded.waiting:
            self._next_check = now + self._safety_every

    def clear_previous_run(self, host: str, pool: str) -> None:
        self._errand("an earlier run's leftovers", lambda connection, say: _clear_previous_run(
            connection, host, pool, self.worker_kwargs))


def _clear_previous_run(connection: Redis, host: str, pool: str, worker_kwargs: dict[str, Any]) -> None:
    try:
        clear_previous_run(connection, host, pool, worker_kwargs)
    except RedisError as exc:
        log.warning("could not look for an earlier run's leftovers: %s", exc)
