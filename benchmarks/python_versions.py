"""A worker's private memory on the Python running this script: run it once per Python to compare them.

Starts our pool (``--num-workers 2``, preloading benchmarks/heavy_app.py, as
memory.py does) on a private redis-server, waits until both workers are
registered, lets them settle, and reads each worker's USS (private clean +
private dirty, /proc/PID/smaps_rollup) and the whole tree's PSS: idle, then
after --jobs no-op jobs. Median over --runs runs. It also records whether the
master's log said that one of its memory-sharing steps is off on this Python.

    for v in 310 311 312 313; do PYTHONPATH=. /work/venvs/py$v/bin/python benchmarks/python_versions.py; done
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    descendants,
    enqueue_noops,
    finished_jobs,
    machine_facts,
    median,
    our_pool_command,
    private_mb,
    redis_server,
    registered_pids,
    started,
    tree_memory,
    wait_for,
    wait_registered,
    write_json,
)

QUEUE = "versions"
WORKERS = 2


def measure(master: int, client: Any) -> dict[str, float]:
    """Median USS of the workers, the master's USS, and the tree's PSS, in MB."""
    workers = sorted(registered_pids(client) & set(descendants([master])))
    return {"worker_uss_mb": round(median(private_mb(pid) for pid in workers), 2),
            "master_uss_mb": round(private_mb(master), 2),
            "tree_pss_mb": tree_memory([master]).pss_mb}


def one_run(run: int, jobs: int, settle: float) -> dict[str, Any]:
    log = LOGS / f"python-versions-{platform.python_version()}-{run}.log"
    log.unlink(missing_ok=True)
    with redis_server() as server, started() as group:
        client = server.client()
        master = group.start(our_pool_command(server.url, QUEUE, WORKERS), log).pid
        wait_registered(client, [master], WORKERS)
        time.sleep(settle)
        idle = measure(master, client)
        enqueue_noops(client, QUEUE, jobs)
        wait_for(lambda: finished_jobs(client, QUEUE) >= jobs, 120, f"{jobs} jobs", 0.1)
        time.sleep(settle)
        after = measure(master, client)
    off = [line.split("memory sharing: ", 1)[1] for line in log.read_text().splitlines() if "memory sharing: " in line]
    return {"idle": idle, "after_jobs": after, "steps_off": off}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=250)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each measurement")
    parser.add_argument("--json", type=Path, default=None, help=f"write here (default {RESULTS}/python-X.Y.json)")
    args = parser.parse_args()
    runs = [one_run(run, args.jobs, args.settle) for run in range(args.runs)]
    summary = {phase: {key: round(median(r[phase][key] for r in runs), 2) for key in runs[0][phase]}
               for phase in ("idle", "after_jobs")}
    import numpy
    import rq

    result = {"python": platform.python_version(), "rq": rq.__version__, "numpy": numpy.__version__,
              "steps_off": sorted({line for r in runs for line in r["steps_off"]}), "median": summary, "runs": runs,
              "machine": machine_facts()}
    print(f"Python {result['python']} (rq {result['rq']}): worker USS idle {summary['idle']['worker_uss_mb']} MB, "
          f"after {args.jobs} jobs {summary['after_jobs']['worker_uss_mb']} MB; master USS "
          f"{summary['idle']['master_uss_mb']} MB; tree PSS idle {summary['idle']['tree_pss_mb']} MB; "
          f"steps off: {result['steps_off'] or 'none'}")
    write_json(args.json or RESULTS / f"python-{sys.version_info[0]}.{sys.version_info[1]}.json", result)


if __name__ == "__main__":
    main()
