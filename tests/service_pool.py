"""A pool of one worker with a service child, for tests/test_service_child.py.

`python service_pool.py URL SERVICE` runs the master in the foreground, as
`worker-pool` would, with the test callable SERVICE (a name below) as its
service child, named `test-service`; metrics on a free port.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from redis import Redis

from rq_orchestrator.cli.options import setup_logging
from rq_orchestrator.infra.config import GroupSpec, PoolConfig, ServiceSpec
from rq_orchestrator.master.pool import Pool

STARTS = "test:service:starts"  # list: "pid ppid" of every start of the service


def record_start() -> None:
    Redis.from_url(sys.argv[1]).rpush(STARTS, f"{os.getpid()} {os.getppid()}")


def sleeper() -> None:
    """Record the start, then run until killed."""
    record_start()
    while True:
        time.sleep(1)


def stubborn() -> None:
    """Record the start, ignore TERM, run until killed."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sleeper()


def quitter() -> None:
    """Record the start and end at once (exit status 0)."""
    record_start()


if __name__ == "__main__":
    url, service = sys.argv[1], globals()[sys.argv[2]]
    setup_logging("INFO")
    config = PoolConfig(groups=(GroupSpec(("default",), 1, 1),), scaling_period=0.2, utilization_window=1.0,
                        prewarm=False, metrics_port=0, services=(ServiceSpec("test-service", service),))
    sys.exit(Pool(config, Redis.from_url(url)).run())
