"""Service children: a callable the pool runs once, in a child process of its own, for as long as it runs.

Some duties belong to the pool, not to every worker: Frappe's scheduler, for
one, which Frappe's newer worker class starts in a thread of each worker.
Threads and forks do not mix, so the master forks one dedicated child per
service instead (after its preload and ``gc.freeze()``, like a worker, with
the master's handlers and descriptors dropped), restarts it with back-off
when it ends, and stops it with the pool: TERM, then KILL after a grace. It
dies with the master (parent-death signal). `ServiceChild` is the master's
bookkeeping of one service; the fork itself is the master's (``pool.py``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from typing import Any

from ..infra.config import ServiceSpec
from ..worker.process import set_parent_death_signal, set_process_title

log = logging.getLogger("rq_orchestrator")

FIRST_DELAY = 1.0  # seconds before the first restart of a service that ended soon after it started
MAX_DELAY = 60.0  # the back-off doubles up to this
STABLE_SECONDS = 60.0  # a child that ran this long starts its back-off afresh
STOP_GRACE = 10.0  # seconds between TERM and KILL when the pool stops


class ServiceChild:
    """The master's record of one service: its child's pid, its state, when to restart it."""

    def __init__(self, spec: ServiceSpec, now: float) -> None:
        self.spec = spec
        self.pid: int | None = None
        self.restarts = 0
        self.quick_exits = 0  # ends in a row, each sooner than STABLE_SECONDS after its start
        self.started_at = now
        self.start_at = now  # when to fork it next (while it has no child)
        self.stopping = False
        self.last_exit: str | None = None

    @property
    def state(self) -> str:
        if self.pid is not None:
            return "stopping" if self.stopping else "running"
        return "stopped" if self.stopping else "restarting"

    def due(self, now: float) -> bool:
        return self.pid is None and not self.stopping and now >= self.start_at

    def started(self, pid: int, now: float) -> None:
        self.pid = pid
        self.started_at = now

    def exited(self, how: str, now: float) -> float | None:
        """Its child ended (``how``: e.g. ``exit status 1``); the delay before its restart, None when stopping."""
        self.pid = None
        self.last_exit = how
        if self.stopping:
            return None
        self.restarts += 1
        self.quick_exits = self.quick_exits + 1 if now - self.started_at < STABLE_SECONDS else 1
        delay = min(FIRST_DELAY * 2 ** (self.quick_exits - 1), MAX_DELAY)
        self.start_at = now + delay
        return delay

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "age_s": round(now - self.started_at, 3) if self.pid is not None else None,
        }


class ServiceChildren:
    """Every service of one pool, by name; the master forks those `due` and passes back what it reaps."""

    def __init__(self, specs: Iterable[ServiceSpec], clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.children = [ServiceChild(spec, clock()) for spec in specs]

    def due(self, now: float) -> list[ServiceChild]:
        return [child for child in self.children if child.due(now)]

    def reaped(self, pid: int, how: str) -> bool:
        """A child the master reaped: True when it was a service's (logged, its restart planned)."""
        child = next((c for c in self.children if c.pid == pid), None)
        if child is None:
            return False
        delay = child.exited(how, self.clock())
        if delay is None:
            log.debug("service %s exited (%s)", child.spec.name, how)
        else:
            log.warning("service %s exited (%s); restarting it in %.0f s", child.spec.name, how, delay)
        return True

    def terminate(self) -> None:
        """Ask every running service to stop (TERM); none is restarted after."""
        for child in self.children:
            child.stopping = True
            if child.pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop every service and wait for it: TERM, then KILL whatever is still running after ``grace`` seconds."""
        self.terminate()
        deadline = self.clock() + grace
        for child in self.children:
            killed = False
            while child.pid is not None:
                if not killed and self.clock() >= deadline:
                    log.warning("service %s did not stop within %.0f s of TERM: killing it", child.spec.name, grace)
                    with suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                    killed = True
                pid, status = os.waitpid(child.pid, 0 if killed else os.WNOHANG)
                if pid:
                    child.exited(describe_exit(os.waitstatus_to_exitcode(status)), self.clock())
                else:
                    time.sleep(0.05)

    def pids(self) -> list[int]:
        return [child.pid for child in self.children if child.pid is not None]

    def describe(self, now: float) -> list[dict[str, Any]]:
        return [child.describe(now) for child in self.children]


def run_service(spec: ServiceSpec, master_pid: int) -> int:
    """Body of a service child (the master's state already dropped): run the callable; its exit status.

    A terminal's Ctrl+C reaches the whole process group: the child leaves it
    to the master, which stops it with TERM (no KeyboardInterrupt traceback).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != master_pid:  # the master died before prctl took effect
        return 0
    set_process_title(f"rq-orchestrator: service {spec.name}")
    spec.target()
    return 0


def describe_exit(code: int) -> str:
    """``exit status 1`` / ``killed by SIGKILL``, from ``os.waitstatus_to_exitcode``'s value."""
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"
