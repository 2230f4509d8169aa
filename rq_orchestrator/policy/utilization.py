"""Exact busy-time accounting over a sliding window.

The ledger is told when each worker starts and ends a job and when it exits.
It never reads a clock: every call carries the time, so the same code runs in
the real pool (monotonic seconds) and in the simulator (virtual seconds).

Utilization, as the pool defines it::

    busy_average = (busy seconds of every worker inside [now - W, now]) / min(W, age)
    utilization  = busy_average / workers_now

Busy seconds include the elapsed part of jobs still running and the work of
workers that have exited since; ``age`` is how long the ledger has existed, so
a young pool is not diluted by time before it was born.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable


class BusyLedger:
    """Busy intervals of a group of workers, pruned to a sliding window."""

    def __init__(self, window: float, started_at: float) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self.window = window
        self.started_at = started_at
        self._closed: deque[tuple[float, float]] = deque()  # (start, end), ends ascending
        self._open: dict[Hashable, float] = {}  # worker -> start of its running job

    def job_started(self, worker: Hashable, at: float) -> None:
        """A worker took a job. A second start without an end closes the first."""
        self.job_ended(worker, at)
        self._open[worker] = at

    def job_ended(self, worker: Hashable, at: float) -> None:
        """A worker finished (or lost) its job; idempotent."""
        start = self._open.pop(worker, None)
        if start is not None and at > start:
            self._closed.append((start, at))

    def worker_exited(self, worker: Hashable, at: float) -> None:
        """A worker is gone: whatever it was running ends now."""
        self.job_ended(worker, at)

    def is_busy(self, worker: Hashable) -> bool:
        return worker in self._open

    @property
    def busy_workers(self) -> int:
        return len(self._open)

    def span(self, now: float) -> float:
        """Length of the window actually observed: W, or the ledger's age if younger."""
        return max(min(self.window, now - self.started_at), 0.0)

    def busy_seconds(self, now: float) -> float:
        """Worker-seconds of work inside [now - W, now]."""
        window_start = now - self.window
        self._prune(window_start)
        total = sum(self._inside(start, end, now) for start, end in self._closed)
        total += sum(self._inside(start, now, now) for start in self._open.values() if start < now)
        return total

    def _inside(self, start: float, end: float, now: float) -> float:
        """The part of [start, end] inside the window ending at ``now``.

        Measured back from ``now`` where the interval began before the window, so a job that covers the
        whole window counts exactly W: ``now - (now - W)`` is not W in floating point for most W
        (7.7, 0.3, ...), which made one busy worker in two read 0.5000000000000029 > 0.5 and scale up.
        """
        if start > now - self.window:
            return end - start
        return max(self.window - (now - end), 0.0)

    def busy_average(self, now: float) -> float:
        """Average number of busy workers over the window."""
        span = self.span(now)
        if span <= 0:
            return float(len(self._open))
        return self.busy_seconds(now) / span

    def utilization(self, now: float, workers: int) -> float:
        """Average busy workers over the window divided by the workers there are now."""
        average = self.busy_average(now)
        if workers <= 0:
            return float("inf") if average > 0 else 0.0
        return average / workers

    def _prune(self, window_start: float) -> None:
        closed = self._closed
        while closed and closed[0][1] <= window_start:
            closed.popleft()
