"""A group of workers that serve the same queues, as bookkeeping only.

The group knows which workers it has, which of them are busy, which are
retiring, and what size the policy wants. It performs no I/O and reads no
clock, so the master (real processes) and the simulator (virtual ones) drive
the same object and get the same retirement semantics: only an idle worker is
retired, with a warm stop, and a retiring worker no longer counts as capacity.
"""

from __future__ import annotations

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
    ready: bool = False

    @property
    def busy(self) -> bool:
        return self.job_id is not None


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
        self.workers: dict[Hashable, WorkerRecord] = {}
        self.target = policy.settings.min_workers
        self.last_decision: Decision | None = None

    # -- events -----------------------------------------------------------
    def worker_born(self, key: Hashable, slot: int, now: float, name: str = "") -> WorkerRecord:
        record = WorkerRecord(key=key, slot=slot, born_at=now, name=name or str(key))
        self.workers[key] = record
        return record

    def worker_ready(self, key: Hashable) -> None:
        if key in self.workers:
            self.workers[key].ready = True

    def job_started(self, key: Hashable, job_id: str, now: float) -> None:
        record = self.workers.get(key)
        if record is None:
            return
        record.job_id = job_id
        self.ledger.job_started(key, now)

    def job_ended(self, key: Hashable, now: float) -> None:
        record = self.workers.get(key)
        if record is None or record.job_id is None:
            return
        record.job_id = None
        record.jobs_done += 1
        self.ledger.job_ended(key, now)

    def worker_exited(self, key: Hashable, now: float) -> WorkerRecord | None:
        self.ledger.worker_exited(key, now)
        return self.workers.pop(key, None)

    # -- views ------------------------------------------------------------
    @property
    def active(self) -> list[WorkerRecord]:
        """Workers that count as capacity: alive and not retiring."""
        return [w for w in self.workers.values() if not w.retiring]

    @property
    def idle(self) -> list[WorkerRecord]:
        return [w for w in self.active if not w.busy]

    @property
    def deficit(self) -> int:
        """Workers to start now to reach the target size."""
        return max(self.target - len(self.active), 0)

    def utilization(self, now: float) -> float:
        return self.ledger.utilization(now, len(self.active))

    def observe(self, now: float, queued_jobs: int = 0) -> Observation:
        active = self.active
        return Observation(
            now=now,
            workers=len(active),
            idle_workers=sum(1 for w in active if not w.busy),
            utilization=self.ledger.utilization(now, len(active)),
            queued_jobs=queued_jobs,
        )

    # -- decisions --------------------------------------------------------
    def tick(self, now: float, queued_jobs: int = 0) -> Plan:
        """One scaling period: ask the policy, then say whom to start or retire."""
        decision = self.policy.decide(self.observe(now, queued_jobs))
        self.last_decision = decision
        retire: tuple[Hashable, ...] = ()
        if decision.action is Action.DOWN:
            retire = self._pick_retirees(len(self.active) - decision.target)
            self.target = decision.target
        elif decision.action is Action.UP:
            self.target = max(self.target, decision.target)
        # On HOLD the target stands, so a crashed worker awaiting its
        # replacement (or its back-off) is still replaced.
        return Plan(decision=decision, spawn=self.deficit, retire=retire)

    def mark_retiring(self, key: Hashable) -> None:
        if key in self.workers:
            self.workers[key].retiring = True

    def resize_bounds(self, min_workers: int, max_workers: int) -> None:
        """Move the bounds of a live group (operator resize)."""
        self.policy.settings = replace(self.policy.settings, min_workers=min_workers, max_workers=max_workers)
        self.target = min(max(self.target, min_workers), max_workers)

    def _pick_retirees(self, count: int) -> tuple[Hashable, ...]:
        # The highest slots go first, so slot numbers stay compact and readable.
        idle = sorted(self.idle, key=lambda w: w.slot, reverse=True)
        chosen = tuple(w.key for w in idle[: max(count, 0)])
        for key in chosen:
            self.mark_retiring(key)
        return chosen

    def free_slot(self) -> int:
        """The lowest slot number no live worker holds."""
        used = {w.slot for w in self.workers.values()}
        slot = 1
        while slot in used:
            slot += 1
        return slot
