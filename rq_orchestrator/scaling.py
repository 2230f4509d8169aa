"""The scaling policy: observations in, a desired size and its reason out.

Pure on purpose: no I/O and no clock of its own (time comes in with each
observation), so the real pool and the simulator run the very same rule.

The seed's rule, which the defaults reproduce exactly: every scaling period,
utilization above the threshold adds one worker (up to the maximum); below
half the threshold retires one (down to the minimum); in between, hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(str, Enum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class ScalingSettings:
    min_workers: int = 2
    max_workers: int = 8
    utilization_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < 1 or self.min_workers > self.max_workers:
            raise ValueError(f"bad bounds: min={self.min_workers} max={self.max_workers}")
        if not 0 < self.utilization_threshold <= 1:
            raise ValueError(f"threshold {self.utilization_threshold} outside (0, 1]")

    @property
    def scale_down_below(self) -> float:
        return self.utilization_threshold / 2


@dataclass(frozen=True)
class Observation:
    """What the pool knows about one group at one instant."""

    now: float
    workers: int  # alive and not retiring
    idle_workers: int
    utilization: float
    queued_jobs: int = 0


@dataclass(frozen=True)
class Decision:
    action: Action
    target: int
    reason: str


class ScalingPolicy:
    """Decides, once per scaling period, whether a group grows, shrinks or holds."""

    def __init__(self, settings: ScalingSettings) -> None:
        self.settings = settings

    def decide(self, obs: Observation) -> Decision:
        s = self.settings
        n = obs.workers
        if n < s.min_workers:
            return Decision(Action.UP, s.min_workers, f"{n} workers below the minimum {s.min_workers}")
        if n > s.max_workers:
            if obs.idle_workers == 0:
                return Decision(Action.HOLD, n, f"above the maximum {s.max_workers} but every worker is busy")
            return Decision(Action.DOWN, n - 1, f"{n} workers above the maximum {s.max_workers}")
        if n == 0:
            if obs.queued_jobs > 0 and s.max_workers > 0:
                return Decision(Action.UP, 1, f"{obs.queued_jobs} jobs waiting and no worker")
            return Decision(Action.HOLD, 0, "no worker and no job waiting")
        u = obs.utilization
        if u > s.utilization_threshold:
            if n >= s.max_workers:
                return Decision(Action.HOLD, n, f"utilization {u:.2f} > {s.utilization_threshold:.2f} but at the maximum")
            return Decision(Action.UP, n + 1, f"utilization {u:.2f} > {s.utilization_threshold:.2f}")
        if u < s.scale_down_below:
            if n <= s.min_workers:
                return Decision(Action.HOLD, n, f"utilization {u:.2f} < {s.scale_down_below:.2f} but at the minimum")
            if obs.idle_workers == 0:
                return Decision(Action.HOLD, n, f"utilization {u:.2f} < {s.scale_down_below:.2f} but every worker is busy")
            return Decision(Action.DOWN, n - 1, f"utilization {u:.2f} < {s.scale_down_below:.2f}")
        return Decision(
            Action.HOLD, n, f"utilization {u:.2f} within [{s.scale_down_below:.2f}, {s.utilization_threshold:.2f}]"
        )
