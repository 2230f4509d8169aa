"""Jobs and a worker class for the --no-fork tests: each job records the pid of the process that ran it."""

import os
import time

from rq import Queue, Worker, get_current_job
from rq.timeouts import JobTimeoutException


def _record_pid() -> None:
    job = get_current_job()
    job.connection.hset("test:pid", job.id, os.getpid())
    job.connection.hincrby("test:runs", job.id, 1)


def pid() -> int:
    _record_pid()
    return os.getpid()


def boom() -> None:
    _record_pid()
    raise ValueError("an ordinary failure")


def raise_base(kind: str) -> None:
    """Raise the exception named (SystemExit, KeyboardInterrupt, MemoryError, GeneratorExit)."""
    _record_pid()
    raise {"SystemExit": SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt(), "MemoryError": MemoryError(),
           "GeneratorExit": GeneratorExit()}[kind]


def overrun(seconds: float = 30) -> None:
    _record_pid()
    time.sleep(seconds)


def swallow_timeout(seconds: float = 30) -> str:
    """Catches rq's timeout and returns as if nothing happened."""
    _record_pid()
    try:
        time.sleep(seconds)
    except JobTimeoutException:
        return "swallowed"
    return "not timed out"


class StopOnTimeout(Worker):
    """Like Frappe develop's FrappeWorkerNoFork: an exception handler that raises StopRequested on a timeout."""

    def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.push_exc_handler(self._stop_on_timeout)

    def _stop_on_timeout(self, job, exc_type, exc_value, traceback):  # noqa: ANN001
        try:
            from rq.exceptions import StopRequested
        except ImportError:  # rq 1.x
            from rq.worker import StopRequested
        if isinstance(exc_value, JobTimeoutException):
            raise StopRequested()


def worker_view() -> list:
    """The running worker's key as a monitor sees it mid-job: [state, seconds to live]."""
    job = get_current_job()
    key = f"rq:worker:{job.worker_name}"
    return [job.connection.hget(key, "state").decode(), job.connection.ttl(key)]


def enqueue_my_dependent() -> str:
    """Enqueue a job that depends on this one, while this one runs (rq defers it until this one ends)."""
    job = get_current_job()
    queue = Queue(job.origin, connection=job.connection)
    return queue.enqueue("builtins.len", "ab", depends_on=job).id


def connection_type() -> str:
    """The class of the client the running job holds, as its own code sees it."""
    return type(get_current_job().connection).__name__


def executions_recorded() -> int:
    """rq 2/3: how many executions of this job Redis holds while it runs (its execution registry)."""
    job = get_current_job()
    return job.connection.zcard(f"rq:executions:{job.id}")
