"""The scaling policy: observations in, a desired size and its reason out.

Pure on purpose: no I/O and no clock of its own (time comes in with each
observation), so the real pool and the simulator run the very same rule.

The seed's rule, which the defaults reproduce exactly: every scaling period,
utilization above the threshold adds one worker (up to the maximum); below
half the threshold retires one (down to the minimum); in between, hold.

Options on top of it (all off by default):

- ``max_queue_wait``: a job that has waited longer than this, while no worker
  is idle, is a reason to grow at once; so is a job that is bound to: jobs
  wait, every worker is busy, and the busy workers are not expected to free
  one within the limit (mean job length / busy workers > limit, the expected
  time to the first of n exponential job ends), so the next check, a second
  later, would come too late. The pool asks :meth:`ScalingPolicy.urgent`
  every second, between the periods; :meth:`ScalingPolicy.decide` checks it too.
  ``urgent`` also grows a group that has no worker when a job waits.
- ``max_step``: grow by as many workers as the work calls for, at most this
  many at once and never more than the jobs waiting: the arriving work at
  the target utilization plus the backlog drained within one period; in
  queue-wait mode, the arriving work or the backlog started by the next
  check, whichever needs more (see :meth:`ScalingPolicy.wanted_workers`).
  Shrinking stays one worker per period.
- ``scale_down_delay``: no scale-down sooner than this after any change.
- ``max_pool_memory``: no growth above the minimum while the pool uses more.
- ``scale_on="queue-wait"``: utilization no longer adds workers; only long
  waits (seen or expected) do. A worker is retired when, for three periods,
  no job waited too long, n - 1 workers could have done the work with a
  tenth to spare (busy average <= 0.9 (n - 1), both over the window and over
  those periods, so that a window reaching back before a steady load began
  does not make it look lighter), and they would have started the jobs of the
  busiest moment of those periods (busy + queued) within the limit: at most
  n - 1 of them, or the extra ones at mean job length / (n - 1) each, so a
  pool of short jobs is not kept for a moment's clump. Each recent reversal
  doubles that calm span (up to 8x) for a scale-down from the size that
  flapped or below, as uWSGI's busyness algorithm penalises respawning soon
  after a kill; a pool with nothing to run or queued for three periods
  forgets the penalty (the load is gone).

The policy keeps a little state of its own (when it last grew or shrank, when
a job last waited too long, recent busy and queued counts, the reversals it
counted: changes of direction within three periods), fed only by the time
carried in the observations, never by a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum

from ..infra.sizes import format_size
from ..infra.wording import compared, counted

SCALE_ON = ("utilization", "queue-wait")
REVERSAL_PERIODS = 3  # a change of direction within this many periods is a reversal
PENALTY_MEMORY = 10  # queue-wait mode: reversals within this many reversal windows lengthen the calm
MAX_PENALTY = 3  # ... doubling it at most this many times
CHECK_SECONDS = 1.0  # the pool asks urgent() about this often, between the periods
# Queue-wait mode retires a worker only if the others were busy at most this share of the time: at
# (nearly) full use, the noise of a steady load makes their queue grow and the pool flap.
SPARE = 0.9
# "Within three periods" holds for a gap up to this share of a period (of a second, if shorter) more: the
# master's ticks and checks run a few milliseconds late, the simulator's never, and at exactly three
# periods the two must decide alike.
CLOCK_SLACK = 0.1


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
    def clock_slack(self) -> float:
        return CLOCK_SLACK * min(self.scaling_period, CHECK_SECONDS)

    def within(self, gap: float, span: float) -> bool:
        """Whether ``gap`` seconds lie within ``span`` (periods long), allowing for the master's late clocks."""
        return gap <= span + self.clock_slack

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
        self.last_long_wait_at: float | None = None  # last time a job had waited, or was bound to wait, too long
        self._load: deque[tuple[float, int, int]] = deque()  # (time, busy workers, queued jobs) of each observation
        self.reversals = 0
        self._reversal_times: deque[tuple[float, int]] = deque()  # (time, size that flapped) of each reversal
        self._last_move: tuple[Action, float, int] | None = None  # (direction, time, target) of the last change

    # -- the two entry points ---------------------------------------------
    def decide(self, obs: Observation) -> Decision:
        self._remember(obs)
        decision = self._bounds(obs) or self._rule(obs)
        return self._record(decision, obs.now)

    def urgent(self, obs: Observation) -> Decision | None:
        """Grow now, between periods, if jobs cannot wait for the next one; else None."""
        self._remember(obs)
        if obs.workers == 0:
            reason = f"{counted(obs.queued_jobs, 'job')} waiting and no worker" if obs.queued_jobs > 0 else None
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
            return Decision(Action.UP, s.min_workers, f"{counted(n, 'worker')} below the minimum {s.min_workers}")
        if n > s.max_workers:
            if obs.idle_workers == 0:
                return Decision(Action.HOLD, n, f"above the maximum {s.max_workers} but every worker is busy")
            return Decision(Action.DOWN, n - 1, f"{counted(n, 'worker')} above the maximum {s.max_workers}")
        if n == 0:
            if obs.queued_jobs > 0 and s.max_workers > 0:
                return self._grow_unless_full(obs, f"{counted(obs.queued_jobs, 'job')} waiting and no worker")
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
            starting = counted(obs.idle_workers, "worker")
            return Decision(Action.HOLD, n, f"{self._wait_reason(obs)} but {starting} still starting")
        down = self._down_reason(obs)
        if down is not None:
            return self._shrink(obs, down)
        if s.queue_wait_only:
            return Decision(Action.HOLD, n,
                            f"no job waited over {s.max_queue_wait:g} s; the work needs {counted(n, 'worker')}")
        u = obs.utilization
        return Decision(
            Action.HOLD, n, f"utilization {u:.2f} within [{s.scale_down_below:.2f}, {s.utilization_threshold:.2f}]"
        )

    def _up_reason(self, obs: Observation) -> str | None:
        s = self.settings
        if not s.queue_wait_only and obs.utilization > s.utilization_threshold:
            return "utilization {} > {}".format(*compared(obs.utilization, s.utilization_threshold))
        return self._long_wait_reason(obs)

    def _down_reason(self, obs: Observation) -> str | None:
        s = self.settings
        if not s.queue_wait_only:
            if obs.utilization < s.scale_down_below:
                return "utilization {} < {}".format(*compared(obs.utilization, s.scale_down_below))
            return None
        calm = self.calm_needed(obs.now, obs.workers)
        if self.last_long_wait_at is not None and s.within(obs.now - self.last_long_wait_at, calm):
            return None
        left = obs.workers - 1
        recent = [(busy, queued) for at, busy, queued in self._load if s.within(obs.now - at, calm)]
        lately = sum(busy for busy, _ in recent) / len(recent) if recent else 0.0
        if max(obs.busy_average, lately) > left * SPARE:
            return None  # the others would be (nearly) always busy: a steady load would flap
        peak = max((busy for busy, _ in recent), default=0)
        demand = max((busy + queued for busy, queued in recent), default=0)
        calm_part = f"for {calm:g} s no job waited over {s.max_queue_wait:g} s"
        if demand <= left:
            return f"{calm_part} and at most {counted(peak, 'worker')} busy at once"
        wait = self._drain_seconds(demand - left, left, obs.mean_job_seconds)
        if wait is not None and wait <= (s.max_queue_wait or 0.0):
            return (f"{calm_part}; {counted(left, 'worker')} would have started the busiest moment's {counted(demand, 'job')} "
                    f"within {wait:.2f} s")
        return None

    @staticmethod
    def _drain_seconds(extra: int, workers: int, mean: float | None) -> float | None:
        """About how long ``extra`` jobs wait for ``workers`` busy ones to free up (None: unknown)."""
        if mean is None or workers <= 0:
            return None
        return extra * mean / workers

    def calm_needed(self, now: float, workers: int | None = None) -> float:
        """Queue-wait mode: how long without a long wait a scale-down from ``workers`` needs.

        Three periods, doubled for each reversal of the last ten such spans
        (at most three times), so a load that makes the pool flap is met
        with more patience, as uWSGI's busyness algorithm penalises respawns.
        A reversal says the size it shrank from was needed: it lengthens the
        calm of a scale-down from that size or a smaller one, not from a
        larger one (a pool grown past the size it flapped at comes back down
        to it at the usual pace). A pool that had nothing to run and nothing
        queued for three periods is past the load that made it flap: no
        penalty. ``workers`` None: every recent reversal counts.
        """
        window = self.settings.reversal_window
        times = self._reversal_times
        while times and not self.settings.within(now - times[0][0], PENALTY_MEMORY * window):
            times.popleft()
        count = sum(1 for _, size in times if workers is None or size >= workers)
        if not count or self._idle_for(window, now):
            return window
        return window * 2 ** min(count, MAX_PENALTY)

    def _idle_for(self, span: float, now: float) -> bool:
        """Observed over the whole of the last ``span`` seconds, with no job running or queued."""
        load = self._load
        if not load or load[0][0] > now - span:
            return False
        recent = [busy + queued for at, busy, queued in load if self.settings.within(now - at, span)]
        return bool(recent) and not any(recent)

    def _shrink(self, obs: Observation, reason: str) -> Decision:
        s = self.settings
        n = obs.workers
        if n <= s.min_workers:
            return Decision(Action.HOLD, n, f"{reason} but at the minimum")
        if obs.idle_workers == 0:
            return Decision(Action.HOLD, n, f"{reason} but every worker is busy")
        since = self._since_last_change(obs.now)
        if since is not None and since < s.scale_down_delay:
            wait = "{} s since the last change < {} s".format(*compared(since, s.scale_down_delay, 1))
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
            step = min(max(self.wanted_workers(obs) - n, 1), s.max_step, max(obs.queued_jobs, 1), s.max_workers - n)
            reason = f"{reason}; +{step}"
        return Decision(Action.UP, min(n + step, s.max_workers), reason)

    # -- estimates and checks ---------------------------------------------
    def wanted_workers(self, obs: Observation) -> int:
        """Workers that carry the arriving work at the target utilization and drain the backlog.

        The arriving work is arrival rate x mean job length (busy workers'
        worth), or the window's busy average when either is unknown. Without
        a job length at all, one worker per waiting job (as Celery grows).

        Utilization mode drains the backlog within a period, on top of the
        arriving work. Queue-wait mode sizes for whichever needs more: the
        arriving work at full use, or the backlog started by the next check
        (CHECK_SECONDS): a smaller step only leaves jobs waiting for another
        step a second later. k new workers take k waiting jobs at once; the
        other q - k start as the capacity beyond the arriving work frees up,
        n + k - load workers' worth, one job every mean seconds each: the
        smallest k with (q - k) x mean <= CHECK_SECONDS x (n + k - load).
        """
        s = self.settings
        mean = obs.mean_job_seconds
        n, queued = obs.workers, obs.queued_jobs
        if mean is None:
            return n + queued
        load = obs.arrival_rate * mean if obs.arrival_rate is not None else obs.busy_average
        if not s.queue_wait_only:
            return math.ceil(load / s.utilization_threshold + queued * mean / s.scaling_period)
        extra = max(math.ceil((queued * mean - CHECK_SECONDS * (n - load)) / (mean + CHECK_SECONDS)), 0)
        return max(math.ceil(load), n + extra)

    def _waited_too_long(self, obs: Observation) -> bool:
        limit = self.settings.max_queue_wait
        return limit is not None and obs.oldest_wait is not None and obs.oldest_wait > limit

    def _long_wait_reason(self, obs: Observation) -> str | None:
        """Why to grow for a job that waited (or is bound to wait) too long; None if none did or a worker is idle."""
        if obs.idle_workers > 0:
            return None
        if self._waited_too_long(obs):
            return self._wait_reason(obs)
        free_in = self._wait_expected(obs)
        if free_in is not None:
            shown, limit = compared(free_in, self.settings.max_queue_wait or 0.0, 1)
            return f"{counted(obs.queued_jobs, 'job')} waiting and a busy worker frees in about {shown} s > {limit} s"
        return None

    def _wait_expected(self, obs: Observation) -> float | None:
        """With jobs waiting and every worker busy: the expected time to a free worker, if it exceeds the limit.

        Mean job length / busy workers: the expected time to the first of n
        job ends were job lengths exponential. Long jobs hold their workers
        for that long; short ones free one within the limit, and a clump of
        them is left to the observed wait.
        """
        limit = self.settings.max_queue_wait
        if limit is None or obs.queued_jobs <= 0 or obs.idle_workers > 0 or obs.workers <= 0:
            return None
        free_in = self._drain_seconds(1, obs.workers, obs.mean_job_seconds)
        return free_in if free_in is not None and free_in > limit else None

    def _wait_reason(self, obs: Observation) -> str:
        return "oldest job waited {} s > {} s".format(*compared(obs.oldest_wait, self.settings.max_queue_wait, 1))

    def _memory_full(self, obs: Observation) -> bool:
        limit = self.settings.max_pool_memory
        return limit is not None and obs.pool_memory is not None and obs.pool_memory > limit

    def _since_last_change(self, now: float) -> float | None:
        changes = [t for t in (self.last_up_at, self.last_down_at) if t is not None]
        return now - max(changes) if changes else None

    # -- state --------------------------------------------------------------
    def _remember(self, obs: Observation) -> None:
        """Note what the queue-wait rules look back on: long waits, and how many workers were busy and jobs queued."""
        if self._waited_too_long(obs) or self._wait_expected(obs) is not None:
            self.last_long_wait_at = obs.now
        self._load.append((obs.now, obs.workers - obs.idle_workers, obs.queued_jobs))
        oldest = obs.now - self.settings.reversal_window * 2**MAX_PENALTY - self.settings.clock_slack
        while len(self._load) > 1 and self._load[1][0] <= oldest:
            self._load.popleft()

    def _record(self, decision: Decision, now: float) -> Decision:
        """Remember a change; count (and say in the reason) a change of direction soon after the last."""
        if decision.action is Action.HOLD:
            return decision
        last = self._last_move
        s = self.settings
        if last is not None and last[0] is not decision.action and s.within(now - last[1], s.reversal_window):
            self.reversals += 1
            # the size that flapped: the one the scale-down left (each shrinks by one)
            shrunk_to = decision.target if decision.action is Action.DOWN else last[2]
            self._reversal_times.append((now, shrunk_to + 1))
            decision = replace(decision, reason=f"{decision.reason} (reversal {self.reversals}: "
                                                f"{decision.action.value} {now - last[1]:.1f} s after {last[0].value})")
        self._last_move = (decision.action, now, decision.target)
        if decision.action is Action.UP:
            self.last_up_at = now
        else:
            self.last_down_at = now
        return decision
