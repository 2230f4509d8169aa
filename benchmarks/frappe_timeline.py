"""Where a tiny Frappe job's time goes, step by step, as Redis sees one pool worker run it (MONITOR).

One worker of `bench worker-pool --num-workers 1` (fork mode, or with
``--no-fork``) takes ``--jobs`` × ``frappe.enqueue(test_func)``; Redis's
MONITOR stamps every command with its time and client. For each pair of
consecutive commands (the enqueuing process's own left out) the table gives
how often it occurred and the median time between them: what the worker, its
job process, Frappe and rq did in between. The largest steps of fork mode: the
fork (the pop's ``HGETALL`` of the job to the job process's first command on
its own connection) and the job process's exit (its success transaction to the
worker's next command). MONITOR itself slows Redis a little; the figures are
for comparing steps, not set-ups.

    PYTHONPATH=. python benchmarks/frappe_timeline.py --bench /work/benches/fb15
    PYTHONPATH=. python benchmarks/frappe_timeline.py --bench /work/benches/fb15 --no-fork
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import LOGS, print_table, started, wait_registered
from benchmarks.frappe_bench import helper, other_workers_running
from benchmarks.frappe_tiny_jobs import ENQUEUE, JOB, bench_python, output, queue_client

END = "ECHO frappe-timeline-end"


def step(command: str) -> str:
    """A command reduced to what names the step: the verb, the kind of key, and a hash's field."""
    words = command.split()
    name = words[0]
    if len(words) > 1:
        name += " " + ":".join(words[1].split(":")[:2])
    if words[0] in ("HSET", "HGET", "HDEL") and len(words) > 2:
        name += " " + words[2]
    return name[:60]


def record(client: Any, seen: list[tuple[float, str, str]], ready: threading.Event) -> None:
    with client.monitor() as monitor:
        ready.set()
        for entry in monitor.listen():
            if entry["command"] == END:
                return
            seen.append((entry["time"], f"{entry.get('client_address')}:{entry.get('client_port')}", entry["command"]))


def timeline(args: argparse.Namespace) -> list[tuple[float, str, str]]:
    client = queue_client(args.bench)
    command = ["frappe", "--site", args.site, "worker-pool", "--num-workers", "1", *(["--no-fork"] * args.no_fork)]
    seen: list[tuple[float, str, str]] = []
    with started() as group:
        group.start(helper(args.bench, *command), LOGS / "frappe-timeline.log", cwd=args.bench / "sites")
        wait_registered(client, group.pids, 1, timeout=180)
        time.sleep(args.settle)
        ready = threading.Event()
        listener = threading.Thread(target=record, args=(client, seen, ready), daemon=True)
        listener.start()
        ready.wait(10)
        output(bench_python(args.bench, ENQUEUE, args.site, str(args.jobs), str(args.jobs), JOB))
        time.sleep(args.settle)
        client.echo(END.split()[1])
        listener.join(30)
    return seen


def steps(seen: list[tuple[float, str, str]]) -> list[list[Any]]:
    enqueuer = {who for _, who, command in seen if command.startswith("RPUSH rq:queue")}
    ours = [event for event in seen if event[1] not in enqueuer and not event[2].startswith("PING")]
    gaps: dict[tuple[str, str, bool], list[float]] = {}
    for (t0, who0, c0), (t1, who1, c1) in zip(ours, ours[1:]):
        gaps.setdefault((step(c0), step(c1), who0 == who1), []).append((t1 - t0) * 1000)
    rows = [[len(g), round(statistics.median(g), 3), "same" if same else "other", a, b]
            for (a, b, same), g in gaps.items() if len(g) >= 3]
    return sorted(rows, key=lambda row: -row[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("/work/benches/fb15"))
    parser.add_argument("--site", default="test.local")
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--no-fork", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    busy = other_workers_running(args.bench)
    if busy:
        raise SystemExit("workers already run in this bench (another benchmark?):\n" + "\n".join(busy))
    rows = steps(timeline(args))[:args.top]
    print_table(["times", "median ms", "ms a job", "client", "after", "before"],
                [[r[0], r[1], round(r[1] * r[0] / args.jobs, 3), *r[2:]] for r in rows])


if __name__ == "__main__":
    main()
