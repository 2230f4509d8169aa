"""Spawn latency: from the decision to add a worker until that worker is registered and takes a job.

Measured from the outside, the same way for every set-up. The pool runs two
workers kept busy by long jobs, so a no-op "marker" job enqueued right after
the decision can only be taken by the new worker. For each sample:

* ours, added: send SIGTTIN to the master (it adds one worker at once) at t0;
  the same again with the pool started with ``--no-prewarm`` (no pre-fork
  rehearsal in the master), which shows whether the rehearsal changes it;
* rq's pool (which cannot be resized): SIGKILL its idle worker at t0, so it
  must notice and start a replacement (ours would too, at once, but backs off
  when workers keep dying, so repeated kills would measure the back-off); the
  marker is enqueued once Redis has dropped the dead worker's connection, or
  its pending blocking pop could swallow it (the worker's scheduler process,
  if it runs one, holds a copy of that socket, so it is killed with it);
* a separate `rq worker`: start the process at t0.

Then read from Redis the new worker's ``birth`` (written when it registered)
and the marker job's ``started_at`` (written by the worker that took it).
Both are wall-clock times written by the workers; t0 is taken here on the
same clock. Between samples, ours retires the extra worker with SIGTTOU.

    PYTHONPATH=. python benchmarks/spawn.py --samples 9
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    SLEEP,
    Started,
    descendants,
    enqueue,
    machine_facts,
    median,
    no_prewarm_pool_command,
    our_pool_command,
    parse_rq_time,
    print_table,
    redis_server,
    registered_pids,
    rq_pool_command,
    rq_worker_command,
    started,
    wait_for,
    wait_registered,
    write_json,
)

QUEUE = "spawn"

BUSY_SECONDS = 3600.0


def marker(client: Any) -> str:
    from rq import Queue

    return str(Queue(QUEUE, connection=client).enqueue("benchmarks.heavy_app.noop", result_ttl=3600).id)


def sample(client: Any, act: Callable[[], Any], before_marker: Callable[[], Any] = lambda: None) -> dict[str, float]:
    """Act (t0), enqueue a marker job, and return the latencies of the worker that took it."""
    t0 = time.time()
    act()
    before_marker()
    key = f"rq:job:{marker(client)}"
    wait_for(lambda: client.hget(key, "started_at"), 60, "the marker job to start", 0.005)
    worker = client.hget(key, "worker_name")
    birth = parse_rq_time(client.hget(f"rq:worker:{worker.decode()}", "birth")) if worker else None
    started_at = parse_rq_time(client.hget(key, "started_at"))
    assert started_at is not None
    return {
        "registered_ms": round((birth - t0) * 1000, 1) if birth is not None else float("nan"),
        "job_started_ms": round((started_at - t0) * 1000, 1),
    }


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its children: an rq worker's scheduler process holds a copy of its socket."""
    for victim in descendants([pid]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def wait_disconnected(client: Any, name: str) -> None:
    wait_for(lambda: name not in {c.get("name") for c in client.client_list()}, 10,
             "the dead worker's connection to close", 0.002)


def busy_pool(group: Started, client: Any, command: list[str], name: str, workers: int) -> int:
    """Start a pool, wait for its workers, occupy all but one with long jobs; returns the master's pid."""
    proc = group.start(command, LOGS / f"spawn-{name}.log")
    wait_registered(client, [proc.pid], workers)
    enqueue(client, QUEUE, SLEEP, 2, seconds=BUSY_SECONDS)
    wait_for(lambda: client.zcard(f"rq:wip:{QUEUE}") + client.zcard(f"rq:started:{QUEUE}") >= 2, 30,
             "2 busy workers", 0.05)
    return proc.pid


def idle_worker(client: Any, master: int) -> tuple[int, str]:
    """(pid, name) of a registered worker of ``master`` with no job."""
    tree = set(descendants([master]))
    for key in client.smembers("rq:workers"):
        pid = client.hget(key, "pid")
        if pid and int(pid) in tree and not client.hget(key, "current_job"):
            state = client.hget(key, "state")
            if state in (b"idle", b"started"):
                return int(pid), key.decode().removeprefix("rq:worker:")
    raise RuntimeError("no idle worker")


def ours_added(server: Any, samples: int, command: Callable[..., list[str]], name: str) -> list[dict[str, float]]:
    client = server.client()
    client.flushall()
    results = []
    with started() as group:
        master = busy_pool(group, client, command(server.url, QUEUE, 2), name, 2)
        for _ in range(samples):
            results.append(sample(client, lambda: os.kill(master, signal.SIGTTIN)))
            os.kill(master, signal.SIGTTOU)  # retire the idle newcomer; the busy two stay
            wait_for(lambda: len(registered_pids(client) & set(descendants([master]))) == 2, 30, "the retirement", 0.05)
    return results


def replaced(server: Any, samples: int, command: list[str], name: str) -> list[dict[str, float]]:
    client = server.client()
    client.flushall()
    results = []
    with started() as group:
        master = busy_pool(group, client, command, name, 3)
        for _ in range(samples):
            pid, name = idle_worker(client, master)
            # Redis may still hand a job to the dead worker's pending blocking pop: enqueue the marker
            # once its connection is gone (a few ms, far less than any replacement takes).
            results.append(sample(client, lambda p=pid: kill_tree(p), lambda n=name: wait_disconnected(client, n)))
            time.sleep(1.5)  # let the replacement settle before the next victim is chosen
    return results


def separate(server: Any, samples: int) -> list[dict[str, float]]:
    client = server.client()
    client.flushall()
    results = []
    for i in range(samples):
        with started() as group:
            log = LOGS / f"spawn-separate-{i}.log"
            results.append(sample(client, lambda: group.start(rq_worker_command(server.url, QUEUE), log)))  # noqa: B023
    return results


def summarize(samples: list[dict[str, float]]) -> dict[str, float]:
    return {f"{k}_median": median(s[k] for s in samples) for k in samples[0]} | {
        f"{k}_max": max(s[k] for s in samples) for k in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--json", type=Path, default=RESULTS / "spawn.json")
    args = parser.parse_args()
    n = args.samples
    with redis_server() as server:
        cases = {
            "ours: SIGTTIN adds a worker": lambda: ours_added(server, n, our_pool_command, "ours"),
            "ours --no-prewarm: SIGTTIN adds a worker": lambda: ours_added(server, n, no_prewarm_pool_command,
                                                                            "no-prewarm"),
            "rq worker-pool: a killed worker is replaced": lambda: replaced(
                server, n, rq_pool_command(server.url, QUEUE, 3), "rq-pool-replace"),
            "separate rq worker: process start": lambda: separate(server, n),
        }
        results = {}
        for name, run in cases.items():
            print(name, flush=True)
            samples = run()
            results[name] = {"samples": samples, **summarize(samples)}
    print_table(["case", "registered, ms (median)", "took a job, ms (median)", "took a job, ms (max)"],
                [[name, r["registered_ms_median"], r["job_started_ms_median"], r["job_started_ms_max"]]
                 for name, r in results.items()])
    write_json(args.json, {"machine": machine_facts(), "samples_per_case": n, "cases": results,
                           "target": "ours: job started <= 50 ms after the decision (median)"})


if __name__ == "__main__":
    main()
