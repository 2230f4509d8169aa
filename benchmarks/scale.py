"""One master, many workers: start-up time, master CPU and Redis commands idle and under load, status and /metrics.

Our pool with ``--workers`` (128) workers on the stand-in application
(``--preload benchmarks.heavy_app``), alone on a private Redis (so Redis's
``INFO commandstats`` counts its commands only, as in ``idle.py``):

* start: from the master's start to the first and to the last worker
  registered in Redis;
* idle: a ``--seconds`` window once all are registered and settled: CPU of the
  master and of the whole tree (/proc), Redis commands per second, and the
  tree's PSS;
* load: ``--jobs-per-worker`` × workers ``sleep(--job-seconds)`` jobs
  enqueued at once, the same window measured while every worker is busy
  (jobs kept queued all along), and the time to drain them;
* surfaces: ``rq-orchestrator status`` (the whole command, a fresh
  interpreter, as a user runs it; and ``--json``) and ``GET /metrics``
  (``--metrics-port``), each timed ``--probes`` times, idle and under load.

    PYTHONPATH=. python benchmarks/scale.py --workers 128 --runs 3
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import time
import urllib.request
from typing import Any

from benchmarks._common import (
    BIN,
    LOGS,
    RESULTS,
    SLEEP,
    child_env,
    cpu_seconds,
    enqueue,
    machine_facts,
    median,
    our_pool_command,
    print_table,
    redis_server,
    registered_pids,
    descendants,
    started,
    tree_memory,
    wait_for,
    write_json,
)
from benchmarks.idle import calls, tree_cpu

SETTLE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def window(client: Any, roots: list[int], seconds: float) -> dict[str, Any]:
    """Master and tree CPU (% of a core) and Redis commands/s over ``seconds``."""
    master = roots[0]
    cpu0, m0, calls0, t0 = tree_cpu(roots), cpu_seconds(master), calls(client), time.monotonic()
    time.sleep(seconds)
    cpu1, m1, calls1, t1 = tree_cpu(roots), cpu_seconds(master), calls(client), time.monotonic()
    elapsed = t1 - t0
    counted = {k: n - calls0.get(k, 0) for k, n in calls1.items() if n > calls0.get(k, 0)}
    counted["info"] = counted.get("info", 1) - 1  # this script's first INFO
    return {"master_cpu_percent": round(100 * (m1 - m0) / elapsed, 2),
            "tree_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 2),
            "redis_commands_per_s": round(sum(counted.values()) / elapsed, 1),
            "top_commands": dict(sorted(counted.items(), key=lambda kv: -kv[1])[:8])}


def probe_times(url: str, metrics_port: int, probes: int) -> dict[str, float]:
    """Median wall time, ms, of `status`, `status --json` (whole commands) and GET /metrics."""
    def run(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, env=child_env(), capture_output=True, check=False)
        return time.perf_counter() - start

    def get() -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30) as response:
            response.read()
        return time.perf_counter() - start

    status = [BIN / "rq-orchestrator", "status", "--url", url]
    return {"status_ms": round(1000 * median(run([str(a) for a in status]) for _ in range(probes)), 1),
            "status_json_ms": round(1000 * median(run([*map(str, status), "--json"]) for _ in range(probes)), 1),
            "metrics_ms": round(1000 * median(get() for _ in range(probes * 4)), 2)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    with redis_server() as server, started() as group:
        client = server.client()
        command = our_pool_command(server.url, "default", args.workers, "--metrics-port", str(port))
        t0 = time.monotonic()
        group.start(command, LOGS / f"scale-{args.workers}.log")
        roots = group.pids

        def count() -> int:
            return len(registered_pids(client) & set(descendants(roots)))

        wait_for(lambda: count() >= 1, 300, "the first worker", 0.02)
        first = time.monotonic() - t0
        wait_for(lambda: count() >= args.workers, 600, f"{args.workers} workers", 0.05)
        all_in = time.monotonic() - t0
        time.sleep(SETTLE_SECONDS)
        memory = tree_memory(roots)
        idle = window(client, roots, args.seconds) | probe_times(server.url, port, args.probes)
        jobs = args.workers * args.jobs_per_worker
        t_load = time.monotonic()
        enqueue(client, "default", SLEEP, jobs, seconds=args.job_seconds)
        time.sleep(2 * args.job_seconds)  # every worker has a job in hand
        load = window(client, roots, args.seconds) | probe_times(server.url, port, args.probes)
        wait_for(lambda: int(client.zcard("rq:finished:default")) >= jobs, 900, "the jobs", 0.2)
        drained = time.monotonic() - t_load
        return {"start_first_s": round(first, 2), "start_all_s": round(all_in, 2), "idle": idle, "load": load,
                "jobs": jobs, "drain_s": round(drained, 1),
                "jobs_per_s": round(jobs / drained, 1), "idle_pss_mb": memory.pss_mb,
                "processes": memory.processes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--jobs-per-worker", type=int, default=8)
    parser.add_argument("--job-seconds", type=float, default=4.0)
    args = parser.parse_args()
    runs = []
    for run in range(args.runs):
        runs.append(measure(args))
        print(f"run {run + 1}: {runs[-1]}", flush=True)
    report(args, runs)


def spread(values: list[float]) -> str:
    return f"{median(values)} ({min(values)}–{max(values)})"


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    rows = [["start: first worker registered, s", spread([r["start_first_s"] for r in runs])],
            [f"start: all {args.workers} registered, s", spread([r["start_all_s"] for r in runs])],
            ["idle tree PSS, MB", spread([r["idle_pss_mb"] for r in runs])]]
    for state in ("idle", "load"):
        for key, label in (("master_cpu_percent", "master CPU, % of a core"), ("tree_cpu_percent", "tree CPU, %"),
                           ("redis_commands_per_s", "Redis commands/s"), ("status_ms", "`status`, ms"),
                           ("status_json_ms", "`status --json`, ms"), ("metrics_ms", "GET /metrics, ms")):
            rows.append([f"{state}: {label}", spread([r[state][key] for r in runs])])
    rows.append([f"{runs[0]['jobs']} x sleep({args.job_seconds}) jobs drained, jobs/s",
                 spread([r["jobs_per_s"] for r in runs])])
    print_table(["measure (median, min–max)", f"{args.workers} workers, {len(runs)} runs"], rows)
    write_json(RESULTS / f"scale-{args.workers}.json",
               {"machine": machine_facts(), "args": vars(args), "runs": runs,
                "medians": {row[0]: row[1] for row in rows}, "stdev_start_all": statistics.pstdev(
                    [r["start_all_s"] for r in runs])})


if __name__ == "__main__":
    main()
