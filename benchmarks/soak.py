"""Soak test: a churning pool under load, workers SIGKILLed, Redis restarted; count every job.

Not part of CI. Run from the repository root:

    python benchmarks/soak.py --minutes 5

It starts its own persistent redis-server, a pool that scales every 0.2 s,
and for the given time enqueues jobs of random length (some with a Retry),
SIGKILLs a random busy worker every few seconds and restarts Redis once.
At the end every job must be finished, or failed with a reason: `lost`
counts the others and must be 0. Prints a table and writes
benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
from rq import Queue, Retry
from rq.job import Job

from rq_orchestrator.infra.embedded_redis import RedisServer
from rq_orchestrator.master.state import read_pools

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def start_pool(url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "RQ_REDIS_URL": url}
    args = [sys.executable, "-m", "rq_orchestrator", "worker-pool", "--name", "soak", "--min-workers", "1",
            "--max-workers", "6", "--scaling-period", "0.2", "--utilization-window", "1", "--max-jobs-per-worker", "50"]
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def busy_workers(server: RedisServer, pid: int) -> list[int]:
    try:
        pools = [p for p in read_pools(server.client()) if p.get("pid") == pid]
    except Exception:  # noqa: BLE001 - Redis may be restarting
        return []
    return [w["pid"] for w in pools[0]["workers"] if w["state"] == "busy"] if pools else []


def run(minutes: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    log_path = RESULTS / "soak-pool.log"
    with RedisServer(persistent=True) as server:
        pool = start_pool(server.url, log_path)
        queue = Queue(connection=server.client())
        ids: list[str] = []
        retried: set[str] = set()
        kills = 0
        end = time.monotonic() + minutes * 60
        restart_at = time.monotonic() + minutes * 30
        next_kill = time.monotonic() + 3
        while time.monotonic() < end:
            try:
                for _ in range(rng.randint(1, 6)):
                    retry = Retry(max=1) if rng.random() < 0.2 else None
                    ids.append(queue.enqueue("jobs.sleep", rng.uniform(0.01, 0.4), retry=retry).id)
                    if retry:
                        retried.add(ids[-1])
            except Exception:  # noqa: BLE001 - Redis restarting: try again next round
                pass
            if time.monotonic() > next_kill:
                busy = busy_workers(server, pool.pid)
                if busy:
                    os.kill(rng.choice(busy), signal.SIGKILL)
                    kills += 1
                next_kill = time.monotonic() + rng.uniform(2, 6)
            if restart_at and time.monotonic() > restart_at:
                server.stop()
                time.sleep(5)
                server.start()
                restart_at = 0
            time.sleep(rng.uniform(0.05, 0.4))
        deadline = time.monotonic() + 120
        while len(queue) and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
        time.sleep(2)
        orphans = [p.pid for p in psutil.process_iter(["cmdline"]) if "rq-orchestrator: worker" in " ".join(p.info["cmdline"] or [])
                   and ".soak." in " ".join(p.info["cmdline"] or [])]
        return summarize(server, ids, retried, kills, log_path.read_text(errors="replace"), orphans, minutes)


def summarize(server: RedisServer, ids: list[str], retried: set[str], kills: int, log: str, orphans: list[int],
              minutes: float) -> dict[str, object]:
    client = server.client()
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    runs = {k.decode(): int(v) for k, v in client.hgetall("test:runs").items()}
    for job_id in ids:
        job = Job.fetch(job_id, connection=client)
        status = getattr(job.get_status(), "value", job.get_status())
        statuses[status] += 1
        if status == "failed":
            reasons[failure_kind(job.meta.get("rq_orchestrator_failure"))] += 1
    finished, failed = statuses.get("finished", 0), statuses.get("failed", 0)
    return {
        "minutes": minutes,
        "jobs_enqueued": len(ids),
        "finished": finished,
        "failed": failed,
        "failed_reasons": dict(reasons),
        "lost": len(ids) - finished - failed,
        "ran_twice_without_retry": sum(1 for j in ids if runs.get(j, 0) > 1 and j not in retried),
        "workers_killed": kills,
        "worker_restarts": log.count("exited unexpectedly"),
        "recycled": log.count(" recycles ("),
        "redis_restarts": 1,
        "orphans": len(orphans),
    }


def failure_kind(reason: str | None) -> str:
    if reason is None:
        return "job raised or timed out"
    # "worker <name> killed by SIGKILL" / "worker <name> exit status 1": keep what happened
    return "its worker: " + " ".join(reason.split()[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = run(args.minutes, args.seed)
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
