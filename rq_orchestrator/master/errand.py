"""Code the master does not own, run in a throwaway fork of it: whatever threads it starts die with that fork.

The master forks workers, so no thread may ever run in it. Yet some of what it
must do runs other people's code: importing a job's module to learn it, and
rq's registry clean-up, which runs a failed job's failure callback (Frappe's
default one initialises a site and starts a Redis cache thread). Each runs in
a fork that reports on a pipe as it goes and exits; one that overstays its
limit, or is still at work when the pool is asked to stop, is killed, and the
master keeps what it had reported by then.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable

from ..worker.process import set_parent_death_signal, set_process_title

log = logging.getLogger("rq_orchestrator")

LATE, STOPPING, FAILED = "late", "stopping", "failed"  # why an errand did not finish

Say = Callable[[bytes], None]


def run_errand(task: Callable[[Say], None], title: str, limit: float,
               stop_asked: Callable[[], bool]) -> tuple[bytes, str]:
    """Run ``task(say)`` in a fork titled ``title``: (all it said, "") if it finished, else (what it said, why not)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the errand: report and leave, running nothing of the master's on the way out
        os.close(read)
        code = 1
        try:
            _leave_the_masters_signals()
            set_process_title(title)  # what `ps` shows: not a worker
            task(lambda data: _write_all(write, data))
            code = 0
        except BaseException:  # noqa: BLE001 - said on the way out, and the master learns it failed
            log.exception("%s failed", title)
        finally:
            os._exit(code)
    os.close(write)
    os.set_blocking(read, False)  # read as it comes (the pipe never fills), and never wait on a straggler's copy
    said = bytearray()
    deadline = time.monotonic() + limit
    try:
        while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
            said += _read_ready(read)
            late, stopping = time.monotonic() > deadline, stop_asked()
            if late or stopping:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return bytes(said + _read_ready(read)), STOPPING if stopping else LATE
            time.sleep(0.005)
        said += _read_ready(read)
    finally:
        os.close(read)
    return bytes(said), "" if os.waitstatus_to_exitcode(done[1]) == 0 else FAILED


def _leave_the_masters_signals() -> None:
    """Die of a TERM or INT (the master's handlers would only queue it), never wake the master, die with it."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    set_parent_death_signal(signal.SIGKILL)  # a master killed mid-errand leaves no errand holding its sockets


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _read_ready(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
