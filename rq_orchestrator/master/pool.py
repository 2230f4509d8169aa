"""The master: forks workers, reaps them, and resizes each group every period.

Shaped after gunicorn's arbiter: one thread, a loop woken by a self-pipe when
a signal arrives (so dead children are reaped at once, not on a poll) and by
the workers' event pipe; signals are queued by tiny handlers and handled in
the loop, never inside the handler.
"""

from __future__ import annotations

import logging
import os
import re
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq.suspension import is_suspended

from ..infra.config import PoolConfig, hostname
from ..infra.connection import fresh_copy, server_version
from .access import check_access
from .dead_workers import Aftercare
from .forking import HANDLED_SIGNALS, STOP_SIGNALS, ForkingMixin, PoolError
from .cluster import ClusterLeases
from .learning import ModuleLearner
from .sentry_events import keep_master_events_local
from ..worker.events import BUSY, FAILED, IDLE, MODULE, READY, RECYCLE, STOPPED, STRANDED, EventReader, Event, drain
from ..policy.group import Plan, WorkerGroup, WorkerRecord
from .maintenance import RegistryMaintenance
from .rq_commands import CommandRelay
from .scheduler import MasterScheduler
from .service_child import ServiceChildren, describe_exit as _describe_exit
from ..infra.memory import total_pss
from ..infra.wording import counted
from .metrics import MetricsServer, render_metrics
from .queue_watch import NOTHING_WAITS, QueueStats, observe_queues
from .prewarm import prewarm
from .resize import next_net, resized_bounds
from ..policy.scaling import Action, Decision, ScalingPolicy, ScalingSettings
from .sharing import settle_for_fork
from .state import StatePublisher
from ..worker.mailbox import KILL_HORSE, SIGNAL as COMMAND_SIGNAL, STOP_JOB, Mailbox
from ..worker.no_fork import IN_DOUBT
from ..worker.process import MAX_JOBS, set_process_title

log = logging.getLogger("rq_orchestrator")

OBSERVE_SECONDS = 1.0  # queues are observed (and the master wakes) at least this often
CRASH_BACKOFF_MAX = 10.0
MASTER_SOCKET_TIMEOUT = 1.5  # seconds; the master sends no blocking command
EVENT_BATCH_SECONDS = 0.05  # busy workers' events wake the master at most this often
HOLD_REPEAT_SECONDS = 600.0  # a hold that lasts is logged again at INFO this often
FIGURES = re.compile(r"\d+(?:\.\d+)?")  # the numbers of a decision's reason, which change from period to period
IDLE_STOP_GRACE = 5.0  # seconds: a stopped worker with no job in hand leaves within one; one that has not is killed
STOP_SETTLE_SECONDS = 10.0  # a stop whose workers are gone waits this long for Redis to settle dead workers' jobs


class Pool(ForkingMixin):
    def __init__(self, config: PoolConfig, connection: Redis, clock: Callable[[], float] = time.monotonic) -> None:
        import rq

        self.config = config
        # Workers' clients are copies of the caller's (rq sets their timeouts for its long waits); the master's
        # own gives up on a stalled Redis after MASTER_SOCKET_TIMEOUT, so that it still answers a stop in time.
        self.worker_connection = connection
        connection = fresh_copy(connection, socket_timeout=MASTER_SOCKET_TIMEOUT,
                                socket_connect_timeout=MASTER_SOCKET_TIMEOUT)
        self.connection = connection
        self.clock = clock
        self.worker_class = config.worker_class or rq.Worker
        self.host = hostname()
        self.pid = os.getpid()
        now = clock()
        self.groups = [
            WorkerGroup(
                name=spec.name,
                queues=spec.queues,
                policy=ScalingPolicy(
                    ScalingSettings(spec.min_workers, spec.max_workers, config.utilization_threshold, **config.policy)
                ),
                window=config.utilization_window,
                now=now,
            )
            for spec in config.groups
        ]
        self._owner: dict[int, WorkerGroup] = {}
        self._signals: list[int] = []
        self.stopping: str | None = None  # "warm" / "cold" once a stop was asked for: status shows it
        self._cold_at: float | None = None  # when a warm stop turns cold (--graceful-timeout)
        self._stop_at = 0.0  # when the pool's stop was asked for
        self._settle_until: float | None = None  # stopped: how long to wait for Redis to settle dead workers' jobs
        self._stragglers: set[int] = set()  # idle workers killed for not leaving after the stop
        self._drained: set[str] = set()  # burst mode: groups done (a worker found their queues empty, or none to run)
        self._ends_unchecked = False  # a job ended since the ready registries were last looked at (recover_ready)
        self._exit_status = 0
        self._next_tick = self._next_observation = now  # the first period is scheduled as the workers start (_setup)
        self._memory: int | None = None  # the pool's PSS, last measured for --max-pool-memory
        self._memory_measured_until = now
        self._respawn_at = 0.0
        self._crashes = 0
        self._last_crash = 0.0
        self._boot_failures = 0
        self._reload_queue: list[tuple[WorkerGroup, int]] = []  # (group, old worker) still to re-fork
        self._reload_pending: dict[int, int] = {}  # new worker pid -> old worker it replaces
        self._reload_leaving: set[int] = set()  # old workers whose successor is up, until they exit
        learning = config.learn_job_modules and not config.no_fork  # a no-fork worker keeps what its jobs import
        self.learner = ModuleLearner() if learning else None
        self._learned_at = float("-inf")  # when the master last learned a module: workers born before lack it
        self._suspension_seen = False  # `rq suspend` in force at the last look (_workers_suspended)
        # group -> its last decision (figures masked) and when it was last logged at INFO (_decision_level)
        self._said: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._stuck: dict[int, str] = {}  # workers killed as stuck -> why, for their job's failure (_kill_stuck)
        self.aftercare = Aftercare(connection, [g.queues[0] for g in config.groups if len(g.queues) == 1],
                                   config.worker_kwargs, self._stop_asked)
        self.maintenance = RegistryMaintenance(config.all_queues, connection, config.worker_kwargs, self._stop_asked)
        self._redis_down_since: float | None = None
        self._selector = selectors.DefaultSelector()
        self._wake_r = self._wake_w = self._events_r = self._events_w = -1
        self._server_version: tuple[int, ...] | None = None  # asked once, before the first fork
        self._events: EventReader | None = None
        self.state = StatePublisher(self, connection)
        self.services = ServiceChildren(config.services, clock)  # e.g. Frappe's scheduler, each in a child
        self.state.services = self.services
        self._events_resume_at: float | None = None  # events fd out of the selector until then
        self._failed: dict[int, str] = {}  # worker -> how its current job ended if not finished (FAILED/STOPPED came)
        self._resize_net = 0  # TTINs less TTOUs (resize.next_net): the groups' bounds are their start's moved by it
        self.leases: ClusterLeases | None = None
        self._lease_of: dict[int, str] = {}  # worker pid -> its cluster lease
        if config.cluster_max_workers is not None:
            self.leases = ClusterLeases(connection, config.cluster, config.cluster_max_workers,
                                        config.cluster_lease_ttl, holder=f"{self.host}:{self.pid}")
            self.state.cluster = self.leases
        check_access(connection, config.all_queues, self.leases)
        self.metrics: MetricsServer | None = None
        if config.metrics_port is not None:  # here, before anything starts: a busy port is bad input
            self.metrics = MetricsServer(config.metrics_host, config.metrics_port,
                                         lambda: render_metrics(self.state.snapshot(self.clock())))
            self.state.metrics_address = "%s:%d" % self.metrics.address
        capacity = config.max_workers_total or sum(spec.max_workers for spec in config.groups)
        self.mailbox = Mailbox(2 * capacity + 8)  # retiring workers and their replacements overlap
        self._mailbox_of: dict[int, int] = {}  # worker pid -> its mailbox slot
        self.relay = CommandRelay(connection, self._on_rq_command)
        self.scheduler = (
            MasterScheduler(config.all_queues, connection, config.worker_kwargs.get("serializer"), config.logging_level)
            if config.with_scheduler
            else None
        )

    # -- lifecycle --------------------------------------------------------
    def run(self) -> int:
        """Run until stopped; returns the exit status for the process."""
        self._setup()
        try:
            self._loop()
        except PoolError as exc:
            log.error("%s", exc)
            self._exit_status = 1
            self._stop_children(signal.SIGTERM)
        finally:
            self._teardown()
        return self._exit_status

    def _setup(self) -> None:
        # A signal that arrives while the rehearsal's worker has its own handlers
        # installed waits, and reaches the master's handler once that is in place.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        if keep_master_events_local(self.pid):
            log.info("Sentry: jobs' errors are sent from their processes; the master's own are logged only")
        try:
            if self.config.prewarm and not self.config.burst:
                prewarm(self)
            set_process_title(f"rq-orchestrator: master {self.config.pool_name} [{','.join(self.config.all_queues)}]")
            self._wake_r, self._wake_w = _nonblocking_pipe()
            self._events_r, self._events_w = os.pipe()
            os.set_blocking(self._events_r, False)
            self._events = EventReader(self._events_r)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            self._selector.register(self._events_r, selectors.EVENT_READ)
            if self.metrics is not None:
                self.metrics.attach(self._selector)
            self.relay.start(self._selector, self.clock())
            signal.set_wakeup_fd(self._wake_w)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, self._queue_signal)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        self._server_version = server_version(self.connection)
        self.maintenance.run_due(self.clock())  # before the forks (in an errand: failure callbacks may start threads)
        settle_for_fork(thorough=not self.config.burst)
        self.aftercare.clear_previous_run(self.host, self.config.pool_name)
        self.state.replace_predecessors()
        now = self.clock()  # the first period and the windows start with the workers, after prewarm
        self._next_tick, self._next_observation = now + self.config.scaling_period, now
        for group in self.groups:
            group.observed_from(now)
        log.info(
            "pool %s started: pid %d, queues %s, %s",
            self.config.pool_name,
            self.pid,
            ",".join(self.config.all_queues),
            ", ".join(f"{g.name} {g.policy.settings.min_workers}-{g.policy.settings.max_workers}" for g in self.groups),
        )
        if self.metrics is not None:  # with --metrics-port 0, the only other place to read the port is status
            log.info("metrics: http://%s/metrics", self.state.metrics_address)

    def _settling_before_exit(self) -> bool:
        """Whether the stopped master waits on: workers that died during a Redis outage have jobs to settle.

        It waits up to STOP_SETTLE_SECONDS for Redis (``_reap`` retries each second); then it says which
        jobs it leaves (the next start of this pool on this host settles them) and exits with status 1.
        """
        unsettled = self.aftercare.unsettled_jobs
        if not unsettled:
            return False
        now = self.clock()
        if self._settle_until is None:
            self._settle_until = now + STOP_SETTLE_SECONDS
            log.warning("stopping: waiting up to %.0f s for Redis to settle the jobs of workers that died: %s",
                        STOP_SETTLE_SECONDS, ", ".join(unsettled))
        if now < self._settle_until and self.stopping == "warm":  # a cold stop (QUIT, a second TERM) does not wait
            return True
        log.error("stopped without settling %s of dead workers (Redis does not answer): %s; the next start of "
                  "pool %s on this host settles them", counted(len(unsettled), "job"), ", ".join(unsettled),
                  self.config.pool_name)
        self._exit_status = 1
        return False

    def _teardown(self) -> None:
        self.services.stop()
        signal.set_wakeup_fd(-1)
        for signum in HANDLED_SIGNALS:
            # A stop may still end the master as it finishes; a HUP, TTIN or TTOU would kill it (HUP's default,
            # exit status -1) or stop it for good (TTIN/TTOU's): ignored, the master exits as it would have.
            signal.signal(signum, signal.SIG_DFL if signum in STOP_SIGNALS + (signal.SIGCHLD,) else signal.SIG_IGN)
        self.state.remove()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.metrics is not None:
            self.metrics.close()
        self.relay.close()
        for fd in (self._wake_r, self._wake_w, self._events_r, self._events_w):
            if fd >= 0:
                os.close(fd)
        self._selector.close()

    def _loop(self) -> None:
        self._handle_signals()  # a stop asked for while the master was setting up: fork nothing
        self._spawn_missing()
        while True:
            self._sleep()
            if self.metrics is not None:
                self.metrics.handle_ready()
            self.relay.handle_ready(self.clock())
            self._handle_signals()
            self._read_events()
            if self.learner is not None and not self._stopping and self.learner.learn_pending(self._stop_asked):
                self._learned_at = self.clock()
                keep_master_events_local(self.pid)  # a learned module may have set Sentry up
                for group in self.groups:  # not while stopping: a second TERM a second later would be a cold stop
                    for worker in group.active:
                        self._refresh_if_old(group, worker)
            self._reap()
            self._renew_leases()
            if self._stopping:
                if not self._owner and not self._settling_before_exit():
                    log.info("pool %s stopped: all workers have exited", self.config.pool_name)
                    return
                if self._cold_at is not None and self.clock() >= self._cold_at:
                    log.warning("graceful timeout of %.0f s reached", self.config.graceful_timeout)
                    self._request_stop(cold=True)
                self._kill_stuck(self.clock())  # a stop waits for jobs, not for a wedged worker
                self._kill_idle_stragglers(self.clock())
                self.state.publish_if_due(self.clock())  # `status` shows the stop, not a stale pool, for all it lasts
                continue
            if self.config.burst and not self._owner and len(self._drained) == len(self.groups):
                if not self._burst_left_jobs():
                    log.info("pool %s: burst done, all workers have exited", self.config.pool_name)
                    return
            now = self.clock()
            self._scale(now)
            self._kill_stuck(now)
            self.aftercare.settle_pending()
            self.aftercare.recover_stranded(now, {w.job_id for g in self.groups for w in g.workers.values() if w.job_id})
            self._continue_reload()
            self._spawn_missing()
            if self.scheduler is not None:
                self.scheduler.run_due(now)
            self.maintenance.run_due(now)
            self.state.publish_if_due(now)

    def _sleep(self) -> None:
        if self._stopping:  # no more ticks: wake for children's exits, and at least once a second
            wake_at = min(self.clock() + OBSERVE_SECONDS, self._cold_at if self._cold_at is not None else float("inf"))
        else:
            wake_at = min(self._next_tick, self._next_observation)
        if self._events_resume_at is not None:
            if self.clock() >= self._events_resume_at:
                self._selector.register(self._events_r, selectors.EVENT_READ)
                self._events_resume_at = None
            else:
                wake_at = min(wake_at, self._events_resume_at)
        timeout = max(wake_at - self.clock(), 0.0)
        for key, _ in self._selector.select(timeout):
            if key.fd == self._wake_r:
                drain(self._wake_r)

    # -- signals ----------------------------------------------------------
    def _queue_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._request_stop(cold=self._stopping)
            elif signum == signal.SIGQUIT:
                self._request_stop(cold=True)
            elif signum in (signal.SIGTTIN, signal.SIGTTOU):
                self._resize(+1 if signum == signal.SIGTTIN else -1)
            elif signum == signal.SIGHUP:
                self._begin_reload()

    @property
    def _stopping(self) -> bool:
        return self.stopping is not None

    def _request_stop(self, cold: bool) -> None:
        self._stop_at = self._stop_at or self.clock()  # the first stop, warm or cold, starts the stragglers' grace
        busy = sum(w.busy for g in self.groups for w in g.workers.values())
        if cold:
            log.warning("cold stop: killing the jobs of %s (%s)", counted(busy, "busy worker"),
                        counted(len(self._owner), "worker"))
            self._stop_children(signal.SIGQUIT)
            self._cold_at = None
            self.stopping = "cold"
        else:
            log.info("warm stop: waiting for the jobs of %s (%s)", counted(busy, "busy worker"),
                     counted(len(self._owner), "worker"))
            self._stop_children(signal.SIGTERM, spare_retiring=True)
            if self.config.graceful_timeout is not None:
                self._cold_at = self.clock() + self.config.graceful_timeout
            self.stopping = "warm"
        self.state.mark_dirty()

    def _stop_children(self, signum: int, spare_retiring: bool = False) -> None:
        """``spare_retiring``: not the workers already retiring: they stop warm as it is, and a second TERM
        would be rq's cold stop, killing the job they finish."""
        self.services.terminate()
        for pid, group in list(self._owner.items()):
            if not (spare_retiring and pid in group.workers and group.workers[pid].retiring):
                _kill(pid, signum)

    def _resize(self, delta: int) -> None:
        """TTIN/TTOU: every group's bounds move by ``delta`` from where they started, net of the signals before
        (``resize.resized_bounds``: within the worker bound and --max-workers-total), and its size with them,
        a rise within --max-workers-total (the groups' sizes together)."""
        specs, bound, cap = self.config.groups, self.config.worker_bound, self.config.max_workers_total
        self._resize_net = next_net(specs, self._resize_net, delta)
        bounds = resized_bounds(specs, self._resize_net, bound, cap)
        sizes = sum(g.capacity for g in self.groups)
        for group, (new_min, new_max) in zip(self.groups, bounds):
            size = group.capacity
            target = min(max(size + delta, new_min), new_max)
            if cap is not None and delta > 0:
                room = cap - (sizes - size)  # the most this group may have beside the others' sizes
                target = max(min(target, room), size, new_min)
            sizes += target - size
            group.resize_bounds(new_min, new_max)
            log.info("resize %s: bounds %d-%d, target %d", group.name, new_min, new_max, target)
            # What status shows as the last decision (not the period's before the signal); at a bound, a hold.
            action = Action.UP if target > group.capacity else Action.DOWN if target < group.capacity else Action.HOLD
            group.last_decision = Decision(action, target, f"SIGTT{'IN' if delta > 0 else 'OU'}: bounds {new_min}-{new_max}")
            for key in group.resize_to(target, busy_too=True):  # "retire one now": a busy one once its job is done
                self._retire(group, group.workers[key])
            self.state.record_decision(group, group.last_decision, self.clock())  # the history's figures: after it
            self.state.mark_dirty()  # new bounds are news even where no worker comes or goes (a hold)

    def _retire(self, group: WorkerGroup, worker: WorkerRecord, keep_place: bool = False) -> None:
        group.mark_retiring(worker.key, keep_place)
        _kill(int(worker.key), signal.SIGTERM)
        self.state.mark_dirty()

    def _on_rq_command(self, worker_name: str, payload: dict[str, Any]) -> None:
        """An rq command published for ``worker_name``: relayed if that is one of ours, else ignored."""
        found = next(((g, w) for g in self.groups for w in g.workers.values() if w.name == worker_name), None)
        if found is None:
            return  # another pool's worker, or none
        group, record = found
        command, pid = payload.get("command"), int(record.key)
        if command == "shutdown" and not record.retiring:
            log.info("rq command: shutdown of worker %s (warm; the pool replaces it)", record.name)
            self._retire(group, record)  # no longer capacity: its replacement starts now
        elif command in (STOP_JOB, "stop-execution", KILL_HORSE) and record.busy and self.config.no_fork:
            log.info("rq command: %s on worker %s ignored: with --no-fork its job runs in the worker itself "
                     "(rq's shutdown command stops the worker after it)", command, record.name)
        elif command in (STOP_JOB, "stop-execution") and record.busy and record.job_id == payload.get("job_id"):
            log.info("rq command: stop job %s on worker %s", record.job_id, record.name)
            self._post(pid, STOP_JOB, record.job_id)
        elif command == KILL_HORSE and record.busy:
            log.info("rq command: kill the work process of worker %s (job %s)", record.name, record.job_id)
            self._post(pid, KILL_HORSE, record.job_id or "")

    def _post(self, pid: int, command: str, job_id: str) -> None:
        slot = self._mailbox_of.get(pid)
        if slot is not None:
            self.mailbox.post(slot, command, job_id)
            _kill(pid, COMMAND_SIGNAL)

    def _read_events(self) -> None:
        assert self._events is not None
        events = self._events.read()
        for event in events:
            group = self._owner.get(event.pid)
            if group is not None:
                self._handle_event(group, event)
        if events and self._events_resume_at is None:
            # Busy workers send two events a job: wake for them at most every
            # EVENT_BATCH_SECONDS (they carry their own timestamps, so the
            # accounting stays exact); signals and exits still wake at once.
            self._selector.unregister(self._events_r)
            self._events_resume_at = self.clock() + EVENT_BATCH_SECONDS

    def _handle_event(self, group: WorkerGroup, event: Event) -> None:
        if event.kind == BUSY:
            group.job_started(event.pid, event.job_id or "", event.at, event.timeout)
        elif event.kind in (FAILED, STOPPED):
            self._failed[event.pid] = event.kind
            return
        elif event.kind == IDLE:
            group.job_ended(event.pid, event.at)
            self._ends_unchecked = True
            self.state.counters.jobs[self._failed.pop(event.pid, "finished")] += 1
        elif event.kind == READY:
            group.worker_ready(event.pid)
            self._boot_failures = 0
            self._finish_reload_step(group, event.pid)
            self._refresh_if_old(group, group.workers[event.pid])
        elif event.kind == RECYCLE:
            # It exits after this job: its replacement starts now, not after it is gone.
            log.info("worker %s recycles (%s)", group.workers[event.pid].name, event.job_id)
            group.mark_retiring(event.pid)
            reason = event.job_id or ""
            cause = ("in_doubt" if reason.startswith(IN_DOUBT) else
                     "max_jobs" if reason.startswith(MAX_JOBS) else "max_memory")
            self.state.counters.restarts[cause] += 1
        elif event.kind == STRANDED:
            self.aftercare.expect_strands(self.clock())
            return
        elif event.kind == MODULE:
            if self.learner is not None and event.job_id:
                self.learner.offer(event.job_id)
            return
        else:
            return  # a kind this master does not know: nothing to publish
        self.state.mark_dirty()

    def _finish_reload_step(self, group: WorkerGroup, new_pid: int) -> None:
        """A re-forked worker is up: its predecessor may leave (warm)."""
        old = self._reload_pending.pop(new_pid, None)
        if old is None:
            return
        group.replacement_ended()
        if old in group.workers and not group.workers[old].retiring:
            self._retire(group, group.workers[old])
            self._reload_leaving.add(old)

    def _reap(self) -> None:
        exits = _exited_children()
        if any(pid in self._owner for pid, _code in exits):
            self._read_events()  # what a worker wrote before it exited (its IDLE, its FAILED) counts first
        for pid, code in exits:
            group = self._owner.pop(pid, None)
            if group is not None:
                self._worker_exited(group, pid, code)
            elif self.services.reaped(pid, _describe_exit(code)):
                self.state.mark_dirty()
        self.aftercare.settle_pending()  # the jobs of all the workers found dead, in one errand

    def _worker_exited(self, group: WorkerGroup, pid: int, code: int) -> None:
        record = group.worker_exited(pid, self.clock())
        if pid in self._mailbox_of:
            self.mailbox.give_back(self._mailbox_of.pop(pid))
        self.state.mark_dirty()
        self._release_lease(pid)
        self._failed.pop(pid, None)
        self._reload_leaving.discard(pid)
        stuck = self._stuck.pop(pid, None)
        if self._reload_pending.pop(pid, None) is not None:
            group.replacement_ended()  # a re-fork that never came up: the old worker stays
        for new, old in list(self._reload_pending.items()):
            if old == pid:  # the old worker left first (a learned module retired it): its re-fork takes its place
                del self._reload_pending[new]
                group.replacement_ended()
        # Status 0 with a job in hand is no warm exit: rq quits its loop without raising on an error in
        # the worker, and a job run in the worker (--no-fork) may end the process with status 0.
        clean = code == 0 and (record is None or record.job_id is None)
        if record is None or clean and (self._stopping or record.retiring):  # a warm retirement, or the pool's stop
            log.debug("worker %s exited (%s)", record.name if record else pid, _describe_exit(code))
            return
        if self._stopping or (record.retiring and not record.ready and code == -signal.SIGTERM):
            # A cold stop's, or a stop that came before rq's handlers were in (no job yet): rq left its
            # registration, maybe a job.
            when = "in the pool's stop" if self._stopping else "stopped before it was up"
            log.debug("worker %s exited (%s) %s", record.name, _describe_exit(code), when)
            self.aftercare.worker_died(record.name, group.queues, record.job_id,
                                       stuck or f"worker {record.name} {_describe_exit(code)} {when}")
            return
        if self.config.burst and clean:
            self._drained.add(group.name)
            group.target = max(group.target - 1, 0)
            log.info("worker %s found its queues empty and exited (burst)", record.name)
            return
        if clean:  # a worker class that stops by itself (e.g. after max jobs): replace it
            log.info("worker %s exited by itself (exit status 0); replacing it", record.name)
            self.state.counters.restarts["exited"] += 1
            return
        # Died of something else (killed, crashed, Redis gone), retiring or not: a retiring one is not replaced.
        if not record.retiring:
            self.state.counters.restarts["killed" if code < 0 else "crashed"] += 1
        if record.job_id:
            self.state.counters.jobs["failed"] += 1  # settled below: failed, or requeued by its Retry
        retiring = " while retiring" if record.retiring else ""
        log.warning("worker %s exited unexpectedly (%s)%s%s", record.name, _describe_exit(code), retiring,
                    f" while running job {record.job_id}" if record.job_id else "")
        self.aftercare.worker_died(record.name, group.queues, record.job_id,
                                   stuck or f"worker {record.name} {_describe_exit(code)}{retiring}")
        if not record.ready and not record.retiring and self._redis_reachable():
            self._boot_failures += 1
            if self._boot_failures >= self.config.max_boot_failures:
                raise PoolError(
                    f"workers fail at start-up: {self._boot_failures} in a row exited before taking a job "
                    f"({_describe_exit(code)}); see the worker errors above"
                )
        self._back_off()

    def _release_lease(self, pid: int) -> None:
        lease = self._lease_of.pop(pid, None)
        if lease is not None and self.leases is not None:
            self.leases.release(lease)

    def _renew_leases(self) -> None:
        """Keep this pool's cluster slots; a worker whose slot was lost (not renewed in time) leaves warm."""
        if self.leases is None:
            return
        lost = set(self.leases.renew_if_due())
        for pid, lease in list(self._lease_of.items()):
            if lease in lost:
                del self._lease_of[pid]
                group = self._owner.get(pid)
                if group is not None and pid in group.workers and not group.workers[pid].retiring:
                    self._retire(group, group.workers[pid])

    def _kill_stuck(self, now: float) -> None:
        """Kill a worker whose job ran past its timeout plus a margin: rq would have ended it by then."""
        for group in self.groups:
            for record in list(group.workers.values()):
                timeout = record.job_timeout
                if not record.busy or timeout is None or timeout < 0:
                    continue
                if now - record.job_started_at > timeout + self.config.stuck_margin:
                    why = (f"worker {record.name} is stuck: job {record.job_id} has run "
                           f"{now - record.job_started_at:.0f} s, past its timeout of {timeout:.0f} s")
                    log.error("%s; killing it", why)
                    self._stuck[int(record.key)] = f"{why}; killed by the pool (--stuck-margin)"
                    record.job_timeout = None  # once
                    _kill(int(record.key), signal.SIGKILL)

    def _kill_idle_stragglers(self, now: float) -> None:
        """In the pool's stop: kill a worker with no job in hand that has not left IDLE_STOP_GRACE after it.

        An idle worker leaves within a second of its stop, a busy one within a
        second of its job's end; one still here is wedged outside any job (the
        stop would otherwise wait for it forever). The grace runs from the
        later of the two, so a job that outlasts it does not get its worker
        killed on the way out.
        """
        if not self._stop_at:
            return
        for group in self.groups:
            for pid, record in group.workers.items():
                idle_for = now - max(self._stop_at, record.job_ended_at)
                if record.job_id is None and idle_for >= IDLE_STOP_GRACE and pid not in self._stragglers:
                    log.warning("worker %s has not left %.0f s after the stop%s, with no job in hand; killing it",
                                record.name, idle_for, " and its job's end" if record.job_ended_at > self._stop_at else "")
                    self._stragglers.add(pid)
                    _kill(int(pid), signal.SIGKILL)

    def _begin_reload(self) -> None:
        """SIGHUP: re-fork every worker (``_continue_reload`` takes the steps).

        The learned job modules are dropped first, so the new workers run the
        jobs' code as it is on disk now (a deploy); what --preload imported stays.
        """
        if self.learner is not None and (forgotten := self.learner.forget()):
            log.info("SIGHUP: %s dropped from the master: the jobs load their code afresh",
                     counted(len(forgotten), "learned job module"))
        self._reload_queue = [(g, int(w.key)) for g in self.groups for w in g.active]
        log.info("SIGHUP: re-forking %s (a busy one once its job is done, idle ones one at a time)",
                 counted(len(self._reload_queue), "worker"))

    def _refresh_if_old(self, group: WorkerGroup, worker: WorkerRecord) -> None:
        """Replace a worker forked before the master learned a job module, once it has left.

        It gets its warm stop now (a busy one finishes its job) and keeps its
        place until it exits: its replacement is forked only then, as for a busy
        worker in SIGHUP's re-fork. A worker still starting up is stopped once it
        is up (READY): a stop could reach it before rq's handlers.
        """
        if worker.born_at < self._learned_at and worker.ready and not (worker.retiring or self._stopping):
            self._retire(group, worker, keep_place=True)

    def _continue_reload(self) -> None:
        """SIGHUP's steps: a busy worker is replaced once its job is done, an idle one by a new worker up first.

        A busy worker gets the warm stop that keeps its place (as for a learned
        module): a new worker beside it would take a queued job, and a pool of
        N would run up to 2N jobs while the old ones finish theirs. An idle
        worker's successor is forked before it leaves, one pair at a time, the
        next only once the old one has exited: a worker the master still
        believed idle may have just taken a job, so at most one job beyond the
        pool's size runs at once.
        """
        queue: list[tuple[WorkerGroup, int]] = []
        for group, old in self._reload_queue:
            worker = group.workers.get(old)
            if worker is None or worker.retiring:
                continue
            if worker.busy:
                self._retire(group, worker, keep_place=True)
            else:
                queue.append((group, old))
        self._reload_queue = queue
        if queue and not (self._reload_pending or self._reload_leaving):
            self._refork(*queue.pop(0))

    def _refork(self, group: WorkerGroup, old: int) -> None:
        """An idle worker's successor, forked now; the old worker leaves once it is up.

        Where a cap is full (--max-workers-total, or the cluster's: no slot) the
        old one leaves first, keeping its place.
        """
        new = None
        if self._below_total_cap():
            group.replacement_started()
            new = self._spawn(group)
            if new is None:
                group.replacement_ended()
        if new is None:
            self._retire(group, group.workers[old], keep_place=True)
            return
        self._reload_pending[new] = old

    def _redis_reachable(self) -> bool:
        try:
            self.connection.ping()
        except RedisError as exc:
            self._redis_lost(exc)
            return False
        self._redis_back()
        return True

    def _redis_lost(self, exc: RedisError) -> None:
        if self._redis_down_since is None:
            self._redis_down_since = self.clock()
            log.error("Redis unreachable (%s): no scaling decisions until it is back", exc)

    def _redis_back(self) -> None:
        """The outage is over: the workers that died of it are replaced now, not after their crash back-off."""
        if self._redis_down_since is not None:
            log.info("Redis is back after %.0f s", self.clock() - self._redis_down_since)
            self._redis_down_since = None
            self._crashes = 0
            self._respawn_at = min(self._respawn_at, self.clock())

    def _back_off(self) -> None:
        """Replace crashed workers, but slow down when they keep crashing."""
        now = self.clock()
        self._crashes = self._crashes + 1 if now - self._last_crash < 60 else 1
        self._last_crash = now
        delay = min(0.1 * 2 ** (self._crashes - 1), CRASH_BACKOFF_MAX) if self._crashes > 1 else 0.0
        self._respawn_at = now + delay

    # -- scaling ----------------------------------------------------------
    def _scale(self, now: float) -> None:
        """Observe the queues once a second; the policy decides each period, and in between may grow urgently."""
        due = now >= self._next_tick
        if not due and now < self._next_observation:
            return
        self._next_observation = now + OBSERVE_SECONDS
        if due:
            self._next_tick = now + self.config.scaling_period
            if self._ends_unchecked:  # dependents rq left in its ready registries are queued before they are counted
                self._ends_unchecked = False
                self.maintenance.recover_ready()
        stats = self._observe_queues()
        if stats is None:
            return  # no decision on missing data
        memory = self._pool_memory(now)
        suspended: bool | None = None  # asked once, and only where jobs wait: an idle pool sends nothing for it
        for group in self.groups:
            if group.name in self._drained:
                continue  # burst mode: done, it gets no more workers; a decision would only mislead the log
            observed = stats[group.name]
            waiting = observed.queued or self._suspension_seen  # a suspension seen is looked at until it ends
            if waiting and (suspended := self._workers_suspended() if suspended is None else suspended):
                if self.config.burst:
                    self._drained.add(group.name)  # as rq's burst workers, suspended, quit
                continue  # `rq suspend`: workers take no job, so none to start for the jobs, nor any to retire
            kwargs = {"oldest_wait": observed.oldest_wait, "pool_memory": memory}
            if due:
                self._apply(group, group.tick(now, observed.queued, **kwargs), now)
            else:
                plan = group.urgent_tick(now, observed.queued, **kwargs)
                if plan is not None:
                    self._apply(group, plan, now)
            if self.config.burst and not observed.queued and not self._owner and not group.deficit:
                self._drained.add(group.name)  # nothing queued, no worker left to queue more, none to start: done
        if due:
            self.state.record_tick(now, stats)
        else:
            self.state.record_queues(stats)

    def _burst_left_jobs(self) -> bool:
        """Whether a burst that looks done left jobs queued, and if so start a worker for each group that has them.

        A worker that retires after its job (recycled, or its job's module learned) leaves without looking
        at the queues again, and its successor may have come up, found them empty and left while that job
        ran: what the job's end enqueued (a dependent job) would wait for good. rq's burst workers, the
        last of which looks once more after its job, run it; so does the pool. Suspended, nothing starts.
        """
        self.maintenance.recover_ready()
        stats = self._observe_queues()
        left = [g for g in self.groups if stats is not None and stats[g.name].queued]
        if not left or self._workers_suspended():
            return False
        for group in left:
            self._drained.discard(group.name)
            group.target = max(group.target, 1)
            log.info("group %s: %s queued after its workers left (burst): starting a worker for them",
                     group.name, counted(stats[group.name].queued, "job"))
        return True

    def _workers_suspended(self) -> bool:
        """Whether `rq suspend` is in force (False if Redis does not answer); said in the log when it starts and ends."""
        try:
            suspended = bool(is_suspended(self.connection))
        except RedisError:
            return False
        if suspended != self._suspension_seen:
            self._suspension_seen = suspended
            log.info("rq workers are suspended (rq suspend): no scaling while jobs wait" if suspended
                     else "rq workers are no longer suspended: scaling again")
        return suspended

    def _apply(self, group: WorkerGroup, plan: Plan, now: float) -> None:
        d = self._noting_the_cap(plan.decision)
        workers = group.capacity + len(plan.retire)
        log.log(
            self._decision_level(group.name, d, now),
            "scale group=%s workers=%d utilization=%.2f decision=%s target=%d reason=%s",
            group.name, workers, group.ledger.utilization(now, workers), d.action.value, d.target, d.reason,
        )
        for key in plan.retire:
            _kill(int(key), signal.SIGTERM)
        self.state.record_decision(group, d, now)

    def _noting_the_cap(self, decision: Decision) -> Decision:
        """A scale-up that a full --max-workers-total holds back says so (the target stands: it is what
        moves a quiet group's idle worker here)."""
        cap = self.config.max_workers_total
        if decision.action is not Action.UP or cap is None or sum(g.target - g.replacing for g in self.groups) <= cap:
            return decision
        return replace(decision, reason=f"{decision.reason}; --max-workers-total {cap} is full: a quiet group's "
                                        f"idle worker moves here, or the jobs wait")

    def _decision_level(self, group: str, decision: Decision, now: float) -> int:
        """INFO for a change; DEBUG for a hold that repeats the group's last decision but for its figures.

        A pool that holds logs one line when it starts to hold, and again every
        HOLD_REPEAT_SECONDS while it lasts, not one every period (17,000 a day
        at --scaling-period 5).
        """
        said = (decision.action, decision.target, FIGURES.sub("#", decision.reason))
        last = self._said.get(group)
        if decision.action is Action.HOLD and last and last[0] == said and now - last[1] < HOLD_REPEAT_SECONDS:
            return logging.DEBUG
        self._said[group] = (said, now)
        return logging.INFO

    def _pool_memory(self, now: float) -> int | None:
        """Total PSS of the master, its workers and their job processes where a ceiling asks for it, once a period.

        Every check gets the latest figure, the growth between periods included.
        """
        if not any(g.policy.settings.max_pool_memory for g in self.groups):
            return None
        if now >= self._memory_measured_until:
            self._memory = total_pss([self.pid, *self._owner])
            self._memory_measured_until = now + self.config.scaling_period
        return self._memory

    def _observe_queues(self) -> dict[str, QueueStats] | None:
        """Jobs waiting in each group's queues and the oldest one's wait, or None while Redis is unreachable.

        A group with an idle ready worker is not asked about: that worker waits
        on every queue of the group, so nothing waits there (an idle pool sends
        Redis nothing for this), except under `rq suspend`, when idle workers
        take no job and the jobs that wait are counted for status and metrics.
        While rq's command subscription is lost or
        Redis was found away, a PING tells when it is away and when it is back.
        """
        watched = {g.name: g.queues for g in self.groups if self._suspension_seen or not g.waiting}
        seen: dict[str, QueueStats] = {}
        try:
            if watched:
                seen = observe_queues(self.connection, watched)
            elif self._redis_down_since is not None or self.relay.lost:
                self.connection.ping()  # nothing to ask about, but an outage to see (idle workers say nothing of it)
        except RedisError as exc:
            self._redis_lost(exc)
            return None
        self._redis_back()
        return {g.name: seen.get(g.name, NOTHING_WAITS) for g in self.groups}


def _nonblocking_pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _exited_children() -> list[tuple[int, int]]:
    """(pid, exit code) of every child that has exited, reaped (a negative code: killed by that signal)."""
    exits = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return exits
        if pid == 0:
            return exits
        exits.append((pid, os.waitstatus_to_exitcode(status)))
