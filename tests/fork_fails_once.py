"""Preloaded by a test master: its first fork of a child fails with EAGAIN, as when the machine is out of processes."""

import errno
import os
import sys

_fork = os.fork
_failed = False


def _fork_failing_once() -> int:
    global _failed
    if not _failed and sys._getframe(1).f_code.co_name == "_fork_child":  # not the master's other forks (probes)
        _failed = True
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
    return _fork()


os.fork = _fork_failing_once
