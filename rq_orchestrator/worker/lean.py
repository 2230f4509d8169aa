"""Fewer Redis round trips between jobs: rq's repeated heartbeats, state writes and suspension looks, coalesced.

Between two jobs rq (1.15 to 3.x) sends the worker's heartbeat three to five
times (before and after each pop, after each job), writes the state ``idle``
twice, and asks Redis whether workers are suspended, each in a round trip of
its own. For a job that returns at once, run in the worker (``--no-fork``),
rq's bookkeeping is most of the cost.

Here:

* the worker key's time to live is never set below rq's idle one
  (``worker_ttl`` + 60 s; rq sets a shorter one for a short job, after which
  the next heartbeat would lengthen it again);
* a heartbeat within ``COALESCE`` seconds of the last one that would not
  lengthen that time to live is dropped (the key keeps at least that long to
  live, less at most ``COALESCE``, against rq's TTLs of minutes);
* a state write that repeats the state this worker last wrote itself is
  dropped (only the worker writes its state; a write inside a pipeline is
  always made, and forgets the last);
* the suspension look is not repeated within ``COALESCE`` seconds
  (``rq suspend`` takes effect at most ``COALESCE`` later; a job in hand is
  never affected, as in rq);
* the state ``busy``, which rq 1.x writes alone just before the job's prepare
  transaction, is written in that transaction, next to the job's id (one
  round trip less; rq 2.x/3.x write it there themselves);
* the state ``idle`` after a job that ran in the worker itself (``--no-fork``,
  ``SimpleWorker``) is written in the job's success transaction, not alone
  after it; if that transaction fails (Redis went away), rq's own write
  follows and fails too, and the worker dies with the job in hand, which the
  master then settles (a failed job keeps rq's own write: rq ignores a
  failure to record that end, and only the write after it would tell);
* a job that returned, with no success callback to run, skips rq's job
  heartbeat that guards the callback (``LeanJobMixin``): one or two round
  trips (rq 1.x also moves the job in the started registry) for a write that
  the job's success transaction follows at once;
* the job's success transaction, with rq's WATCH and read of the job's
  dependents before it, is one script when the job has none (``round_trips``):
  one round trip for three;
* rq 1.x/2.x's PERSIST of the job's key, sent alone as the job starts, goes
  with the prepare transaction (rq 3 sends it there itself).

So a job that returns costs three round trips on rq 1.x/2.x (pop and read,
prepare, end) where rq sends six or more.

What monitors read (``last_heartbeat``) is at most ``COALESCE`` old;
busy/idle changes are always written.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rq.utils import as_text
from rq.version import VERSION as rq_version
from rq.worker import Worker, WorkerStatus

from .mixins import with_mixin
from .round_trips import OneTripMixin, pipelines_of, undo_of

COALESCE = 1.0  # seconds
BUSY_WITH_JOB_ID = hasattr(Worker, "set_current_job_id")  # rq 1.x/2.x name the job in its own write (3.x: no such call)


class LeanBookkeepingMixin:
    """Drops rq's bookkeeping writes that repeat one made less than COALESCE seconds ago."""

    _lean_beat_at: float = float("-inf")
    _lean_beat_ttl: int = 0
    _lean_state: str | None = None
    _lean_suspension_at: float = float("-inf")
    _lean_pending_busy = False  # `busy` set, to be written with the job's prepare transaction
    _lean_idle_with_end = False  # `idle` added to the job's success transaction

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        idle_ttl = self.worker_ttl + 60  # type: ignore[attr-defined] # rq's own default, every version
        ttl = max(timeout or idle_ttl, idle_ttl)
        now = time.monotonic()
        if pipeline is None and now - self._lean_beat_at < COALESCE and ttl <= self._lean_beat_ttl:
            return
        super().heartbeat(ttl, pipeline)  # type: ignore[misc]
        self._lean_beat_at, self._lean_beat_ttl = now, ttl

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == WorkerStatus.BUSY and BUSY_WITH_JOB_ID:
            # rq 1.x/2.x: written with the job's id in its prepare transaction (set_current_job_id, below)
            self._state, self._lean_pending_busy, self._lean_state = state, True, None
            return
        if pipeline is None and state == self._lean_state:
            self._state = state
            return
        super().set_state(state, pipeline)  # type: ignore[misc]
        self._lean_pending_busy, self._lean_state = False, state if pipeline is None else None

    def set_current_job_id(self, job_id: str | None, pipeline: Any = None) -> None:
        """rq 1.x/2.x's prepare transaction names the job first: the deferred ``busy`` goes with it (no such call in 3.x)."""
        if pipeline is not None and job_id is not None and self._lean_pending_busy:
            self.set_state(WorkerStatus.BUSY, pipeline)
        super().set_current_job_id(job_id, pipeline=pipeline)  # type: ignore[misc]

    def increment_successful_job_count(self, pipeline: Any = None) -> None:
        """Called inside a job's success transaction: where the job ran in this process, ``idle`` goes with it."""
        super().increment_successful_job_count(pipeline=pipeline)  # type: ignore[misc]
        if pipeline is not None and not getattr(self, "_is_horse", False):
            super().set_state(WorkerStatus.IDLE, pipeline)  # type: ignore[misc]
            self._lean_idle_with_end = True

    def handle_job_success(self, *args: Any, **kwargs: Any) -> Any:
        self._lean_idle_with_end = False
        job = kwargs["job"] if "job" in kwargs else args[0]
        with pipelines_of(self.connection, OneTripMixin, undo=undo_of(self, job)):  # type: ignore[attr-defined]
            result = super().handle_job_success(*args, **kwargs)  # type: ignore[misc]
        if self._lean_idle_with_end:  # the transaction ran: rq's lone `idle` after the job repeats it
            self._lean_pending_busy, self._lean_state = False, WorkerStatus.IDLE
        return result

    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        if now - self._lean_suspension_at < COALESCE:
            return
        super().check_for_suspension(burst)  # type: ignore[misc]
        self._lean_suspension_at = time.monotonic()


class Prefetched:
    """The hash of the job just popped, read in the pop's round trip (``idle_wait``): rq's fetch of it takes it from here."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.fields: dict[Any, Any] = {}

    def keep(self, key: str, fields: dict[Any, Any]) -> None:
        self.key, self.fields = key, fields

    def take(self, key: str) -> dict[Any, Any] | None:
        """The fields read for ``key`` (once; None if another job's or none were read)."""
        if key != self.key:
            return None
        fields, self.key, self.fields = self.fields, None, {}
        return fields


prefetched = Prefetched()  # one per process


PERSIST_IN_PERFORM = int(rq_version.split(".")[0]) < 3  # rq 3 persists the job's key in prepare's transaction


class KeyPersisted:
    """A job's client while rq's perform starts: its PERSIST of the job's key was sent with prepare's transaction."""

    def __init__(self, client: Any, key: Any) -> None:
        self.client, self.key = client, key

    def persist(self, name: Any) -> Any:
        return True if name == self.key else self.client.persist(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


class LeanJobMixin:
    """A job read with its pop, persisted by its prepare transaction, without rq's heartbeat before a missing callback.

    rq writes that heartbeat (and on 1.x the started registry's new deadline)
    so that the job is not taken for abandoned while its callback runs; the
    job's success transaction, which takes it out of that registry, follows it
    at once. A job that raised keeps its heartbeat before the failure callback.
    """

    def refresh(self) -> None:
        fields = prefetched.take(as_text(self.key))  # type: ignore[attr-defined]
        if not fields:  # not read with the pop, or gone: rq's own read (and its NoSuchJobError)
            super().refresh()  # type: ignore[misc]
            return
        self.restore(fields)  # type: ignore[attr-defined]

    _lean_returned = False
    _lean_persisted = False  # rq 1.x/2.x: the PERSIST that perform sends went with the prepare transaction

    def prepare_for_execution(self, worker_name: str, pipeline: Any) -> Any:
        result = super().prepare_for_execution(worker_name, pipeline)  # type: ignore[misc]
        if PERSIST_IN_PERFORM:
            pipeline.persist(self.key)  # type: ignore[attr-defined]
            self._lean_persisted = True
        return result

    def perform(self) -> Any:
        if self._lean_persisted:  # until the job's own code runs (_execute), rq's PERSIST is a no-op
            self.connection = KeyPersisted(self.connection, self.key)  # type: ignore[has-type,attr-defined]
        try:
            result = super().perform()  # type: ignore[misc]
        finally:
            self._lean_unwrap()
        self._lean_returned = True
        return result

    def _execute(self) -> Any:
        self._lean_unwrap()
        return super()._execute()  # type: ignore[misc]

    def _lean_unwrap(self) -> None:
        if isinstance(self.connection, KeyPersisted):  # type: ignore[has-type]
            self.connection = self.connection.client
        self._lean_persisted = False

    def heartbeat(self, timestamp: datetime, ttl: int, pipeline: Any = None, xx: bool = False) -> None:
        # The callback's name, not rq's property: that imports the callback, and one that cannot be imported
        # is rq's to report (as the job's failure), not this heartbeat's.
        if pipeline is None and self._lean_returned and not self._success_callback_name:  # type: ignore[attr-defined]
            self.last_heartbeat = timestamp
            return
        super().heartbeat(timestamp, ttl, pipeline=pipeline, xx=xx)  # type: ignore[misc]


def lean_job_class(job_class: type) -> type:
    """The subclass of ``job_class`` with ``LeanJobMixin`` (one per class, cached; made in the master)."""
    return with_mixin(LeanJobMixin, job_class)
