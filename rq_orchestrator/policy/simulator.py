"""The simulator: a trace of jobs replayed on a virtual clock through the pool's own scaling code.

The simulation drives the real :class:`~rq_orchestrator.policy.group.WorkerGroup`
(and so the real :class:`~rq_orchestrator.policy.scaling.ScalingPolicy` and
:class:`~rq_orchestrator.policy.utilization.BusyLedger`) on a virtual clock, the way
the master does: a scaling tick every period, the urgent check every second
in between, workers born at once but ready only after ``spawn_delay``, jobs
handed to idle ready workers in arrival order (FIFO, lowest slot first), and
only idle workers retired. It is event driven (a heap of job ends, worker
readiness, arrivals, ticks and checks), so an hour of trace takes a fraction
of a second.

Two simplifications, both in the real pool's favour by under a second: a
retired worker leaves at once (a real one within a second, between polls),
and the pool and the load start together at t = 0 with the minimum ready.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .group import Plan, WorkerGroup
from .scaling import Action, ScalingPolicy, ScalingSettings

TRACE_HEADER = ["arrival_s", "duration_s"]
DEFAULT_TAIL = 120.0  # seconds simulated after the last job ends, to see the pool shrink back
CHECK_EVERY = 1.0  # the urgent check between ticks, as in the master's loop
# Seconds from a scale-up to the new worker's first job. The real pool forks from its preloaded master:
# benchmarks/spawn.py (SIGTTIN to the new worker's first job, 2 cores, 9 samples a run) measured medians
# of 40 ms and 61 ms in two runs, 83 ms at worst. 0.1 s is above every sample, on the safe side for a
# busier host; rq's own worker-pool takes about 1 s.
DEFAULT_SPAWN_DELAY = 0.1
# The loop steps through every second (the urgent check): an endless span would never end, and its samples
# would fill the memory. A week takes about 20 s here.
MAX_SIMULATED_SECONDS = 7 * 86400.0


class BadTrace(ValueError):
    """A trace file that cannot be read or is malformed (the message says where)."""


# Event kinds, in the order they are handled at one instant.
END, READY, ARRIVE, TICK, CHECK = range(5)


@dataclass(frozen=True)
class TraceJob:
    arrival: float
    duration: float


@dataclass(frozen=True)
class Sample:
    """The pool once a second (and at each tick)."""

    t: float
    workers: int  # alive, starting and retiring included: what costs memory
    queued: int
    utilization: float


@dataclass
class Result:
    jobs: int
    wait_p50_s: float
    wait_p95_s: float
    wait_max_s: float
    worker_seconds: float
    max_workers: int
    min_workers_seen: int
    reversals: int
    scale_ups: int
    scale_downs: int
    time_to_max_s: float
    makespan_s: float
    back_to_min_s: float | None  # from the queue's last emptying to the pool back at its minimum
    duration_s: float  # the simulated span: the last job's end + 120 s, or --until
    samples: list[Sample] = field(default_factory=list, repr=False)
    moves: list[tuple[float, Action, int]] = field(default_factory=list, repr=False)  # (time, up/down, target)

    def metrics(self) -> dict[str, Any]:
        """The numbers, rounded for reading (the JSON and the table)."""
        data = asdict(self)
        del data["samples"], data["moves"]
        return {key: round(value, 3) if isinstance(value, float) else value for key, value in data.items()}


# -- the trace ----------------------------------------------------------------
def read_trace(path: str | Path) -> list[TraceJob]:
    """Jobs of a CSV trace (header ``arrival_s,duration_s``), sorted by arrival; BadTrace if malformed."""
    try:
        with open(path, newline="") as stream:
            rows = list(csv.reader(stream))
    except OSError as exc:
        raise BadTrace(f"cannot read {path}: {exc.strerror or exc}") from None
    if not rows or [cell.strip() for cell in rows[0]] != TRACE_HEADER:
        raise BadTrace(f"{path}: the first line must be {','.join(TRACE_HEADER)}")
    jobs = [_trace_job(row, number, path) for number, row in enumerate(rows[1:], start=2) if row]
    if not jobs:
        raise BadTrace(f"{path}: no jobs")
    return sorted(jobs, key=lambda job: job.arrival)


def _trace_job(row: list[str], number: int, path: str | Path) -> TraceJob:
    try:
        arrival, duration = (float(cell) for cell in row)
    except ValueError:
        raise BadTrace(f"{path}: line {number}: expected two numbers, got {','.join(row)!r}") from None
    if not (math.isfinite(arrival) and math.isfinite(duration) and arrival >= 0 and duration >= 0):
        raise BadTrace(f"{path}: line {number}: times must be finite and not negative")
    if arrival + duration > MAX_SIMULATED_SECONDS:
        raise BadTrace(f"{path}: line {number}: the job ends after {MAX_SIMULATED_SECONDS:g} s (a week), "
                       f"the most the simulator runs")
    return TraceJob(arrival, duration)


def write_trace(path: str | Path, jobs: list[TraceJob]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(TRACE_HEADER)
        writer.writerows((f"{job.arrival:.3f}", f"{job.duration:.3f}") for job in jobs)


# -- the simulation -------------------------------------------------------------
class TooLong(ValueError):
    """The run would go past MAX_SIMULATED_SECONDS."""


class Simulation:
    """One replay of a trace; build it, then call :meth:`run` once."""

    def __init__(self, jobs: list[TraceJob], settings: ScalingSettings, window: float,
                 spawn_delay: float = DEFAULT_SPAWN_DELAY, until: float | None = None) -> None:
        self.jobs = sorted(jobs, key=lambda job: job.arrival)
        self.period = settings.scaling_period
        self.spawn_delay = spawn_delay
        self.until = until
        self.policy = ScalingPolicy(settings)
        self.group = WorkerGroup("sim", ("default",), self.policy, window=window, now=0.0)
        self.queue: deque[int] = deque()  # indices of waiting jobs, in arrival order
        self.waits: list[float] = []
        self.events: list[tuple[float, int, int, int]] = []  # (time, kind, sequence, payload)
        self.samples: list[Sample] = []
        self.moves: list[tuple[float, Action, int]] = []
        self.sizes: list[tuple[float, int]] = []  # (time, alive workers) at each change
        self._sequence = 0
        self._next_key = 0
        self._running = 0
        self._arrived = 0
        self._area = 0.0  # worker-seconds so far
        self._clock = 0.0
        self._last_tick = -1.0
        self._last_start = 0.0
        self._last_end = 0.0

    def run(self) -> Result:
        self._start_workers(self.group.deficit, 0.0, ready=True)
        self._sample(0.0)
        for index, job in enumerate(self.jobs):
            self._push(job.arrival, ARRIVE, index)
        self._push(self.period, TICK, 1)
        self._push(CHECK_EVERY, CHECK, 1)
        handlers = {END: self._job_ended, READY: self._worker_ready, ARRIVE: self._job_arrived,
                    TICK: self._tick, CHECK: self._check}
        while self.events:
            at, kind, _, payload = heapq.heappop(self.events)
            if kind >= TICK and self._drained() and at > self._end():
                break
            if at > MAX_SIMULATED_SECONDS:
                raise TooLong(f"the jobs would still run after {MAX_SIMULATED_SECONDS:g} s (a week), the most "
                              f"the simulator runs: a shorter trace, or more workers")
            self._advance(at)
            handlers[kind](at, payload)
        self._advance(self._end())
        return self._result()

    def _end(self) -> float:
        """The simulated span ends at --until, or the tail after the last job; never before that job ends."""
        return max(self.until, self._last_end) if self.until is not None else self._last_end + DEFAULT_TAIL

    # -- events -----------------------------------------------------------------
    def _job_arrived(self, at: float, index: int) -> None:
        self._arrived += 1
        self.queue.append(index)
        self._dispatch(at)

    def _job_ended(self, at: float, key: int) -> None:
        self.group.job_ended(key, at)
        self._running -= 1
        self._last_end = at
        self._dispatch(at)

    def _worker_ready(self, at: float, key: int) -> None:
        self.group.worker_ready(key)
        self._dispatch(at)

    def _tick(self, at: float, number: int) -> None:
        self._last_tick = at
        self._apply(self.group.tick(at, len(self.queue), oldest_wait=self._oldest_wait(at)), at)
        self._push((number + 1) * self.period, TICK, number + 1)
        self._sample(at)

    def _check(self, at: float, number: int) -> None:
        if at != self._last_tick:  # a tick at the same instant already looked
            plan = self.group.urgent_tick(at, len(self.queue), oldest_wait=self._oldest_wait(at))
            if plan is not None:
                self._apply(plan, at)
            self._sample(at)
        self._push((number + 1) * CHECK_EVERY, CHECK, number + 1)

    # -- the pool's side ----------------------------------------------------------
    def _apply(self, plan: Plan, at: float) -> None:
        if plan.decision.action is not Action.HOLD:
            self.moves.append((at, plan.decision.action, plan.decision.target))
        for key in plan.retire:
            self.group.worker_exited(key, at)
        self._start_workers(plan.spawn, at, ready=self.spawn_delay <= 0)
        self._note_size(at)

    def _start_workers(self, count: int, at: float, ready: bool) -> None:
        for _ in range(count):
            self._next_key += 1
            self.group.worker_born(self._next_key, self.group.free_slot(), at)
            if ready:
                self.group.worker_ready(self._next_key)
            else:
                self._push(at + self.spawn_delay, READY, self._next_key)
        self._note_size(at)
        self._dispatch(at)

    def _dispatch(self, at: float) -> None:
        """Hand waiting jobs to idle, ready workers, oldest job first, lowest slot first."""
        while self.queue:
            waiting = self.group.waiting
            if not waiting:
                return
            worker = min(waiting, key=lambda w: w.slot)
            index = self.queue.popleft()
            job = self.jobs[index]
            self.group.job_started(worker.key, str(index), at)
            self.waits.append(at - job.arrival)
            self._running += 1
            self._last_start = at
            self._push(at + job.duration, END, worker.key)

    # -- bookkeeping ----------------------------------------------------------------
    def _push(self, at: float, kind: int, payload: int) -> None:
        self._sequence += 1
        heapq.heappush(self.events, (at, kind, self._sequence, payload))

    def _drained(self) -> bool:
        return self._arrived == len(self.jobs) and not self.queue and self._running == 0

    def _oldest_wait(self, at: float) -> float:
        return at - self.jobs[self.queue[0]].arrival if self.queue else 0.0

    def _advance(self, at: float) -> None:
        self._area += len(self.group.workers) * (at - self._clock)
        self._clock = at

    def _note_size(self, at: float) -> None:
        size = len(self.group.workers)
        if not self.sizes or self.sizes[-1][1] != size:
            self.sizes.append((at, size))

    def _sample(self, at: float) -> None:
        seen = self.group.last_observation
        utilization = seen.utilization if seen is not None and seen.now == at else self.group.utilization(at)
        self.samples.append(Sample(at, len(self.group.workers), len(self.queue), utilization))

    def _result(self) -> Result:
        counts = [size for _, size in self.sizes]
        top = max(counts)
        start = self.jobs[0].arrival
        reached_top = next(t for t, size in self.sizes if size == top)
        return Result(
            jobs=len(self.jobs),
            wait_p50_s=percentile(self.waits, 0.50),
            wait_p95_s=percentile(self.waits, 0.95),
            wait_max_s=max(self.waits),
            worker_seconds=self._area,
            max_workers=top,
            min_workers_seen=min(counts),
            reversals=self.policy.reversals,
            scale_ups=sum(1 for _, action, _ in self.moves if action is Action.UP),
            scale_downs=sum(1 for _, action, _ in self.moves if action is Action.DOWN),
            time_to_max_s=max(reached_top - start, 0.0),
            makespan_s=self._last_end - start,
            back_to_min_s=self._back_to_min(),
            duration_s=self._clock,
            samples=self.samples,
            moves=self.moves,
        )

    def _back_to_min(self) -> float | None:
        last_change, size = self.sizes[-1]
        if size != self.policy.settings.min_workers:
            return None
        return max(last_change - self._last_start, 0.0)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def run_simulation(jobs: list[TraceJob], settings: ScalingSettings, window: float,
                   spawn_delay: float = DEFAULT_SPAWN_DELAY, until: float | None = None) -> Result:
    return Simulation(jobs, settings, window, spawn_delay, until).run()
