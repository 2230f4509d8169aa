"""Jobs whose module the pool's master learns (tests/test_learning.py): each tells which process imported it."""

import os

IMPORTED_BY = os.getpid()  # the master's pid once the master has learned this module


def imported_by() -> int:
    return IMPORTED_BY


def hold(seconds: float) -> int:
    """Stay busy ``seconds``, then say which process imported this module."""
    import time

    time.sleep(seconds)
    return IMPORTED_BY


def hold_alone(seconds: float, lock: str) -> bool:
    """Stay busy ``seconds`` holding ``lock`` (a file); False if another job held it: two ran at once."""
    import time

    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    try:
        time.sleep(seconds)
    finally:
        os.close(fd)
        os.unlink(lock)
    return True
