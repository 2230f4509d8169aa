"""Code the master does not own, run in a throwaway fork of it: whatever threads it starts die with that fork.

The master forks workers, so no thread may ever run in it. Yet some of what it
must do runs other people's code: importing a job's module to learn it, and
rq's registry clean-up, which runs a failed job's failure callback (Frappe's
default one initialises a site and starts a Redis cache thread). Each runs in
a fork that answers on a pipe and exits at once; one that overstays its limit,
or is still at work when the pool is asked to stop, is killed.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from ..worker.process import set_process_title

log = logging.getLogger("rq_orchestrator")

LATE, STOPPING, FAILED = "late", "stopping", "failed"  # why an errand has no answer


def run_errand(task: Callable[[], bytes], title: str, limit: float,
               stop_asked: Callable[[], bool]) -> tuple[bytes | None, str]:
    """Run ``task`` in a fork titled ``title``: (its answer, "") or (None, LATE | STOPPING | FAILED).

    The answer must be short (it waits in the pipe until the fork has exited).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the errand: answer and leave, running nothing of the master's on the way out
        os.close(read)
        code = 1
        try:
            set_process_title(title)  # what `ps` shows: not a worker
            os.write(write, task())
            code = 0
        except BaseException:  # noqa: BLE001 - said on the way out, and the master learns it failed
            log.exception("%s failed", title)
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.monotonic() + limit
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        late, stopping = time.monotonic() > deadline, stop_asked()
        if late or stopping:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return None, STOPPING if stopping else LATE
        time.sleep(0.005)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    return (answer, "") if os.waitstatus_to_exitcode(done[1]) == 0 else (None, FAILED)
