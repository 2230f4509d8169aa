"""Memory of 8 workers: our pool against 8 separate `rq worker` processes and `rq worker-pool -n 8`.

"ours" is the pool as it is in the tree (the default pre-fork rehearsal in
the master, rq_orchestrator.master.prewarm, on); "no-prewarm" is the same pool
started with ``--no-prewarm``, so the two show what the rehearsal brings.
The targets apply to "ours"; the no-prewarm ratios are reported without one.

Every set-up preloads the same application (benchmarks/heavy_app.py): our
pool with ``--preload``, rq's with ``-c`` (its settings module, imported by
the `rq` command before its pool forks, and by each separate worker). For
each set-up the script waits until all workers are registered in Redis,
lets them settle, and sums PSS and USS (private clean + private dirty) over
the whole process tree (master, workers, rq's scheduler process, any job
process) from /proc/PID/smaps_rollup: idle, then again after --jobs no-op
jobs spread over the workers. Ratios are taken within each run; the table
shows medians over the runs, and each run starts the set-ups in a rotated
order.

    PYTHONPATH=. python benchmarks/memory.py --runs 3
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    TreeMemory,
    app_facts,
    enqueue_noops,
    finished_jobs,
    machine_facts,
    median,
    no_prewarm_pool_command,
    our_pool_command,
    print_table,
    redis_server,
    rq_pool_command,
    rq_worker_command,
    started,
    tree_memory,
    wait_for,
    wait_registered,
    write_json,
)

QUEUE = "bench"


@dataclass(frozen=True)
class Setup:
    name: str
    commands: Callable[[str, int], list[list[str]]]  # (url, workers) -> one command per process tree


SETUPS = {
    "ours": Setup("ours", lambda url, n: [our_pool_command(url, QUEUE, n)]),
    "no-prewarm": Setup("no-prewarm", lambda url, n: [no_prewarm_pool_command(url, QUEUE, n)]),
    "rq-pool": Setup("rq-pool", lambda url, n: [rq_pool_command(url, QUEUE, n)]),
    "separate": Setup("separate", lambda url, n: [rq_worker_command(url, QUEUE) for _ in range(n)]),
}


def measure_setup(setup: Setup, server: Any, workers: int, jobs: int, settle: float) -> dict[str, TreeMemory]:
    client = server.client()
    client.flushall()
    with started() as group:
        for i, command in enumerate(setup.commands(server.url, workers)):
            group.start(command, LOGS / f"memory-{setup.name}-{i}.log")
        wait_registered(client, group.pids, workers)
        time.sleep(settle)
        memory = {"idle": tree_memory(group.pids)}
        if jobs:
            enqueue_noops(client, QUEUE, jobs)
            wait_for(lambda: finished_jobs(client, QUEUE) >= jobs, 600, f"{jobs} jobs", 0.1)
            time.sleep(settle)
            memory["after_jobs"] = tree_memory(group.pids)
        return memory


def one_run(server: Any, order: list[str], workers: int, jobs: int, settle: float) -> dict[str, Any]:
    results = {name: measure_setup(SETUPS[name], server, workers, jobs, settle) for name in order}
    pairs = [("ours", "separate"), ("ours", "rq-pool"), ("no-prewarm", "separate"), ("no-prewarm", "rq-pool"),
             ("ours", "no-prewarm"), ("rq-pool", "separate")]
    ratios = {
        state: {f"{a}/{b}": round(results[a][state].pss_mb / results[b][state].pss_mb, 3) for a, b in pairs}
        for state in results[order[0]]
    }
    return {"order": order, "memory": results, "ratios": ratios}


def rotated(names: list[str], run: int) -> list[str]:
    k = run % len(names)
    return names[k:] + names[:k]


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    states = list(runs[0]["ratios"])
    totals = {
        state: {
            name: {metric: median(getattr(r["memory"][name][state], metric) for r in runs)
                   for metric in ("pss_mb", "uss_mb", "rss_mb")}
            for name in SETUPS
        }
        for state in states
    }
    ratios = {state: {k: median(r["ratios"][state][k] for r in runs) for k in runs[0]["ratios"][state]}
              for state in states}
    return {"totals": totals, "ratios": ratios}


def print_summary(result: dict[str, Any]) -> None:
    s = result["summary"]
    for state, totals in s["totals"].items():
        print(f"\n{state}: total over the process tree, MB (median of {len(result['runs'])} runs)")
        print_table(["set-up", "PSS", "USS", "RSS"],
                    [[name, t["pss_mb"], t["uss_mb"], t["rss_mb"]] for name, t in totals.items()])
    print("\nPSS ratios (each measured within one run; median over runs)")
    targets = {state: {f"ours/{other}": limit for other, limit in (("separate", separate), ("rq-pool", 0.80))}
               for state, separate in (("idle", 0.20), ("after_jobs", 0.23))}  # "ours" only
    rows = []
    for state, ratios in s["ratios"].items():
        for name, value in ratios.items():
            target = targets.get(state, {}).get(name)
            verdict = "" if target is None else ("met" if value <= target else "NOT met")
            rows.append([f"{state} {name}", value, "" if target is None else f"<= {target:.2f}", verdict])
    print_table(["ratio", "value", "target", ""], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each measurement")
    parser.add_argument("--json", type=Path, default=RESULTS / "memory.json")
    args = parser.parse_args()
    facts = {"machine": machine_facts(), "application": app_facts()}
    runs = []
    with redis_server() as server:
        for run in range(args.runs):
            order = rotated(list(SETUPS), run)
            print(f"run {run + 1}/{args.runs}: {', '.join(order)}", flush=True)
            runs.append(one_run(server, order, args.workers, args.jobs, args.settle))
            print(f"  ratios: {runs[-1]['ratios']}", flush=True)
    result = {**facts, "workers": args.workers, "jobs": args.jobs, "settle_s": args.settle,
              "runs": runs, "summary": summary(runs)}
    print_summary(result)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
