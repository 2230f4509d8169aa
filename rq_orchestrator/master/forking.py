"""How the master forks: rounds of workers built before the fork, and any child that must drop the master's state.

A mixin of the master (``pool.Pool``), which owns the state it reads: the
groups, the cluster leases, the mailbox, the selector and pipes a child must
close. Kept apart because forking has rules of its own: everything a child
shares is built before the first fork of a round, nothing is written between
two forks, the master's signals are blocked across each fork and looked at
between two, and no thread may run in the master at a fork.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from ..infra.connection import fresh_copy
from ..policy.group import WorkerGroup
from ..worker.job_module import rq_job_module
from ..worker.process import WorkerLaunch, build_worker, run_worker
from .service_child import run_service
from .worker_names import worker_name

if TYPE_CHECKING:
    import selectors

    from redis import Redis

    from ..infra.config import PoolConfig
    from ..worker.mailbox import Mailbox
    from .cluster import ClusterLeases
    from .learning import ModuleLearner
    from .metrics import MetricsServer
    from .rq_commands import CommandRelay
    from .service_child import ServiceChildren
    from .state import StatePublisher

log = logging.getLogger("rq_orchestrator")

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGCHLD,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
ROUND_SIZE = 16  # most workers built and forked back to back; a stop is looked for between forks

class PoolError(RuntimeError):
    """The pool cannot go on (e.g. workers fail at start-up)."""


class PlannedWorker(NamedTuple):
    """A worker about to be forked: its group, slot and cluster lease, and the worker object built for it."""

    group: WorkerGroup
    slot: int
    lease: str | None
    worker: Any
    mailbox: int | None  # its slot in the master's mailbox for rq's commands


class ForkingMixin:
    """The master's forks (see the module); the attributes below, and ``_retire``, are the master's."""

    config: PoolConfig
    learner: ModuleLearner | None
    groups: list[WorkerGroup]
    clock: Callable[[], float]
    host: str
    pid: int
    worker_class: type
    worker_connection: Redis
    leases: ClusterLeases | None
    mailbox: Mailbox
    services: ServiceChildren
    state: StatePublisher
    metrics: MetricsServer | None
    relay: CommandRelay
    _selector: selectors.BaseSelector
    _signals: list[int]
    _stopping: bool
    _drained: set[str]
    _respawn_at: float
    _server_version: tuple[int, ...] | None
    _owner: dict[int, WorkerGroup]
    _lease_of: dict[int, str]
    _mailbox_of: dict[int, int]
    _wake_r: int
    _wake_w: int
    _events_r: int
    _events_w: int

    def _spawn_missing(self) -> None:
        """Fork every group's deficit, a round of at most ROUND_SIZE at a time, until a stop is asked for."""
        self._start_services()
        while not self._stopping and self.clock() >= self._respawn_at:
            if not self._fork(self._plan_missing()) or self._stop_asked():
                return

    def _start_services(self) -> None:
        """Fork every service child that is due: at the start, and after its back-off when it ended."""
        for child in self.services.due(self.clock()):
            if self._stopping or self._stop_asked():
                return
            self._refuse_threads()
            sys.stdout.flush()
            sys.stderr.flush()
            child.started(self._fork_child(lambda: run_service(child.spec, self.pid)), self.clock())
            log.info("service %s: pid %d", child.spec.name, child.pid)
            self.state.mark_dirty()

    def _stop_asked(self) -> bool:
        """A TERM, INT or QUIT came and the loop has not handled it yet."""
        return any(signum in STOP_SIGNALS for signum in self._signals)

    def _plan_missing(self) -> list[PlannedWorker]:
        """The next round to fork: each group's deficit, as far as --max-workers-total, the cluster and ROUND_SIZE allow.

        In burst mode a group that is done (``_drained``) gets no more workers. A group
        below its minimum comes first: under --max-workers-total, a slot its own
        leaving worker freed must not go to another group's growth first.
        """
        planned: list[PlannedWorker] = []
        try:
            for group in sorted(self.groups, key=lambda g: len(g.active) >= g.policy.settings.min_workers):
                if group.name in self._drained:
                    continue
                for slot in group.free_slots(min(group.deficit, ROUND_SIZE - len(planned))):
                    if not self._room_for_one_more(group, len(planned)):
                        break
                    plan = self._plan(group, slot)
                    if plan is None:
                        return planned  # the cluster is full: try again next loop
                    planned.append(plan)
        except PoolError:
            self._give_back(planned)  # the pool stops: its cluster slots are free at once, not after their TTL
            raise
        return planned

    def _room_for_one_more(self, needy: WorkerGroup, pending: int) -> bool:
        """Under --max-workers-total, a worker for ``needy`` (after ``pending`` others) if the cap allows; else make room."""
        if self._below_total_cap(pending):
            return True
        self._move_capacity_to(needy)
        return False

    def _below_total_cap(self, pending: int = 0) -> bool:
        """Room for one more worker under --max-workers-total (none set: always), after ``pending`` others."""
        cap = self.config.max_workers_total
        return cap is None or len(self._owner) + pending < cap

    def _move_capacity_to(self, needy: WorkerGroup) -> None:
        """Retire an idle worker of a quiet group for one that waits.

        Quiet as the group would retire one itself: below half its threshold and
        above its minimum, with a ready idle worker. Below the threshold alone, a
        group that had just grown (its new worker idle, its utilization divided by
        one more) gave that worker away and was busy again.
        """
        if any(w.retiring and not w.keeps_place for g in self.groups for w in g.workers.values()):
            return  # a worker is already on its way out: its slot comes free soon (one keeping its place: not)
        now = self.clock()
        donors = [
            g for g in self.groups
            if g is not needy and g.waiting and g.capacity > g.policy.settings.min_workers
            and g.utilization(now) < g.policy.settings.utilization_threshold / 2
        ]
        if not donors:
            return
        donor = min(donors, key=lambda g: g.utilization(now))
        for key in donor.resize_to(donor.capacity - 1):  # above its minimum, with an idle worker: that one goes
            worker = donor.workers[key]
            log.info("capacity moves: group %s gives worker %s to group %s (--max-workers-total %d)",
                     donor.name, worker.name, needy.name, self.config.max_workers_total)
            self._retire(donor, worker)

    def _build_worker(self, group: WorkerGroup) -> Any:
        """A worker for ``group``, made before the fork (see ``build_worker``), with a client of its own.

        Built in the master, the client's objects (connection pool, response
        callbacks) and the worker's are shared by the child instead of copied into it.
        """
        client = fresh_copy(self.worker_connection)
        try:
            return build_worker(self.worker_class, group.queues, self.config.worker_kwargs, client,
                                self._server_version, self.config.no_fork)
        except Exception as exc:  # noqa: BLE001 - the class's own constructor: any error stops the pool, in one line
            cls = self.worker_class
            raise PoolError(f"cannot build a worker of class {cls.__module__}.{cls.__qualname__}: "
                            f"{type(exc).__name__}: {exc}") from None

    def _plan(self, group: WorkerGroup, slot: int) -> PlannedWorker | None:
        """A worker for ``slot`` of ``group``, built, with its cluster lease; None when the cluster is full."""
        self._refuse_threads()
        lease = self.leases.acquire() if self.leases is not None else None
        if self.leases is not None and lease is None:
            return None
        try:
            worker = self._build_worker(group)
        except PoolError:
            if lease is not None:
                self.leases.release(lease)  # type: ignore[union-attr]
            raise
        return PlannedWorker(group, slot, lease, worker, self.mailbox.take())

    def _give_back(self, planned: list[PlannedWorker]) -> None:
        """Planned workers not forked: their cluster leases and mailbox slots are free again."""
        for plan in planned:
            if plan.lease is not None and self.leases is not None:
                self.leases.release(plan.lease)
            if plan.mailbox is not None:
                self.mailbox.give_back(plan.mailbox)

    def _refuse_threads(self) -> None:
        threads = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        if threads:
            raise PoolError(f"refusing to fork while threads run in the master: {', '.join(threads)}")

    def _spawn(self, group: WorkerGroup) -> int | None:
        """Fork one worker; None when the cluster has no free slot (nothing forked)."""
        plan = self._plan(group, group.free_slot())
        pids = self._fork([plan]) if plan is not None else []
        return pids[0] if pids else None

    def _fork(self, planned: list[PlannedWorker]) -> list[int]:
        """Fork the planned workers one right after another, then record them; their pids.

        All were built before the first fork and are freed after the last, and
        nothing is recorded between two forks: what the master wrote between
        two forks, each child forked before would keep a copy of its own of
        (2 MB in all for 8 idle workers on a Frappe bench). A stop asked for
        before a fork ends the round there: the rest is not forked.
        """
        if not planned:
            return []
        sys.stdout.flush()
        sys.stderr.flush()
        pids: list[int] = []
        try:
            for plan in planned:
                if self._stop_asked():
                    break
                pids.append(self._fork_one(plan))
        except OSError as exc:  # EAGAIN, ENOMEM: no room for another process now
            log.error("could not fork a worker: %s; trying again after a back-off", exc)
            self._back_off()  # type: ignore[attr-defined]
        finally:  # in the master, also when a fork fails
            now = self.clock()
            for plan, pid in zip(planned, pids):
                if plan.lease is not None:
                    self._lease_of[pid] = plan.lease
                plan.group.worker_born(pid, plan.slot, now, self.worker_name(plan.group, plan.slot, pid))
                self._owner[pid] = plan.group
            for plan, pid in zip(planned, pids):
                if plan.mailbox is not None:
                    self._mailbox_of[pid] = plan.mailbox
            self._give_back(planned[len(pids):])
            self.state.mark_dirty()
        return pids

    def _fork_one(self, plan: PlannedWorker) -> int:
        """Fork one planned worker; in the master, its pid."""
        return self._fork_child(lambda: self._run_worker(plan.group, plan.slot, plan.worker, plan.mailbox))

    def _fork_child(self, body: Callable[[], int]) -> int:
        """Fork a child that drops the master's state and exits with ``body()``'s status; in the master, its pid,
        with the master's pending signals handled.

        Until a child has dropped the master's handlers, a signal sent to it
        would run them (and be lost): it is forked with them blocked, and they
        wait until then. The master unblocks them after each fork, so its own
        handlers run (and queue a stop) between two forks.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_child(body)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # runs the handlers of what came meanwhile
        return pid

    def worker_name(self, group: WorkerGroup, slot: int, pid: int) -> str:
        pool = self.config.pool_name if len(self.groups) == 1 else f"{self.config.pool_name}.{group.name}"
        return worker_name(self.host, pool, slot, pid)

    def _become_child(self, body: Callable[[], int]) -> NoReturn:
        status = 1
        try:
            self._forget_master_state()
            status = body()
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    def _run_worker(self, group: WorkerGroup, slot: int, worker: Any, mailbox_slot: int | None) -> int:
        """Body of a forked worker."""
        launch = WorkerLaunch(
            name=self.worker_name(group, slot, os.getpid()),
            queues=group.queues,
            burst=self.config.burst,
            logging_level=self.config.logging_level,
            dequeue_strategy=self.config.dequeue_strategy,
            events_fd=self._events_w,
            master_pid=self.pid,
            max_jobs=jittered(self.config.max_jobs_per_worker),
            max_memory=self.config.max_memory_per_worker,
            mailbox=self.mailbox if mailbox_slot is not None else None,
            mailbox_slot=mailbox_slot,
            job_module=(self.config.job_module or rq_job_module) if self.learner is not None else None,
        )
        return run_worker(launch, worker)

    def _forget_master_state(self) -> None:
        """In a fresh child: drop the master's signal handling and its private fds."""
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.metrics is not None:
            self.metrics.close_inherited()
        # The selector's descriptor only: freeing its Python objects would write to
        # (and copy) pages this worker otherwise shares with the master.
        for fd in (self._selector.fileno(), self._wake_r, self._wake_w, self._events_r, self.relay.fd):
            if fd >= 0:  # a select()-based selector has none
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)


def jittered(max_jobs: int | None) -> int | None:
    """Up to 10% more (whole jobs: none below 10), so workers started together do not all recycle together.

    Exact for small N: ``--max-jobs-per-worker 1`` is how one asks for a fresh
    process per job (Celery's ``--max-tasks-per-child 1``).
    """
    if max_jobs is None:
        return None
    return max_jobs + random.randint(0, max_jobs // 10)
