"""What runs inside a forked worker.

``pool_worker_class`` wraps any RQ worker class (``rq.Worker``, Frappe's, a
user's) in a subclass that:

* reports busy/idle to the master through the event pipe (exact utilization);
* never loses a job to a stop request: rq raises ``StopRequested`` from its
  signal handler when the worker looks idle, which can land after BLPOP popped
  a job but before the worker marks itself busy. Here a stop only sets a flag
  and ends the idle wait safely (``idle_wait``): the worker blocks on
  Redis for rq's whole ``dequeue_timeout``, not in one-second polls;
* starts no pubsub thread, so no thread is alive when the worker forks the
  process that runs a job (the cause of Frappe's pool deadlocks);
* stops when the master dies (the parent-death signal ends its wait, and a
  parent-pid check runs between waits), after finishing the job it is running.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError, ResponseError, TimeoutError as RedisTimeoutError

try:
    from rq.exceptions import StopRequested
except ImportError:  # rq < 2
    from rq.worker import StopRequested

from ..infra.connection import share_server_version
from ..infra.keys import wake_key
from .events import BUSY, FAILED, IDLE, MODULE, READY, RECYCLE, STOPPED, STRANDED, EventWriter
from .idle_wait import idle_wait, wakeable_queue_class
from .lean import LeanBookkeepingMixin, lean_job_class
from .no_fork import NoForkMixin
from .mailbox import KILL_HORSE, SIGNAL as COMMAND_SIGNAL, STOP_JOB, Mailbox
from ..infra.memory import resident_memory

try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # the `process` extra is not installed: process titles stay as they are
    _setproctitle = None

PR_SET_PDEATHSIG = 1


def _libc_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


# Looked up once, here, in the master: done in each child, the lookup (new ctypes
# classes and objects; a failed import of setproctitle scans sys.path) costs every
# worker 150-400 kB of private memory.
_prctl = _libc_prctl()


def set_parent_death_signal(signum: int) -> None:
    """Ask Linux to send ``signum`` when our parent dies (no-op elsewhere)."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)


COLD_STOP = "cold stop: the worker was stopped without waiting for its job"
MAX_JOBS = "max jobs"  # how a RECYCLE reason for --max-jobs-per-worker starts (the master counts it apart)


class PoolWorkerMixin:
    """Behaviour every pool worker gets on top of its RQ worker class."""

    pool_events: EventWriter | None = None
    pool_master_pid: int = 0
    pool_max_jobs: int | None = None
    pool_max_memory: int | None = None
    pool_poll_seconds: float | None = None  # one idle wait's length; None: rq's dequeue_timeout (~400 s)
    pool_polls_left: int | None = None  # stop after this many empty waits (the master's rehearsal)
    pool_mailbox: Mailbox | None = None
    pool_mailbox_slot: int | None = None
    pool_job_module: Callable[[Any], str | None] | None = None  # fork mode: which module a job's code is in
    _pool_stop_at: float = 0.0
    _pool_cold_pending = False
    _pool_jobs_done: int = 0
    _pool_job_id: str | None = None  # the job in hand, for rq's stop-job command

    # -- job accounting ---------------------------------------------------
    def execute_job(self, job: Any, queue: Any) -> Any:
        # No `finally`: if execution raises, rq's loop quits and the master,
        # still seeing the job held, settles it when the worker exits.
        result = super().execute_job(job, queue)  # type: ignore[misc]
        self._pool_job_id = None
        self._pool_send(IDLE, job.id)
        self._pool_jobs_done += 1
        self._pool_check_recycle()
        return result

    def handle_job_failure(self, job: Any, *args: Any, **kwargs: Any) -> Any:
        # Runs in the job's process (an exception in the job), or in the worker when
        # that process died or timed out: either way before the worker's IDLE.
        stopped = getattr(self, "_stopped_job_id", None) == job.id  # rq marks it stopped, not failed
        self._pool_send(STOPPED if stopped else FAILED, job.id)
        return super().handle_job_failure(job, *args, **kwargs)  # type: ignore[misc]

    def _pool_check_recycle(self) -> None:
        """Between jobs: exit (warm) once the job count or memory limit is reached."""
        reason = None
        if self.pool_max_jobs is not None and self._pool_jobs_done >= self.pool_max_jobs:
            reason = f"{MAX_JOBS}: {self._pool_jobs_done} done"
        elif self.pool_max_memory is not None:
            rss = resident_memory()
            if rss is not None and rss > self.pool_max_memory:
                reason = f"resident memory {rss // 2**20} MiB over the limit"
        if reason and not self._stop_requested:  # type: ignore[has-type]
            self.log.info("Worker %s: recycling: %s", self.name, reason)  # type: ignore[attr-defined]
            self._pool_send(RECYCLE, reason)
            self._stop_requested = True

    @property
    def should_run_maintenance_tasks(self) -> bool:
        return False  # the master cleans the registries for all its workers (maintenance.py)

    # -- waiting for jobs without losing one ------------------------------
    _pool_beat_failed = False  # the last heartbeat could not reach Redis

    def heartbeat(self, timeout: Any = None, pipeline: Any = None) -> None:
        """Ends rq's wait for a lost Redis once a stop is asked for.

        rq's wait retries a heartbeat that fails for want of Redis, sleeping
        between tries (up to a minute), and looks at no stop meanwhile. A retry
        comes only after a failed heartbeat and before the pop, so no job is in
        hand there: ``StopRequested`` ends the wait, and rq's loop ends cleanly.
        """
        if pipeline is None and self._pool_beat_failed and self._stop_requested:  # type: ignore[has-type]
            raise StopRequested()
        try:
            super().heartbeat(timeout, pipeline)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError):
            self._pool_beat_failed = pipeline is None
            raise
        self._pool_beat_failed = False

    def dequeue_job_and_maintain_ttl(self, timeout: Any, max_idle_time: Any = None) -> Any:
        if timeout is None:  # burst mode: one non-blocking look, as rq does
            return self._pool_took(super().dequeue_job_and_maintain_ttl(timeout, max_idle_time))  # type: ignore[misc]
        while not self._stop_requested and not self.pool_orphaned():  # type: ignore[attr-defined]
            # max_idle_time makes rq return None after one empty wait (rq heartbeats
            # between waits); a stop ends a wait at once (idle_wait), with or without a job.
            wait = self.pool_poll_seconds or timeout
            result = super().dequeue_job_and_maintain_ttl(wait, wait)  # type: ignore[misc]
            if result is not None:
                return self._pool_took(result)
            if self.pool_polls_left is not None:
                self.pool_polls_left -= 1
                if self.pool_polls_left <= 0:
                    break
        self._stop_requested = True
        return None

    def _pool_took(self, result: Any) -> Any:
        """Tell the master the moment a job is in hand, so it knows the job if this worker dies."""
        idle_wait.taking = False
        if result is not None:
            job = result[0]
            self._pool_job_id = job.id
            self._pool_send(BUSY, job.id, job.timeout)
            if self._pool_cold_pending:
                raise SystemExit(1)  # the cold stop that came while the job was taken: the master puts it back
        return result

    def perform_job(self, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
        """In fork mode this runs in the job's process: after the job, name its module to the master if it was new here.

        Here, not in the worker: reading the job's module means reading its
        data, which the job's process does anyway and the worker never should
        (a large argument would stay in the worker's memory).
        """
        name = self._pool_module_of(job)
        new = name is not None and name not in sys.modules
        result = super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
        if new:
            self._pool_send(MODULE, name)
        return result

    def _pool_module_of(self, job: Any) -> str | None:
        if self.pool_job_module is None:
            return None
        try:
            return self.pool_job_module(job)
        except Exception:  # noqa: BLE001 - data that cannot be read: rq fails the job on it, as it would
            return None

    def pool_orphaned(self) -> bool:
        return bool(self.pool_master_pid) and os.getppid() != self.pool_master_pid

    # -- stopping ---------------------------------------------------------
    def request_stop(self, signum: int, frame: Any) -> None:
        """Warm stop: finish the job in hand (if any), then exit. Never raises."""
        self._pool_stop_at = time.monotonic()
        signal.signal(signal.SIGINT, self.request_force_stop)
        signal.signal(signal.SIGTERM, self.request_force_stop)
        self._stop_requested = True
        idle_wait.wake()
        # Last: it logs, and a handler that lands inside a write to the same stream raises there.
        self.handle_warm_shutdown_request()  # type: ignore[attr-defined]

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """Cold stop: kill the running job and exit, as rq does.

        A terminal's Ctrl+C reaches the worker and the master at once, and the
        master then forwards a stop: a second TERM/INT within a second of the
        first is that same request, not an escalation. The master's own cold
        stop is QUIT.
        """
        if signum in (signal.SIGINT, signal.SIGTERM) and time.monotonic() - self._pool_stop_at < 1.0:
            return
        if signum == signal.SIGTERM and self.pool_orphaned():
            return  # the parent-death signal of a retiring worker: the master is gone, the job is finished warm
        if idle_wait.waiting or idle_wait.taking:  # nothing in hand, or a popped job the master does not know yet
            self._stop_requested = True
            self._pool_cold_pending |= idle_wait.taking  # cold once the master knows the job (it is in no list now)
            idle_wait.wake()
            return
        # The SystemExit below is lost where this handler lands in a finalizer (Python
        # prints it and goes on): then the stop is still asked for, and the worker leaves
        # at its next look (its job, if any, finished), instead of waiting on for a job.
        self._stop_requested = True
        idle_wait.wake()
        self.log.warning("Worker %s: cold shut down", self.name)  # type: ignore[attr-defined]
        if getattr(self, "horse_pid", 0):
            self.kill_horse()  # type: ignore[attr-defined]
            self.wait_for_horse()  # type: ignore[attr-defined]
        raise SystemExit(COLD_STOP)  # exit status 1; what a --no-fork job that it lands in fails with

    def _install_signal_handlers(self) -> None:
        """rq's handlers and the pool's; then READY: registered (rq's work() installs them after its
        bootstrap), and a stop the master sends from now on is warm, not the default TERM that kills."""
        super()._install_signal_handlers()  # type: ignore[misc]
        signal.signal(signal.SIGQUIT, self.request_force_stop)
        if self.pool_mailbox is not None:
            signal.signal(COMMAND_SIGNAL, self._pool_command)
        self._pool_send(READY)

    def _pool_command(self, signum: int, frame: Any) -> None:
        """rq's stop-job or kill-horse, relayed by the master: kill the work process of the job named, as rq does."""
        assert self.pool_mailbox is not None and self.pool_mailbox_slot is not None
        message = self.pool_mailbox.read(self.pool_mailbox_slot)
        if message is None or not getattr(self, "horse_pid", 0):
            return  # nothing readable, or no work process (between jobs, or a worker that runs jobs itself)
        command, job_id = message
        if job_id != self._pool_job_id:
            return  # that job ended; this one is another
        if command == STOP_JOB:
            self._stopped_job_id = job_id  # rq then ends the job as stopped, not failed
        self.kill_horse()  # type: ignore[attr-defined]

    def kill_horse(self, sig: int = signal.SIGKILL) -> None:
        """rq kills the work process's group, which that process makes its own only once it runs.

        Until then (just forked) its group is still the pool's: killing the
        group would kill the master and every worker. Such a process is killed
        alone; it has started nothing of its own yet.
        """
        pid = getattr(self, "horse_pid", 0)
        if not pid:
            return  # no work process (rq's kill would take getpgid(0): this worker's own group)
        try:
            if os.getpgid(pid) == os.getpgrp():
                os.kill(pid, sig)
                return
        except ProcessLookupError:
            return  # already gone, as rq's own kill allows
        super().kill_horse(sig)  # type: ignore[misc]

    def setup_work_horse_signals(self) -> None:
        super().setup_work_horse_signals()  # type: ignore[misc]
        # The job process dies with its worker, so the master can settle the
        # job of a worker that was killed without a job still writing to it.
        set_parent_death_signal(signal.SIGKILL)

    # -- no pubsub thread -------------------------------------------------
    def subscribe(self) -> None:
        self.pubsub = None
        self.pubsub_thread = None

    def unsubscribe(self) -> None:
        pass

    def _pool_send(self, kind: str, job_id: str | None = None, timeout: float | None = None) -> None:
        if self.pool_events is not None:
            self.pool_events.send(kind, job_id, timeout)


_wrapped: dict[tuple[type, bool], type] = {}


def pool_worker_class(worker_class: type, no_fork: bool = False) -> type:
    """The pool's subclass of ``worker_class`` (one per class and mode, cached); ``no_fork``: jobs run in the worker."""
    if (worker_class, no_fork) not in _wrapped:
        modes = (NoForkMixin,) if no_fork else ()
        bases = (PoolWorkerMixin, LeanBookkeepingMixin, *modes, worker_class)
        _wrapped[worker_class, no_fork] = type(worker_class.__name__, bases, {})
    return _wrapped[worker_class, no_fork]


def build_worker(
    worker_class: type,
    queues: Sequence[str],
    worker_kwargs: dict[str, Any],
    connection: Any,
    server_version: tuple[int, ...] | None = None,
    no_fork: bool = False,
) -> Any:
    """The worker a child will run, made in the master just before the fork.

    Built with ``prepare_for_work=False`` (as rq's own ``Worker.all()`` builds
    workers), the constructor neither talks to Redis nor records this
    process's pid; ``prepare_for_work`` does that part in the child. What the
    constructor creates and touches (queues, serializer, the first run of its
    code) is then written once, in the master, and shared by the child,
    instead of being copied into every worker. ``server_version``, the
    master's answer, spares each worker rq's INFO request at registration.
    """
    cls = pool_worker_class(worker_class, no_fork)
    worker = cls(list(queues), connection=connection, prepare_for_work=False, **worker_kwargs)
    worker.queue_class = wakeable_queue_class(worker.queue_class)
    worker.job_class = lean_job_class(worker.job_class)
    if server_version is not None:
        share_server_version(connection, server_version)
        worker.redis_server_version = server_version
    return worker


def prepare_for_work(worker: Any, name: str) -> None:
    """In the child: what rq's constructor does for a worker about to work (name, host, pid, address)."""
    worker.name = name
    worker.hostname = socket.gethostname()
    worker.pid = os.getpid()
    worker.ip_address = client_address(worker.connection, name)


def client_address(connection: Any, name: str) -> str:
    """Name this connection's Redis client, and return its address as Redis sees it ("unknown" if it won't say).

    CLIENT INFO (Redis 6.2+) describes only this client; older servers list
    every client (rq's way on all versions before 3.0).
    """
    try:
        connection.client_setname(name)
    except ResponseError:
        return "unknown"
    try:
        return str(connection.client_info()["addr"])
    except ResponseError:
        pass
    addresses = [client["addr"] for client in connection.client_list() if client.get("name") == name]
    return addresses[0] if addresses else "unknown"


@dataclass(frozen=True)
class WorkerLaunch:
    """What a child needs, besides its worker, to start working."""

    name: str
    queues: tuple[str, ...]
    burst: bool
    logging_level: str
    dequeue_strategy: str
    events_fd: int
    master_pid: int
    max_jobs: int | None = None
    max_memory: int | None = None
    mailbox: Mailbox | None = None  # where the master leaves rq's commands for this worker (SIGUSR1)
    mailbox_slot: int | None = None
    job_module: Callable[[Any], str | None] | None = None  # fork mode: what tells a job's module (job_module.py)


def run_worker(launch: WorkerLaunch, worker: Any) -> int:
    """Body of a forked child: finish preparing the worker (``build_worker``) and work until told to stop."""
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != launch.master_pid:  # the master died before prctl took effect
        return 0
    set_process_title(f"rq-orchestrator: worker {launch.name} [{','.join(launch.queues)}]")
    prepare_for_work(worker, launch.name)
    idle_wait.arm(wake_key(launch.name), worker.connection, lambda: worker._pool_send(STRANDED))
    worker.pool_events = EventWriter(launch.events_fd)
    worker.pool_master_pid = launch.master_pid
    worker.pool_max_jobs = launch.max_jobs
    worker.pool_max_memory = launch.max_memory
    worker.pool_mailbox, worker.pool_mailbox_slot = launch.mailbox, launch.mailbox_slot
    worker.pool_job_module = launch.job_module
    worker.work(burst=launch.burst, logging_level=launch.logging_level, with_scheduler=False,
                dequeue_strategy=launch.dequeue_strategy)
    return 0


def set_process_title(title: str) -> None:
    if _setproctitle is not None:
        _setproctitle(title)
