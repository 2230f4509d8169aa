"""Throughput: 5,000 no-op jobs on 2 workers in burst mode, our pool against `rq worker-pool -n 2`.

The jobs are enqueued first; then the pool is started with --burst and the
clock runs from its start until its master exits (application import,
forking, all jobs, shutdown: the whole run). The master's exit is when
waitpid returns here; the last worker's is the latest ``death`` time the
workers wrote to Redis (rq writes it as its last act before the process
exits), on the same clock. Each run measures every pool, in a
rotated order; ratios are within a run, the table shows medians. Our pool
skips its pre-fork rehearsal (prewarm) in burst mode, so there is no
``--no-prewarm`` set-up here: it would be the same as "ours".

    PYTHONPATH=. python benchmarks/throughput.py --runs 5
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    enqueue_noops,
    finished_jobs,
    machine_facts,
    median,
    our_pool_command,
    parse_rq_time,
    print_table,
    redis_server,
    rq_pool_command,
    started,
    write_json,
)

QUEUE = "throughput"

POOLS: dict[str, Callable[..., list[str]]] = {
    "ours": our_pool_command,
    "rq-pool": rq_pool_command,
}


def last_worker_death(client: Any) -> float | None:
    """When the last worker of this run registered its death (rq writes it just before the process exits)."""
    deaths = [parse_rq_time(client.hget(key, "death")) for key in registered_workers_ever(client)]
    known = [d for d in deaths if d is not None]
    return max(known) if known else None


def registered_workers_ever(client: Any) -> list[str]:
    """Keys of every worker hash still in Redis (a dead worker's stays for a minute)."""
    return [k.decode() for k in client.scan_iter("rq:worker:*", count=1000) if b":" not in k[len("rq:worker:"):]]


def one_pool(server: Any, name: str, jobs: int, workers: int) -> dict[str, float]:
    client = server.client()
    client.flushall()
    enqueue_noops(client, QUEUE, jobs)
    cpu0 = _children_cpu()
    with started() as group:
        t0 = time.time()
        proc = group.start(POOLS[name](server.url, QUEUE, workers, "--burst"), LOGS / f"throughput-{name}.log")
        proc.wait(600)
        master_exit = time.time()
    cpu = _children_cpu() - cpu0
    done = finished_jobs(client, QUEUE)
    if done != jobs:
        raise RuntimeError(f"{name}: {done} of {jobs} jobs finished")
    last_worker = last_worker_death(client) or master_exit
    return {
        "seconds": round(master_exit - t0, 3),
        "jobs_per_second": round(jobs / (master_exit - t0), 1),
        "master_exit_after_last_worker_s": round(master_exit - last_worker, 3),
        "exit_status": proc.returncode,
        "tree_cpu_s": round(cpu, 3),
    }


def _children_cpu() -> float:
    """User + system CPU of every process this script has reaped, with what they reaped (the whole pool tree)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=RESULTS / "throughput.json")
    args = parser.parse_args()
    names = list(POOLS)
    runs = []
    with redis_server() as server:
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            result = {name: one_pool(server, name, args.jobs, args.workers) for name in order}
            ratios = {"ours/rq-pool": round(result["rq-pool"]["seconds"] / result["ours"]["seconds"], 3)}
            runs.append({"order": order, "pools": result, "throughput_ratios": ratios})
            print(f"run {run + 1}: " + ", ".join(f"{n} {r['seconds']} s" for n, r in result.items()) + f" {ratios}",
                  flush=True)
    summary = {
        name: {key: median(r["pools"][name][key] for r in runs)
               for key in ("seconds", "jobs_per_second", "master_exit_after_last_worker_s", "tree_cpu_s")}
        for name in names
    }
    ratios = {key: median(r["throughput_ratios"][key] for r in runs) for key in runs[0]["throughput_ratios"]}
    print_table(["pool", "whole run, s", "jobs/s", "master exit after last worker, s", "CPU of the tree, s"],
                [[name, s["seconds"], s["jobs_per_second"], s["master_exit_after_last_worker_s"], s["tree_cpu_s"]]
                 for name, s in summary.items()])
    print_table(["throughput ratio (same run, median)", "value", "target"],
                [[k, v, ">= 0.95"] for k, v in ratios.items()])
    write_json(args.json, {"machine": machine_facts(), "jobs": args.jobs, "workers": args.workers, "runs": runs,
                           "summary": summary, "throughput_ratios": ratios})


if __name__ == "__main__":
    main()
