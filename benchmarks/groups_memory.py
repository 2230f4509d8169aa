"""Memory of one master running two queue groups against two separate pools (issue: queue groups).

    python benchmarks/groups_memory.py --bench /path/to/frappe-bench   # a real bench, our app installed
    python benchmarks/groups_memory.py                                  # stand-in app, private Redis

Layout A: one master, `--queue short,default:2 --queue long,default,short:2` (4 workers).
Layout B: two masters, `--queue short,default --num-workers 2` and `--queue long,default,short --num-workers 2`.
Total PSS (from /proc/PID/smaps_rollup) of every process of the layout, idle, median of --runs
runs; both layouts are measured in the same run. Writes benchmarks/results/groups_memory[-bench].json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from rq_orchestrator.infra.memory import total_pss

ROOT = Path(__file__).resolve().parent.parent
ONE_MASTER = [["--queue", "short,default:2", "--queue", "long,default,short:2"]]
TWO_MASTERS = [["--queue", "short,default", "--num-workers", "2"], ["--queue", "long,default,short", "--num-workers", "2"]]


def pool_command(args: list[str], bench: Path | None, url: str | None) -> tuple[list[str], Path, dict[str, str]]:
    env = dict(os.environ)
    if bench is not None:
        return [str(bench / "env" / "bin" / "python"), "-m", "frappe.utils.bench_helper", "frappe", "worker-pool",
                *args], bench / "sites", env
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env["RQ_REDIS_URL"] = url or ""
    return [sys.executable, "-m", "rq_orchestrator", "worker-pool", "--preload", "benchmarks.heavy_app", *args], ROOT, env


def tree(pid: int) -> list[int]:
    try:
        process = psutil.Process(pid)
        return [pid, *(child.pid for child in process.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


@contextmanager
def running(layout: list[list[str]], bench: Path | None, url: str | None) -> Iterator[list[subprocess.Popen[bytes]]]:
    pools = []
    try:
        for args in layout:
            command, cwd, env = pool_command([*args, "--quiet"], bench, url)
            pools.append(subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield pools
    finally:
        for pool in pools:
            os.killpg(pool.pid, signal.SIGTERM)
        for pool in pools:
            pool.wait(60)


def measure(layout: list[list[str]], bench: Path | None, url: str | None, workers: int) -> int:
    with running(layout, bench, url) as pools:
        deadline = time.monotonic() + 120
        while sum(len(tree(p.pid)) - 1 for p in pools) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not start")
            time.sleep(0.5)
        time.sleep(8)  # let start-up settle
        pids = [pid for p in pools for pid in tree(p.pid)]
        return total_pss(pids) or 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = None
    url = None
    if args.bench is None:
        from rq_orchestrator.infra.embedded_redis import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        one, two = [], []
        for _ in range(args.runs):
            one.append(measure(ONE_MASTER, args.bench, url, 4))
            two.append(measure(TWO_MASTERS, args.bench, url, 4))
    finally:
        if server is not None:
            server.close()
    result = {
        "application": f"frappe bench {args.bench}" if args.bench else "benchmarks.heavy_app",
        "one_master_two_groups_pss_mb": round(statistics.median(one) / 2**20, 1),
        "two_pools_pss_mb": round(statistics.median(two) / 2**20, 1),
        "runs_mb": {"one_master": [round(x / 2**20, 1) for x in one], "two_pools": [round(x / 2**20, 1) for x in two]},
    }
    result["ratio"] = round(result["one_master_two_groups_pss_mb"] / result["two_pools_pss_mb"], 3)
    for key, value in result.items():
        print(f"{key:>30}: {value}")
    out = ROOT / "benchmarks" / "results" / f"groups_memory{'-bench' if args.bench else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
