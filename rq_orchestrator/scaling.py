"""The scaling policy: observations in, a desired size and its reason out.

Pure on purpose: no I/O and no clock of its own (time comes in with each
observation), so the real pool and the simulator run the very same rule.

The seed's rule, which the defaults reproduce exactly: every scaling period,
utilization above the threshold adds one worker (up to the maximum); below
half the threshold retires one (down to the minimum); in between, hold.

Options on top of it (all off by default):

- ``max_queue_wait``: a job that has waited longer than this, while no worker
  is idle, is a reason to grow at once. The pool asks :meth:`ScalingPolicy.urgent`
  every second, between the periods; :meth:`ScalingPolicy.decide` checks it too.
  ``urgent`` also grows a group that has no worker when a job waits.
- ``max_step``: grow by as many workers as the work calls for (the arriving
  work at the target utilization, plus the backlog drained within one
  period; never more than the jobs waiting), at most this many at once.
  Shrinking stays one worker per period.
- ``scale_down_delay``: no scale-down sooner than this after any change.
- ``max_pool_memory``: no growth above the minimum while the pool uses more.
- ``scale_on="queue-wait"``: utilization no longer adds workers; only long
  waits do. A worker is retired when, for three periods, no job waited too
  long and at most n - 1 workers were busy at once. Each recent reversal
  doubles that calm span (up to 8x), as uWSGI's busyness algorithm
  penalises respawning soon after a kill.

The policy keeps a little state of its own (when it last grew or shrank, when
a job last waited too long, recent busy counts, the reversals it counted:
changes of direction within three periods), fed only by the time carried in
the observations, never by a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum

from .sizes import format_size

SCALE_ON = ("utilization", "queue-wait")
REVERSAL_PERIODS = 3  # a change of direction within this many periods is a reversal
PENALTY_MEMORY = 10  # queue-wait mode: reversals within this many reversal windows lengthen the calm
MAX_PENALTY = 3  # ... doubling it at most this many times


class Action(str, Enum):
    UP = "up"
    DOWN = "down"
    HOLD = "hold"


@dataclass(frozen=True)
class ScalingSettings:
    min_workers: int = 2
    max_workers: int = 8
    utilization_threshold: float = 0.5
    max_step: int = 1
    max_queue_wait: float | None = None  # seconds
    scale_down_delay: float = 0.0  # seconds
    max_pool_memory: int | None = None  # bytes
    scale_on: str = "utilization"
    scaling_period: float = 5.0  # seconds; sets the backlog horizon and the reversal window

    def __post_init__(self) -> None:
        if self.min_workers < 0 or self.max_workers < 1 or self.min_workers > self.max_workers:
            raise ValueError(f"bad bounds: min={self.min_workers} max={self.max_workers}")
        if not 0 < self.utilization_threshold <= 1:
            raise ValueError(f"threshold {self.utilization_threshold} outside (0, 1]")
        if self.max_step < 1:
            raise ValueError(f"max_step {self.max_step} is below 1")
        if self.max_queue_wait is not None and not self.max_queue_wait >= 0:
            raise ValueError(f"max_queue_wait {self.max_queue_wait} is negative")
        if not self.scale_down_delay >= 0:
            raise ValueError(f"scale_down_delay {self.scale_down_delay} is negative")
        if self.max_pool_memory is not None and self.max_pool_memory <= 0:
            raise ValueError(f"max_pool_memory {self.max_pool_memory} is not positive")
        if self.scale_on not in SCALE_ON:
            raise ValueError(f"scale_on {self.scale_on!r} is not one of {', '.join(SCALE_ON)}")
        if self.scale_on == "queue-wait" and self.max_queue_wait is None:
            raise ValueError("scale_on='queue-wait' needs max_queue_wait")
        if not self.scaling_period > 0:
            raise ValueError(f"scaling_period {self.scaling_period} is not positive")

    @property
    def scale_down_below(self) -> float:
        return self.utilization_threshold / 2

    @property
    def reversal_window(self) -> float:
        return REVERSAL_PERIODS * self.scaling_period

    @property
    def queue_wait_only(self) -> bool:
        return self.scale_on == "queue-wait"


@dataclass(frozen=True)
class Observation:
    """What the pool knows about one group at one instant.

    The optional fields feed the options; None means "not measured" and
    turns off whatever depends on it.
    """

    now: float
    workers: int  # alive and not retiring
    idle_workers: int
    utilization: float
    queued_jobs: int = 0
    oldest_wait: float | None = None  # seconds the oldest queued job has waited
    arrival_rate: float | None = None  # jobs per second over the window
    mean_job_seconds: float | None = None
    pool_memory: int | None = None  # bytes, the whole pool (PSS where the kernel offers it)

    @property
    def busy_average(self) -> float:
        """Busy workers on average over the window (0 when there is no worker to divide by)."""
        return self.utilization * self.workers if math.isfinite(self.utilization) else 0.0


@dataclass(frozen=True)
class Decision:
    action: Action
    target: int
    reason: str


class ScalingPolicy:
    """Decides whether a group grows, shrinks or holds.

    ``decide(obs)`` runs once per scaling period; ``urgent(obs)`` is cheap and
    runs every second in between, answering only "grow now?" (a job waits too
    long, or jobs wait and no worker is alive); None means "nothing to do".
    Both return decisions the caller applies as it applies the period's.
    """

    def __init__(self, settings: ScalingSettings) -> None:
        self.settings = settings
        self.last_up_at: float | None = None
        self.last_down_at: float | None = None
        self.last_long_wait_at: float | None = None  # last time a job had waited too long
        self._busy: deque[tuple[float, int]] = deque()  # (time, busy workers) of each observation
        self.reversals = 0
        self._reversal_times: deque[float] = deque()
        self._last_move: tuple[Action, float] | None = None

    # -- the two entry points ---------------------------------------------
    def decide(self, obs: Observation) -> Decision:
        self._remember(obs)
        decision = self._bounds(obs) or self._rule(obs)
        return self._record(decision, obs.now)

    def urgent(self, obs: Observation) -> Decision | None:
        """Grow now, between periods, if jobs cannot wait for the next one; else None."""
        self._remember(obs)
        if obs.workers == 0:
            reason = f"{obs.queued_jobs} jobs waiting and no worker" if obs.queued_jobs > 0 else None
        else:
            reason = self._long_wait_reason(obs)
        if reason is None or obs.workers >= self.settings.max_workers or self._memory_full(obs):
            return None
        return self._record(self._grow(obs, reason), obs.now)

    # -- the rules ----------------------------------------------------------
    def _bounds(self, obs: Observation) -> Decision | None:
        """The rules that hold whatever the load: the bounds, and an empty pool."""
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
                return self._grow_unless_full(obs, f"{obs.queued_jobs} jobs waiting and no worker")
            return Decision(Action.HOLD, 0, "no worker and no job waiting")
        return None

    def _rule(self, obs: Observation) -> Decision:
        s = self.settings
        n = obs.workers
        up = self._up_reason(obs)
        if up is not None:
            if n >= s.max_workers:
                return Decision(Action.HOLD, n, f"{up} but at the maximum")
            return self._grow_unless_full(obs, up)
        if self._waited_too_long(obs):
            # An idle worker while a job waits is one still starting: it is the growth already asked for.
            return Decision(Action.HOLD, n, f"{self._wait_reason(obs)} but {obs.idle_workers} workers are starting")
        down = self._down_reason(obs)
        if down is not None:
            return self._shrink(obs, down)
        if s.queue_wait_only:
            return Decision(Action.HOLD, n, f"no job waited over {s.max_queue_wait:g} s; the work needs {n} workers")
        u = obs.utilization
        return Decision(
            Action.HOLD, n, f"utilization {u:.2f} within [{s.scale_down_below:.2f}, {s.utilization_threshold:.2f}]"
        )

    def _up_reason(self, obs: Observation) -> str | None:
        s = self.settings
        if not s.queue_wait_only and obs.utilization > s.utilization_threshold:
            return f"utilization {obs.utilization:.2f} > {s.utilization_threshold:.2f}"
        return self._long_wait_reason(obs)

    def _down_reason(self, obs: Observation) -> str | None:
        s = self.settings
        if not s.queue_wait_only:
            if obs.utilization < s.scale_down_below:
                return f"utilization {obs.utilization:.2f} < {s.scale_down_below:.2f}"
            return None
        calm = self.calm_needed(obs.now)
        if self.last_long_wait_at is not None and obs.now - self.last_long_wait_at <= calm:
            return None
        peak = max((busy for at, busy in self._busy if obs.now - at <= calm), default=0)
        if peak <= obs.workers - 1:
            return f"for {calm:g} s no job waited over {s.max_queue_wait:g} s and at most {peak} workers were busy"
        return None

    def calm_needed(self, now: float) -> float:
        """Queue-wait mode: how long without a long wait, and with a worker to spare, a scale-down needs.

        Three periods, doubled for each reversal of the last ten such spans
        (at most three times), so a load that makes the pool flap is met
        with more patience, as uWSGI's busyness algorithm penalises respawns.
        """
        window = self.settings.reversal_window
        times = self._reversal_times
        while times and now - times[0] > PENALTY_MEMORY * window:
            times.popleft()
        return window * 2 ** min(len(times), MAX_PENALTY)

    def _shrink(self, obs: Observation, reason: str) -> Decision:
        s = self.settings
        n = obs.workers
        if n <= s.min_workers:
            return Decision(Action.HOLD, n, f"{reason} but at the minimum")
        if obs.idle_workers == 0:
            return Decision(Action.HOLD, n, f"{reason} but every worker is busy")
        since = self._since_last_change(obs.now)
        if since is not None and since < s.scale_down_delay:
            wait = f"{since:.1f} s since the last change < {s.scale_down_delay:g} s"
            return Decision(Action.HOLD, n, f"{reason} but {wait}")
        return Decision(Action.DOWN, n - 1, reason)

    def _grow_unless_full(self, obs: Observation, reason: str) -> Decision:
        if self._memory_full(obs):
            s = self.settings
            used, limit = format_size(obs.pool_memory or 0), format_size(s.max_pool_memory or 0)
            return Decision(Action.HOLD, obs.workers, f"{reason} but the pool uses {used} > {limit}")
        return self._grow(obs, reason)

    def _grow(self, obs: Observation, reason: str) -> Decision:
        s = self.settings
        n = obs.workers
        step = 1
        if s.max_step > 1:
            # A waiting job needs one worker at most: young estimates must not outgrow the backlog.
            step = min(max(self.wanted_workers(obs) - n, 1), s.max_step, max(obs.queued_jobs, 1))
            reason = f"{reason}; +{step}"
        return Decision(Action.UP, min(n + step, s.max_workers), reason)

    # -- estimates and checks ---------------------------------------------
    def wanted_workers(self, obs: Observation) -> int:
        """Workers that carry the arriving work at the target utilization and drain the backlog in a period.

        The arriving work is arrival rate x mean job length (busy workers'
        worth), or the window's busy average when either is unknown. Without
        a job length at all, one worker per waiting job (as Celery grows).
        """
        s = self.settings
        mean = obs.mean_job_seconds
        if mean is None:
            return obs.workers + obs.queued_jobs
        load = obs.arrival_rate * mean if obs.arrival_rate is not None else obs.busy_average
        target = 1.0 if s.queue_wait_only else s.utilization_threshold
        return math.ceil(load / target + obs.queued_jobs * mean / s.scaling_period)

    def _waited_too_long(self, obs: Observation) -> bool:
        limit = self.settings.max_queue_wait
        return limit is not None and obs.oldest_wait is not None and obs.oldest_wait > limit

    def _long_wait_reason(self, obs: Observation) -> str | None:
        """Why to grow for a job that waited too long; None if none did or a worker is still starting."""
        if self._waited_too_long(obs) and obs.idle_workers == 0:
            return self._wait_reason(obs)
        return None

    def _wait_reason(self, obs: Observation) -> str:
        return f"oldest job waited {obs.oldest_wait:.1f} s > {self.settings.max_queue_wait:g} s"

    def _memory_full(self, obs: Observation) -> bool:
        limit = self.settings.max_pool_memory
        return limit is not None and obs.pool_memory is not None and obs.pool_memory > limit

    def _since_last_change(self, now: float) -> float | None:
        changes = [t for t in (self.last_up_at, self.last_down_at) if t is not None]
        return now - max(changes) if changes else None

    # -- state --------------------------------------------------------------
    def _remember(self, obs: Observation) -> None:
        """Note what the queue-wait rules look back on: long waits, and how many workers were busy."""
        if self._waited_too_long(obs):
            self.last_long_wait_at = obs.now
        self._busy.append((obs.now, obs.workers - obs.idle_workers))
        oldest = obs.now - self.settings.reversal_window * 2**MAX_PENALTY
        while self._busy and self._busy[0][0] < oldest:
            self._busy.popleft()

    def _record(self, decision: Decision, now: float) -> Decision:
        """Remember a change; count (and say in the reason) a change of direction soon after the last."""
        if decision.action is Action.HOLD:
            return decision
        last = self._last_move
        if last is not None and last[0] is not decision.action and now - last[1] <= self.settings.reversal_window:
            self.reversals += 1
            self._reversal_times.append(now)
            decision = replace(decision, reason=f"{decision.reason} (reversal {self.reversals}: "
                                                f"{decision.action.value} {now - last[1]:.1f} s after {last[0].value})")
        self._last_move = (decision.action, now)
        if decision.action is Action.UP:
            self.last_up_at = now
        else:
            self.last_down_at = now
        return decision
