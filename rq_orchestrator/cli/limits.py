"""What one machine can hold, and the smallest settings that make sense: the bounds pool options are checked against.

The most workers one pool may run is the least of a fixed ceiling, the
machine's memory at a budget per worker (a worker and the process that runs
its job), and half the user's process limit (RLIMIT_NPROC: each worker forks
a process per job). ``RQ_ORCHESTRATOR_MAX_WORKERS=N`` replaces the bound for
a user who really means a larger pool.
"""

from __future__ import annotations

import os
import resource

from ..infra.errors import BadInput
from ..infra.memory import resident_memory
from ..infra.sizes import format_size

MAX_WORKERS_ENV = "RQ_ORCHESTRATOR_MAX_WORKERS"
WORKER_CEILING = 1024  # whatever the machine: a master watches each worker in one thread
WORKER_MEMORY = 64 * 2**20  # the memory budget of a worker and its job's process
PROCESSES_PER_WORKER = 2  # the worker, and the process it forks for each job
MIN_SCALING_PERIOD = 0.1  # seconds; the master observes the queues once a second anyway
MAX_WINDOW = 3600.0  # seconds of busy intervals the master keeps (and scans) per group
MIN_STUCK_MARGIN = 1.0  # seconds; a shorter one kills workers whose job rq is ending itself
MAX_LEASE_TTL = 86400.0  # seconds; a dead pool's cluster slots come back within a day


def worker_bound() -> tuple[int, str]:
    """The most workers one pool may run here, and what it comes from (for the message)."""
    given = os.environ.get(MAX_WORKERS_ENV)
    if given is not None:
        try:
            value = int(given)
        except ValueError:
            value = 0
        if value < 1:
            raise BadInput(f"{MAX_WORKERS_ENV} must be a whole number of workers, 1 or more, got {given!r}")
        return value, f"set by {MAX_WORKERS_ENV}"
    bounds = [(WORKER_CEILING, "the fixed ceiling")]
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    bounds.append((memory // WORKER_MEMORY, f"{format_size(memory)} of memory at {format_size(WORKER_MEMORY)} a worker"))
    processes, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if processes != resource.RLIM_INFINITY:
        bounds.append((processes // PROCESSES_PER_WORKER,
                       f"RLIMIT_NPROC {processes} at {PROCESSES_PER_WORKER} processes a worker"))
    return min(bounds)


def check_workers(count: int, option: str) -> None:
    """BadInput when ``count`` workers are more than this machine can hold; ``option`` names what asked for them."""
    bound, source = worker_bound()
    if count > bound:
        raise BadInput(f"{option}: {count} workers is more than this machine can hold: at most {bound} ({source}); "
                       f"to run more, set {MAX_WORKERS_ENV}={count}")


def check_period_and_window(period: float, window: float) -> None:
    """A scaling period from MIN_SCALING_PERIOD and a window up to MAX_WINDOW (nan fails both)."""
    if not MIN_SCALING_PERIOD <= period <= MAX_WINDOW:
        raise BadInput(f"--scaling-period must be from {MIN_SCALING_PERIOD:g} to {MAX_WINDOW:g} seconds, got {period:g}")
    if not window <= MAX_WINDOW:
        raise BadInput(f"--utilization-window must be at most {MAX_WINDOW:g} seconds, got {window:g}")


def check_worker_memory(limit: int | None, given: str | None) -> None:
    """A per-worker memory limit must be above a fresh worker's resident memory.

    A worker starts with the master's resident pages (shared, but counted in
    its RSS), so the master's resident memory after preload is the least a
    worker holds; a limit below it recycles every worker after every job.
    """
    fresh = resident_memory()
    if limit is not None and fresh is not None and limit <= fresh:
        raise BadInput(f"--max-memory-per-worker {given} is not above a fresh worker's resident memory "
                       f"({format_size(fresh)}, the master's after preload): every worker would recycle after each job")
