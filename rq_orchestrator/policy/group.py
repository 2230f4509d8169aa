"""A group of workers that serve the same queues, as bookkeeping only.

The group knows which workers it has, which of them are busy, which are
retiring, and what size the policy wants. It performs no I/O and reads no
clock, so the master (real processes) and the simulator (virtual ones) drive
the same object and get the same retirement semantics: a scale-down retires an
idle worker (an operator's resize, a busy one too when no idle one is left),
always with a warm stop, and a retiring worker no longer counts as capacity.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, replace

from .scaling import Action, Decision, Observation, ScalingPolicy
from .utilization import BusyLedger


@dataclass
class WorkerRecord:
    key: Hashable
    slot: int
    born_at: float
    name: str = ""
    job_id: str | None = None
    jobs_done: int = 0
    retiring: bool = False
    keeps_place: bool = False  # retiring, yet capacity until it exits: its replacement waits (mark_retiring)
    ready: bool = False
    job_started_at: float = 0.0
    job_ended_at: float = 0.0
    job_timeout: float | None = None

    @property
    def busy(self) -> bool:
        return self.job_id is not None


class JobFlow:
    """Arrival rate and mean job length over a sliding window, for the policy's step estimate.

    Built from what the group already hears: each job's start and end, and
    the queue length the pool reports with each tick. The jobs that arrived
    since the oldest queue sample of the window are those that started since,
    plus the growth of the queue::

        arrival_rate = (starts since then + queued now - queued then) / (now - then)

    until the samples span ``min_span`` (the scaling period): a rate over a
    second or two, just after the start, is mostly noise (7 jobs/s read
    from a Poisson load of 2), and the policy falls back to the busy average.

    The mean job length is the Kaplan-Meier mean of censored lifetimes: the
    jobs that ended in the window are lifetimes, the jobs still running are
    lifetimes of at least their age so far. Long jobs still running count (a
    job running longer than every ended one stretches the mean to its age;
    with none ended yet, the mean is the oldest running job's age, a lower
    bound), a job that just started does not shorten it, and, unlike time on
    test over the jobs ended, many young jobs over few ended ones do not
    inflate it (just after a scale-up: 1-second jobs read as 4.5 s). None
    when no job ran in the window.
    """

    def __init__(self, window: float, min_span: float = 0.0) -> None:
        self.window = window
        self.min_span = min_span
        self._starts: deque[float] = deque()
        self._ended: deque[tuple[float, float]] = deque()  # (start, end) of finished jobs, by end
        self._running: dict[Hashable, float] = {}  # worker -> start of its job
        self._queued: deque[tuple[float, int]] = deque()  # (time, queue length) samples

    def started(self, key: Hashable, at: float) -> None:
        self._starts.append(at)
        self._running[key] = at

    def ended(self, key: Hashable, at: float) -> None:
        start = self._running.pop(key, None)
        if start is not None:
            self._ended.append((start, at))

    def forget(self, key: Hashable) -> None:
        """The worker is gone mid-job: its job neither runs on nor finished."""
        self._running.pop(key, None)

    def sample_queue(self, at: float, queued_jobs: int) -> None:
        samples = self._queued
        samples.append((at, queued_jobs))
        while len(samples) > 1 and samples[1][0] <= at - self.window:
            samples.popleft()
        while self._starts and self._starts[0] <= samples[0][0]:
            self._starts.popleft()

    def arrival_rate(self, now: float) -> float | None:
        if len(self._queued) < 2:
            return None
        (since, queued_then), (_, queued_now) = self._queued[0], self._queued[-1]
        if now <= since or now - since < self.min_span:
            return None
        return max(len(self._starts) + queued_now - queued_then, 0) / (now - since)

    def mean_job_seconds(self, now: float) -> float | None:
        ended = self._ended
        while ended and ended[0][1] <= now - self.window:
            ended.popleft()
        if not ended and not self._running:
            return None
        # (length, still running), ascending; at a tie a job that ended counts before one still running
        lengths = sorted([(end - start, False) for start, end in ended]
                         + [(max(now - start, 0.0), True) for start in self._running.values()])
        mean, surviving, previous, at_risk = 0.0, 1.0, 0.0, len(lengths)
        for length, running in lengths:
            mean += surviving * (length - previous)  # the area under the survival curve
            previous = length
            if not running:
                surviving *= 1 - 1 / at_risk
            at_risk -= 1
        return mean


@dataclass(frozen=True)
class Plan:
    """What one scaling tick asks of the pool."""

    decision: Decision
    spawn: int
    retire: tuple[Hashable, ...]


class WorkerGroup:
    def __init__(
        self,
        name: str,
        queues: tuple[str, ...],
        policy: ScalingPolicy,
        window: float,
        now: float,
    ) -> None:
        self.name = name
        self.queues = queues
        self.policy = policy
        self.ledger = BusyLedger(window, now)
        self.flow = JobFlow(window, min_span=policy.settings.scaling_period)
        self.workers: dict[Hashable, WorkerRecord] = {}
        self.target = policy.settings.min_workers
        self.replacing = 0  # workers started to take over from one that stays until they are up (SIGHUP's re-fork)
        self.last_decision: Decision | None = None
        self.last_observation: Observation | None = None  # the latest observe(), e.g. of the last tick

    def observed_from(self, now: float) -> None:
        """Measure from ``now`` on, not from the group's creation: the master's start-up before its first
        fork (prewarm: a second or more) had no worker, and would thin the young window's utilization."""
        self.ledger.started_at = now

    # -- events -----------------------------------------------------------
    def worker_born(self, key: Hashable, slot: int, now: float, name: str = "") -> WorkerRecord:
        record = WorkerRecord(key=key, slot=slot, born_at=now, name=name or str(key))
        self.workers[key] = record
        return record

    def worker_ready(self, key: Hashable) -> None:
        if key in self.workers:
            self.workers[key].ready = True

    def job_started(self, key: Hashable, job_id: str, now: float, timeout: float | None = None) -> None:
        record = self.workers.get(key)
        if record is None:
            return
        record.job_id = job_id
        record.job_started_at = now
        record.job_timeout = timeout
        self.ledger.job_started(key, now)
        self.flow.started(key, now)

    def job_ended(self, key: Hashable, now: float) -> None:
        record = self.workers.get(key)
        if record is None or record.job_id is None:
            return
        record.job_id = None
        record.job_ended_at = now
        record.jobs_done += 1
        self.ledger.job_ended(key, now)
        self.flow.ended(key, now)

    def worker_exited(self, key: Hashable, now: float) -> WorkerRecord | None:
        self.ledger.worker_exited(key, now)
        self.flow.forget(key)
        return self.workers.pop(key, None)

    # -- views ------------------------------------------------------------
    @property
    def active(self) -> list[WorkerRecord]:
        """Workers that count as capacity: alive and not retiring, or retiring but keeping their place."""
        return [w for w in self.workers.values() if not w.retiring or w.keeps_place]

    @property
    def idle(self) -> list[WorkerRecord]:
        """Active workers free to take a job (not one already told to leave)."""
        return [w for w in self.active if not w.busy and not w.retiring]

    @property
    def waiting(self) -> list[WorkerRecord]:
        """Idle workers that are up: in rq's wait for a job, so none waits in the group's queues."""
        return [w for w in self.idle if w.ready]

    @property
    def capacity(self) -> int:
        """Active workers as the policy counts them: a worker and the one taking over from it count once."""
        return max(len(self.active) - self.replacing, 0)

    @property
    def deficit(self) -> int:
        """Workers to start now to reach the target size."""
        return max(self.target - len(self.active), 0)

    def utilization(self, now: float) -> float:
        return self.ledger.utilization(now, self.capacity)

    def observe(
        self,
        now: float,
        queued_jobs: int = 0,
        *,
        oldest_wait: float | None = None,
        pool_memory: int | None = None,
    ) -> Observation:
        """The group as the policy sees it; arrival rate and mean job length come from the group's own events."""
        workers = self.capacity
        self.last_observation = Observation(
            now=now,
            workers=workers,
            idle_workers=min(len(self.idle), workers),
            utilization=self.ledger.utilization(now, workers),
            queued_jobs=queued_jobs,
            oldest_wait=oldest_wait,
            arrival_rate=self.flow.arrival_rate(now),
            mean_job_seconds=self.flow.mean_job_seconds(now),
            pool_memory=pool_memory,
        )
        return self.last_observation

    # -- decisions --------------------------------------------------------
    def tick(
        self,
        now: float,
        queued_jobs: int = 0,
        *,
        oldest_wait: float | None = None,
        pool_memory: int | None = None,
    ) -> Plan:
        """One scaling period: ask the policy, then say whom to start or retire.

        ``oldest_wait`` (seconds the oldest job in the group's queues has
        waited) and ``pool_memory`` (bytes) feed --max-queue-wait and
        --max-pool-memory; leave them None where not measured.
        """
        self.flow.sample_queue(now, queued_jobs)
        obs = self.observe(now, queued_jobs, oldest_wait=oldest_wait, pool_memory=pool_memory)
        return self._apply(self.policy.decide(obs))

    def urgent_tick(
        self,
        now: float,
        queued_jobs: int = 0,
        *,
        oldest_wait: float | None = None,
        pool_memory: int | None = None,
    ) -> Plan | None:
        """The check between periods (call it about once a second): a plan to grow now, or None.

        It grows a group with no worker and a waiting job, or one whose oldest
        job waited longer than --max-queue-wait while no worker is idle.
        """
        self.flow.sample_queue(now, queued_jobs)
        obs = self.observe(now, queued_jobs, oldest_wait=oldest_wait, pool_memory=pool_memory)
        decision = self.policy.urgent(obs)
        return None if decision is None or self._reached(decision) else self._apply(decision)

    def _reached(self, decision: Decision) -> bool:
        """An UP to a size the target already holds: its workers are starting, or wait (a crash back-off,
        the cluster's cap); not another scale-up."""
        return decision.action is Action.UP and decision.target + self.replacing <= self.target

    def _apply(self, decision: Decision) -> Plan:
        if self._reached(decision):
            decision = replace(decision, action=Action.HOLD, reason=f"{decision.reason} (the target holds it already)")
        self.last_decision = decision
        retire: tuple[Hashable, ...] = ()
        # The decision counts workers as `capacity` does; the target also holds the take-overs under way.
        if decision.action is Action.DOWN:
            retire = self.resize_to(decision.target)
        elif decision.action is Action.UP:
            self.target = max(self.target, decision.target + self.replacing)
        # On HOLD the target stands, so a crashed worker awaiting its
        # replacement (or its back-off) is still replaced.
        return Plan(decision=decision, spawn=self.deficit, retire=retire)

    def resize_to(self, workers: int, busy_too: bool = False) -> tuple[Hashable, ...]:
        """Size the group to ``workers``, counted as ``capacity`` counts them; the idle workers to retire for it,
        and with ``busy_too`` busy ones after them (an operator's resize: they leave once their job is done)."""
        self.target = workers + self.replacing
        return self._pick_retirees(len(self.active) - self.target, busy_too)

    def replacement_started(self) -> None:
        """A worker is started to take over from one that leaves once it is up: one slot more, no more capacity."""
        self.target += 1
        self.replacing += 1

    def replacement_ended(self) -> None:
        """The take-over is done (the old worker leaves) or never happens (the new one did not come up)."""
        self.target -= 1
        self.replacing -= 1

    def mark_retiring(self, key: Hashable, keep_place: bool = False) -> None:
        """The worker is told to leave (warm). ``keep_place``: it counts as capacity until it has exited,
        so its replacement starts only then; a job it took before the stop reached it never runs beside
        one its replacement takes."""
        if key in self.workers:
            self.workers[key].retiring = True
            self.workers[key].keeps_place = keep_place

    def resize_bounds(self, min_workers: int, max_workers: int) -> None:
        """Move the bounds of a live group (operator resize)."""
        self.policy.settings = replace(self.policy.settings, min_workers=min_workers, max_workers=max_workers)
        self.target = min(max(self.target - self.replacing, min_workers), max_workers) + self.replacing

    def _pick_retirees(self, count: int, busy_too: bool = False) -> tuple[Hashable, ...]:
        count -= sum(w.retiring for w in self.active)  # those keeping their place leave anyway
        # The highest slots go first, so slot numbers stay compact and readable.
        idle = sorted(self.idle, key=lambda w: w.slot, reverse=True)
        busy = sorted((w for w in self.active if w.busy and not w.retiring), key=lambda w: w.slot, reverse=True)
        chosen = tuple(w.key for w in (idle + busy if busy_too else idle)[: max(count, 0)])
        for key in chosen:
            self.mark_retiring(key)
        return chosen

    def free_slot(self) -> int:
        """The lowest slot number no live worker holds."""
        return self.free_slots(1)[0]

    def free_slots(self, count: int) -> list[int]:
        """The ``count`` lowest slot numbers no live worker holds."""
        used = {w.slot for w in self.workers.values()}
        return list(itertools.islice((slot for slot in itertools.count(1) if slot not in used), count))
