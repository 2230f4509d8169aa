"""What idle workers cost: Redis commands per second and CPU, ours beside rq's pool and separate `rq worker`s.

Each set-up runs alone on a private Redis of its own, so Redis's
``INFO commandstats`` (read before and after a --seconds window, once all
workers are registered and have settled) counts its commands only; the two
INFO calls of this script are subtracted. CPU is user + system time of every
process of the set-up's tree over the same window (/proc), and of the master
alone where there is one. For our pools, the time from SIGTTOU (retire one
idle worker now) to that worker's exit is measured at the end. Our pools run with their defaults (rq's scheduler
in the master included); `rq worker` runs as rq starts it (no scheduler).
``--acl`` runs our pools under a Redis user made from Frappe's rules for a
bench's rq user (``+@all -@admin``, keys ``rq:[^q]*``, ``rq:queues``,
``rq:queue:<bench>:*``, no channels), on the queue ``<bench>:default``.

    PYTHONPATH=. python benchmarks/idle.py --seconds 30
    PYTHONPATH=. python benchmarks/idle.py --seconds 30 --only "ours, 64 workers"
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    cpu_seconds,
    descendants,
    machine_facts,
    our_pool_command,
    print_table,
    redis_server,
    rq_pool_command,
    rq_worker_command,
    started,
    wait_registered,
    write_json,
)

BENCH_ID = "benchx"
ACL_USER, ACL_PASSWORD = "benchx", "benchx-secret"
SETTLE_SECONDS = 5.0  # after the last registration: start-up traffic (maintenance, first publish) is over


def frappe_rq_user(client: Any) -> None:
    """The ACL user that Frappe's `bench create-rq-users` makes for a bench (frappe/utils/redis_queue.py)."""
    client.execute_command(
        "ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "resetchannels",
        "~rq:[^q]*", "~rq:queues", f"~rq:queue:{BENCH_ID}:*", "+@all", "-@admin",
    )


def acl_url(url: str) -> str:
    return url.replace("redis://", f"redis://{ACL_USER}:{ACL_PASSWORD}@", 1)


def calls(client: Any) -> dict[str, int]:
    """Calls of each command so far, as Redis counts them (commands run by scripts included)."""
    return {name.removeprefix("cmdstat_"): stats["calls"] for name, stats in client.info("commandstats").items()}


def tree_cpu(roots: list[int]) -> float:
    total = 0.0
    for pid in descendants(roots):
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass  # a process that ended in between: idle set-ups have none
    return total


def measure(name: str, commands: Callable[[str, str], list[list[str]]], workers: int, seconds: float,
            acl: bool) -> dict[str, Any]:
    with redis_server() as server, started() as group:
        client = server.client()
        url, queue = server.url, "default"
        if acl:
            frappe_rq_user(client)
            url, queue = acl_url(url), f"{BENCH_ID}:default"
        for i, command in enumerate(commands(url, queue)):
            group.start(command, LOGS / f"idle-{name.replace(' ', '_').replace(',', '')}-{i}.log")
        wait_registered(client, group.pids, workers)
        time.sleep(SETTLE_SECONDS)
        roots = group.pids
        master = roots[0] if len(roots) == 1 else None
        cpu0, master0, calls0, t0 = tree_cpu(roots), master and cpu_seconds(master), calls(client), time.monotonic()
        time.sleep(seconds)
        cpu1, master1, calls1, t1 = tree_cpu(roots), master and cpu_seconds(master), calls(client), time.monotonic()
        elapsed = t1 - t0
        window = {k: n - calls0.get(k, 0) for k, n in calls1.items() if n > calls0.get(k, 0)}
        window["info"] -= 1  # this script's first INFO (its second is not counted yet when Redis answers)
        retire_ms = retire_latency_ms(master) if master is not None and name.startswith("ours") else None
        return {
            "setup": name, "workers": workers, "acl": acl, "seconds": round(elapsed, 1),
            "redis_commands_per_s": round(sum(window.values()) / elapsed, 2),
            "tree_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 3),
            "master_cpu_percent": None if master is None else round(100 * (master1 - master0) / elapsed, 3),
            "idle_worker_retired_after_ms": retire_ms,
            "commands_in_window": {k: n for k, n in sorted(window.items(), key=lambda kv: -kv[1]) if n},
        }


def retire_latency_ms(master: int) -> float:
    """SIGTTOU retires one idle worker: milliseconds until one of the master's children has exited."""
    import signal

    import psutil

    def live_children() -> set[int]:
        live = set()
        for child in psutil.Process(master).children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.add(child.pid)
            except psutil.NoSuchProcess:  # exited and reaped between the two looks
                pass
        return live

    children = live_children()
    started = time.monotonic()
    os.kill(master, signal.SIGTTOU)
    while children <= live_children():
        time.sleep(0.002)
    return round((time.monotonic() - started) * 1000, 1)


def setups(workers: int) -> dict[str, tuple[Callable[[str, str], list[list[str]]], int]]:
    return {
        f"ours, {workers} workers": (lambda url, q: [our_pool_command(url, q, workers)], workers),
        f"rq worker-pool, {workers} workers": (lambda url, q: [rq_pool_command(url, q, workers)], workers),
        f"{workers} x rq worker": (lambda url, q: [rq_worker_command(url, q) for _ in range(workers)], workers),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--only", action="append", help="run only these set-ups (by name)")
    parser.add_argument("--acl", action="store_true", help="also run our pools under Frappe's rq ACL user")
    args = parser.parse_args()
    plan = setups(args.workers)
    plan[f"ours, {8 * args.workers} workers"] = (
        lambda url, q: [our_pool_command(url, q, 8 * args.workers)], 8 * args.workers)
    rows = []
    for name, (commands, workers) in plan.items():
        if args.only and name not in args.only:
            continue
        for acl in ([False, True] if args.acl and name.startswith("ours") else [False]):
            row = measure(name, commands, workers, args.seconds, acl)
            rows.append(row)
            print(f"{name}{' (ACL user)' if acl else ''}: {row['redis_commands_per_s']} commands/s, "
                  f"tree CPU {row['tree_cpu_percent']} %, master {row['master_cpu_percent']} %", flush=True)
    print_table(["set-up", "ACL user", "Redis commands/s", "tree CPU % of a core", "master CPU %",
                 "idle worker retired after (ms)"],
                [[r["setup"], "yes" if r["acl"] else "", r["redis_commands_per_s"], r["tree_cpu_percent"],
                  "-" if r["master_cpu_percent"] is None else r["master_cpu_percent"],
                  "-" if r["idle_worker_retired_after_ms"] is None else r["idle_worker_retired_after_ms"]]
                 for r in rows])
    write_json(RESULTS / "idle.json", {"machine": machine_facts(), "seconds": args.seconds, "rows": rows})


if __name__ == "__main__":
    main()
