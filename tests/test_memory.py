"""A pool's memory as the kernel accounts it: the processes named and their children (a worker's job process)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from rq_orchestrator.infra.memory import proportional_set_size, total_pss, with_children

HELD = 64 << 20  # bytes the child writes and holds


@pytest.mark.skipif(proportional_set_size(os.getpid()) is None, reason="no /proc/PID/smaps_rollup")
def test_the_children_of_the_processes_named_are_counted():
    child = subprocess.Popen([sys.executable, "-c", f"import sys, time; held = b'x' * {HELD}; print(flush=True); "
                              "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()  # the memory is written
        time.sleep(0.1)
        assert child.pid in with_children([os.getpid()])
        alone = proportional_set_size(os.getpid())
        assert total_pss([os.getpid()]) - alone > HELD * 0.9
        twice = total_pss([os.getpid(), child.pid]) - total_pss([os.getpid()])
        assert abs(twice) < HELD / 8  # named twice, counted once
    finally:
        child.kill()
        child.wait()
