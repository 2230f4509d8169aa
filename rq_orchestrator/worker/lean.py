"""Fewer Redis round trips between jobs: rq's repeated heartbeats, state writes and suspension looks, coalesced.

Between two jobs rq (1.15 to 3.x) sends the worker's heartbeat three to five
times (before and after each pop, after each job), writes the state ``idle``
twice, and asks Redis whether workers are suspended, each in a round trip of
its own. For a job that returns at once, run in the worker (``--no-fork``),
rq's bookkeeping is most of the cost.

Here:

* the worker key's time to live is never set below rq's idle one
  (``worker_ttl`` + 60 s; rq sets a shorter one for a short job, after which
  the next heartbeat would lengthen it again);
* a heartbeat within ``COALESCE`` seconds of the last one that would not
  lengthen that time to live is dropped (the key keeps at least that long to
  live, less at most ``COALESCE``, against rq's TTLs of minutes);
* a state write that repeats the state this worker last wrote itself is
  dropped (only the worker writes its state; a write inside a pipeline is
  always made, and forgets the last);
* the suspension look is not repeated within ``COALESCE`` seconds
  (``rq suspend`` takes effect at most ``COALESCE`` later; a job in hand is
  never affected, as in rq).

What monitors read (``last_heartbeat``) is at most ``COALESCE`` old;
busy/idle changes are always written.
"""

from __future__ import annotations

import time
from typing import Any

COALESCE = 1.0  # seconds


class LeanBookkeepingMixin:
    """Drops rq's bookkeeping writes that repeat one made less than COALESCE seconds ago."""

    _lean_beat_at: float = float("-inf")
    _lean_beat_ttl: int = 0
    _lean_state: str | None = None
    _lean_suspension_at: float = float("-inf")

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        idle_ttl = self.worker_ttl + 60  # type: ignore[attr-defined] # rq's own default, every version
        ttl = max(timeout or idle_ttl, idle_ttl)
        now = time.monotonic()
        if pipeline is None and now - self._lean_beat_at < COALESCE and ttl <= self._lean_beat_ttl:
            return
        super().heartbeat(ttl, pipeline)  # type: ignore[misc]
        self._lean_beat_at, self._lean_beat_ttl = now, ttl

    def set_state(self, state: str, pipeline: Any = None) -> None:
        if pipeline is None and state == self._lean_state:
            self._state = state
            return
        super().set_state(state, pipeline)  # type: ignore[misc]
        self._lean_state = state if pipeline is None else None

    def check_for_suspension(self, burst: bool) -> None:
        now = time.monotonic()
        if now - self._lean_suspension_at < COALESCE:
            return
        super().check_for_suspension(burst)  # type: ignore[misc]
        self._lean_suspension_at = time.monotonic()
