"""Memory against pool size, 1 to 16 idle workers: our pool against separate `rq worker` processes.

One pass per set-up: our pool starts with one worker and gets one more with
every SIGTTIN; separate workers are started one more at a time. After each
step the script waits until that many workers are registered, lets them
settle, and sums PSS over the process trees (as memory.py does). Draws
benchmarks/results/memory-vs-workers.png and writes the numbers as JSON.

    PYTHONPATH=. python benchmarks/memory_chart.py --max-workers 16
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    Started,
    machine_facts,
    our_pool_command,
    print_table,
    redis_server,
    rq_worker_command,
    started,
    tree_memory,
    wait_registered,
    write_json,
)

QUEUE = "chart"


def pool_steps(command: Callable[..., list[str]], name: str) -> Callable[[Started, Any, int], Iterator[int]]:
    def steps(group: Started, server: Any, most: int) -> Iterator[int]:
        proc = group.start(command(server.url, QUEUE, 1), LOGS / f"chart-{name}.log")
        for size in range(1, most + 1):
            if size > 1:
                os.kill(proc.pid, signal.SIGTTIN)
            yield size

    return steps


def separate_steps(group: Started, server: Any, most: int) -> Iterator[int]:
    for size in range(1, most + 1):
        group.start(rq_worker_command(server.url, QUEUE), LOGS / f"chart-separate-{size}.log")
        yield size


SETUPS = {
    "ours": pool_steps(our_pool_command, "ours"),
    "separate": separate_steps,
}


def curve(server: Any, name: str, most: int, settle: float) -> list[dict[str, float]]:
    client = server.client()
    client.flushall()
    points = []
    with started() as group:
        for size in SETUPS[name](group, server, most):
            wait_registered(client, group.pids, size)
            time.sleep(settle)
            memory = tree_memory(group.pids)
            points.append({"workers": size, "pss_mb": memory.pss_mb, "uss_mb": memory.uss_mb})
            print(f"  {name} {size}: {memory.pss_mb} MB", flush=True)
    return points


def draw(curves: dict[str, list[dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"ours": "our pool", "separate": "separate `rq worker` processes"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, points in curves.items():
        ax.plot([p["workers"] for p in points], [p["pss_mb"] for p in points], marker="o", label=labels[name])
    ax.set_xlabel("workers")
    ax.set_ylabel("total PSS of the process tree, MB")
    ax.set_title("Idle memory against pool size (stand-in application preloaded)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"drew {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-workers", type=int, default=16)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "memory_chart.json")
    parser.add_argument("--png", type=Path, default=RESULTS / "memory-vs-workers.png")
    args = parser.parse_args()
    with redis_server() as server:
        curves = {name: curve(server, name, args.max_workers, args.settle) for name in SETUPS}
    sizes = [p["workers"] for p in curves["ours"]]
    print_table(["workers", *curves], [[size, *(c[i]["pss_mb"] for c in curves.values())] for i, size in enumerate(sizes)])
    draw(curves, args.png)
    write_json(args.json, {"machine": machine_facts(), "settle_s": args.settle, "curves": curves})


if __name__ == "__main__":
    main()
