"""``--no-fork``: every job runs in the worker process itself, and a job that leaves the process in doubt retires it.

``NoForkMixin`` is composed into the pool's worker class (``pool_worker_class``)
over any RQ worker class. A forking class (``rq.Worker`` and its kin) keeps
its own ``execute_job``: its two fork steps are replaced, ``fork_work_horse``
by nothing and ``monitor_work_horse`` by ``perform_job`` itself, so rq's
bookkeeping is the class's own on every rq version (1.x/2.x call
``monitor_work_horse(job, queue)``, 3.x adds the execution). A class that
already runs jobs itself (``rq.SimpleWorker``, Frappe's ``FrappeWorkerNoFork``)
never calls them and runs as it is. The job's timeout is still rq's death
penalty, SIGALRM in this process. On rq 2/3 the execution's transaction and
the job's prepare go to Redis as one (``round_trips``).

What makes it safe in a pool is what happens after the job: the worker is
retired (``RECYCLE``: the master starts a fresh fork of its clean memory at
once, and this worker exits before it takes another job) when its process is
in doubt (``in_doubt``):

* the job's timeout fired, even if the job caught the exception and returned;
* the job raised a ``BaseException`` that is not an ``Exception``
  (``SystemExit``, ``KeyboardInterrupt``, ``GeneratorExit``: code that meant
  to end the process, or a cold stop's ``SystemExit`` landing in the job);
* the job raised ``MemoryError`` (the heap may be left half-built);
* an exception handler of the worker raised (Frappe's no-fork handler raises
  ``StopRequested`` on a timeout, which on rq 2.x/3.x would skip the job's
  failure handling: here the job is failed first, then the worker retires).

An ordinary exception fails the job and the worker goes on, as a forked work
process's would. ``--max-jobs-per-worker`` / ``--max-memory-per-worker`` recycle
as in fork mode, now measuring what the jobs left in the worker itself. A
job blocked where SIGALRM cannot reach it is the master's stuck-worker kill
(timeout + ``--stuck-margin``); a worker killed mid-job has its job settled by
the master (``master.dead_workers``), as in fork mode.
"""

from __future__ import annotations

from typing import Any

from rq.worker import SimpleWorker

from .events import RECYCLE
from .mixins import with_mixin
from .round_trips import CarryMixin, HoldMixin, pipelines_of

IN_DOUBT = "in doubt"  # how a RECYCLE reason of this rule starts (the master counts it apart)


def in_doubt(exc: BaseException | None) -> str | None:
    """Why a job's exception leaves the process that ran it in doubt, or None when the worker may go on."""
    if exc is None or isinstance(exc, Exception) and not isinstance(exc, MemoryError):
        return None
    return f"the job raised {type(exc).__name__}"


class TimeoutWatch:
    """Whether a death penalty fired in this process since the last reset (one worker a process)."""

    fired = False


timeout_watch = TimeoutWatch()


class WatchedPenaltyMixin:
    """A death penalty that notes it fired before it raises into the job."""

    def handle_death_penalty(self, *args: Any) -> Any:
        timeout_watch.fired = True
        return super().handle_death_penalty(*args)  # type: ignore[misc]


def watched_penalty_class(penalty_class: type) -> type:
    """The subclass of ``penalty_class`` that notes its firing (one per class, cached)."""
    return with_mixin(WatchedPenaltyMixin, penalty_class)


class NoForkMixin:
    """Runs each job in this process; retires the worker after a job that left the process in doubt."""

    _no_fork_doubt: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.death_penalty_class = watched_penalty_class(self.death_penalty_class)  # type: ignore[has-type]

    def execute_job(self, job: Any, queue: Any) -> Any:
        timeout_watch.fired, self._no_fork_doubt = False, None
        result = super().execute_job(job, queue)  # type: ignore[misc]
        reason = "its timeout fired" if timeout_watch.fired else self._no_fork_doubt
        if reason is not None and not self._stop_requested:  # type: ignore[has-type]
            self._no_fork_retire(job, reason)  # (a worker told to stop leaves after this job anyway)
        return result

    def prepare_execution(self, job: Any) -> Any:
        """rq 2/3 (1.x has none): the execution's transaction waits to go with the job's prepare (``round_trips``)."""
        with pipelines_of(self.connection, HoldMixin, held_for=job.id):  # type: ignore[attr-defined]
            return super().prepare_execution(job)  # type: ignore[misc]

    def prepare_job_execution(self, job: Any, *args: Any, **kwargs: Any) -> None:
        with pipelines_of(self.connection, CarryMixin, held_for=job.id):  # type: ignore[attr-defined]
            super().prepare_job_execution(job, *args, **kwargs)  # type: ignore[misc]

    def fork_work_horse(self, job: Any, queue: Any) -> None:
        """No work process: the job runs in ``monitor_work_horse``, here."""

    def monitor_work_horse(self, job: Any, queue: Any, *execution: Any) -> None:
        self.perform_job(job, queue, *execution)  # type: ignore[attr-defined]

    def get_heartbeat_ttl(self, job: Any, *args: Any) -> int:
        """Nobody heartbeats while the job runs: the worker's key must outlive the job's timeout (rq's SimpleWorker's rule)."""
        return int(SimpleWorker.get_heartbeat_ttl(self, job))  # type: ignore[arg-type]

    def handle_exception(self, job: Any, *exc_info: Any) -> None:
        self._no_fork_doubt = self._no_fork_doubt or in_doubt(exc_info[1])
        try:
            super().handle_exception(job, *exc_info)  # type: ignore[misc]
        except Exception as exc:  # noqa: BLE001 - the job's failure must still be recorded: retire instead
            self._no_fork_doubt = f"an exception handler raised {type(exc).__name__}"

    def _no_fork_retire(self, job: Any, reason: str) -> None:
        """After the job: tell the master to start a fresh worker now, and leave before taking another job."""
        text = f"{IN_DOUBT}: job {job.id}: {reason}"
        self.log.warning("Worker %s: retiring, %s", self.name, text)  # type: ignore[attr-defined]
        self._pool_send(RECYCLE, text)  # type: ignore[attr-defined]
        self._stop_requested = True
