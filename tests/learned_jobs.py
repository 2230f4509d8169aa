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
