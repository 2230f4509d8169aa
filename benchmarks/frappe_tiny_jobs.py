"""Many tiny Frappe jobs on a real bench: `--no-fork` against fork mode, Frappe's own pool and the inline limit.

Side by side in one run (set-ups in a rotated order from run to run, as the
machine is shared):

* ``inline``: the limit. The same job run the way a work process runs it,
  ``frappe.utils.background_jobs.execute_job`` (``frappe.init``/``connect``,
  the method, ``destroy``), in a loop, in ``--workers`` processes at once
  (one per core), each ``--jobs / --workers`` times after one warm-up run,
  all starting at the same instant; jobs/s = jobs / the slowest loop's time.
  No Redis, no queue: nothing a pool can do is cheaper.
* ``least``: the least protocol a queue needs, to bound what ``--workers``
  processes can reach with a per-job protocol of their own: each pops a job
  and marks it started in one script, runs it with ``execute_job``, and marks
  it finished in one transaction. Two round trips a job and next to no
  Python: no callbacks, dependents, retries, failure handling, heartbeats or
  stops. A measuring stick, not a worker (asked for by name: not a default).
* ``nofork``: `bench worker-pool --num-workers N --no-fork` (this app).
* ``fork``: `bench worker-pool --num-workers N` (this app, a fork per job).
* ``builtin``: Frappe's own `bench worker-pool --num-workers N`: this app's
  line is taken out of sites/apps.txt for the duration and the file is put
  back byte for byte (also on errors and Ctrl+C).

For each pool: ``--jobs`` × ``frappe.enqueue(test_func)`` (a job that returns
at once) from one process while the workers run, in batches of ``--batch``
(develop refuses past 500 queued jobs: the next batch waits until fewer than
``--batch`` / 4 are queued); jobs/s = jobs / (last ``ended_at`` - first
``enqueued_at``), read from Redis. Environment variables of this process
reach every set-up (e.g. ``FRAPPE_BACKGROUND_WORKERS_NOFORK=1`` on develop:
Frappe's pool runs FrappeWorkerNoFork, ours runs no-fork too).

The ceiling: the enqueuing process shares the cores with the workers, so with
``inline`` and ``nofork`` both run, each run also reports what no pool can
pass here, the inline limit less the enqueuer's CPU time a job
(``enqueue_cpu_ms``, spread over the cores), and ``nofork`` against it.

    python benchmarks/frappe_tiny_jobs.py --bench /work/benches/fb15 --runs 3
    FRAPPE_BACKGROUND_WORKERS_NOFORK=1 python benchmarks/frappe_tiny_jobs.py \\
        --bench /work/benches/fbdev --setups nofork,builtin --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks._common import LOGS, RESULTS, machine_facts, parse_rq_time, print_table, started, wait_for, \
    wait_registered, write_json
from benchmarks.frappe_bench import helper, other_workers_running, without_app

JOB = "frappe.core.doctype.rq_job.test_rq_job.test_func"
SETUPS = ("inline", "nofork", "fork", "builtin")

ENQUEUE = """
import sys, time, frappe
from frappe.utils.background_jobs import get_queue
frappe.init(site=sys.argv[1], sites_path=".")
frappe.connect()
count, batch = int(sys.argv[2]), int(sys.argv[3])
queue, ids = get_queue("default"), []
cpu = time.process_time()
while len(ids) < count:
    while queue.count > batch // 4:
        time.sleep(0.005)
    ids += [frappe.enqueue(sys.argv[4]).id for _ in range(min(batch, count - len(ids)))]
    frappe.db.commit()
print(" ".join(ids))
print(time.process_time() - cpu)
"""

INLINE = """
import sys, time, frappe
from frappe.utils.background_jobs import execute_job
site, method, count, start_at = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
execute_job(site, method, None, "inline", {})  # the first run imports what every later one finds imported
time.sleep(max(start_at - time.time(), 0))
start = time.perf_counter()
for _ in range(count):
    execute_job(site, method, None, "inline", {})
print(time.perf_counter() - start)
"""


LEAST = """
import pickle, sys, time, zlib
from datetime import datetime, timezone
import frappe
from frappe.utils.background_jobs import execute_job, get_queue
POP = '''
local id = redis.call('LPOP', KEYS[1])
if not id then return false end
redis.call('HSET', ARGV[1] .. id, 'status', 'started', 'started_at', ARGV[2], 'worker_name', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], id)
return {id, redis.call('HGET', ARGV[1] .. id, 'data')}
'''
frappe.init(site=sys.argv[1], sites_path=".")
frappe.connect()
queue = get_queue("default")
keys, prefix = [queue.key, queue.started_job_registry.key], queue.job_class.redis_job_namespace_prefix
finished, pop, name = queue.finished_job_registry.key, queue.connection.register_script(POP), sys.argv[2]
frappe.destroy()
def stamp():
    now = datetime.now(timezone.utc)
    return now.timestamp(), now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
print("ready", flush=True)
while True:
    epoch, text = stamp()
    popped = pop(keys=keys, args=[prefix, text, name, epoch + 600])
    if not popped:
        time.sleep(0.001)
        continue
    job_id, data = popped[0].decode(), popped[1]
    _, _, job_args, job_kwargs = pickle.loads(zlib.decompress(data))
    result = execute_job(*job_args, **job_kwargs)
    epoch, text = stamp()
    with queue.connection.pipeline() as pipe:
        pipe.hset(prefix + job_id, mapping={"status": "finished", "ended_at": text, "result": pickle.dumps(result)})
        pipe.expire(prefix + job_id, 500)
        pipe.zrem(keys[1], job_id)
        pipe.zadd(finished, {job_id: epoch + 500})
        pipe.execute()
"""


def bench_python(bench: Path, code: str, *args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([str(bench / "env" / "bin" / "python"), "-c", code, *args], cwd=bench / "sites",
                            stdin=stdin, stdout=subprocess.PIPE, text=True)


def output(proc: subprocess.Popen[str]) -> str:
    out, _ = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"bench python exited {proc.returncode}")
    return out


def inline(args: argparse.Namespace) -> dict[str, Any]:
    """``--workers`` loops of execute_job at once; the slowest one's time gives jobs/s."""
    each = args.jobs // args.workers
    start_at = time.time() + 15  # after every process has imported Frappe and run its warm-up job
    procs = [bench_python(args.bench, INLINE, args.site, JOB, str(each), str(start_at)) for _ in range(args.workers)]
    seconds = [float(output(p)) for p in procs]
    return {"seconds": round(max(seconds), 3), "jobs_per_second": round(each * args.workers / max(seconds), 1),
            "ms_per_job": round(statistics.median(seconds) / each * 1000, 3)}


def job_rows(client: Any, ids: list[str]) -> list[tuple[bytes | None, ...]]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "enqueued_at", "ended_at", "started_at", "worker_name")
        return pipe.execute()  # type: ignore[no-any-return]


def pool(args: argparse.Namespace, setup: str, client: Any) -> dict[str, Any]:
    """Start the pool, let it settle, enqueue the jobs, and time them from Redis."""
    command = ["frappe", "--site", args.site, "worker-pool", "--num-workers", str(args.workers)]
    command += ["--no-fork"] if setup == "nofork" else []
    with without_app(args.bench, setup == "builtin"), started() as group:
        group.start(helper(args.bench, *command), LOGS / f"frappe-tiny-{setup}.log", cwd=args.bench / "sites")
        wait_registered(client, group.pids, args.workers, timeout=180)
        return timed_jobs(args, client)


def least(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """``--workers`` processes of the least protocol (LEAST), timed as a pool is."""
    procs = [bench_python(args.bench, LEAST, args.site, f"least.{n}") for n in range(args.workers)]
    try:
        if any(proc.stdout is None or proc.stdout.readline().strip() != "ready" for proc in procs):
            raise SystemExit("a process of the least protocol did not start")
        return timed_jobs(args, client)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def timed_jobs(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """After ``--settle`` s, enqueue the jobs, wait for their end, and time them from Redis."""
    time.sleep(args.settle)
    lines = output(bench_python(args.bench, ENQUEUE, args.site, str(args.jobs), str(args.batch), JOB)).split("\n")
    ids, enqueue_cpu = lines[0].split(), float(lines[1])
    ended = (b"finished", b"failed")
    wait_for(lambda: all(row[0] in ended for row in job_rows(client, ids)), 600, "the jobs to end", 0.2)
    rows = job_rows(client, ids)
    enqueued, ended, begun = ([parse_rq_time(r[i]) or 0.0 for r in rows] for i in (1, 2, 3))
    span = max(ended) - min(enqueued)
    return {"seconds": round(span, 3), "jobs_per_second": round(len(ids) / span, 1),
            "failed": sum(r[0] == b"failed" for r in rows),
            "enqueue_seconds": round(max(enqueued) - min(enqueued), 3),  # the enqueuing process's own pace
            "enqueue_cpu_ms": round(enqueue_cpu / len(ids) * 1000, 3),  # its CPU time a job (frappe.enqueue)
            **per_job(rows, begun, ended)}


def per_job(rows: list[tuple[Any, ...]], begun: list[float], ended: list[float]) -> dict[str, float]:
    """Medians, from rq's timestamps: inside rq's perform (started → ended), and a worker's gap to its next job."""
    gaps = []
    for worker in {r[4] for r in rows}:
        own = sorted((b, e) for r, b, e in zip(rows, begun, ended) if r[4] == worker)
        gaps += [nb - e for (_, e), (nb, _) in zip(own, own[1:])]
    return {"in_job_ms": round(statistics.median(e - b for b, e in zip(begun, ended)) * 1000, 2),
            "between_jobs_ms": round(statistics.median(gaps) * 1000, 2) if gaps else 0.0}


def queue_client(bench: Path) -> Any:
    from redis import Redis

    config = json.loads((bench / "sites" / "common_site_config.json").read_text())
    return Redis.from_url(config["redis_queue"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("/work/benches/fb15"))
    parser.add_argument("--site", default="test.local")
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=400, help="most jobs enqueued at once (develop refuses > 500)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between the workers' start and the jobs")
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    setups = args.setups.split(",")
    busy = other_workers_running(args.bench)
    if busy:
        raise SystemExit("workers already run in this bench (another benchmark?):\n" + "\n".join(busy))
    client = queue_client(args.bench)
    runs = []
    for run in range(args.runs):
        order = setups[run % len(setups):] + setups[:run % len(setups)]
        result = {}
        for setup in order:
            result[setup] = (inline(args) if setup == "inline" else least(args, client) if setup == "least"
                             else pool(args, setup, client))
            print(f"run {run + 1} {setup}: {result[setup]}", flush=True)
        runs.append(result)
    report(args, setups, runs)


def ceiling(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The most a pool can do here: the cores run each job as inline does and also enqueue it.

    Per job, the inline loops take 1 / (inline jobs/s) of the whole machine
    (the job, Frappe's init/connect/destroy, MariaDB's share); the enqueuing
    process adds its CPU time over the cores. Redis and rq's own work come on
    top, so no pool reaches this; nofork/ceiling is how close it gets.
    """
    cores = os.cpu_count() or 1
    per_run = []
    for r in runs:
        if "inline" not in r or "nofork" not in r:
            return {}
        limit = 1 / (1 / r["inline"]["jobs_per_second"] + r["nofork"]["enqueue_cpu_ms"] / 1000 / cores)
        per_run.append((limit, limit / r["inline"]["jobs_per_second"], r["nofork"]["jobs_per_second"] / limit))
    result = {name: {"median": round(statistics.median(x[i] for x in per_run), 3), "runs": [round(x[i], 3) for x in per_run]}
              for i, name in enumerate(("ceiling jobs/s", "ceiling/inline", "nofork/ceiling"))}
    for name, value in result.items():
        print(f"{name}: median {value['median']} (runs {value['runs']})")
    return result


def report(args: argparse.Namespace, setups: list[str], runs: list[dict[str, Any]]) -> None:
    def rate(setup: str) -> list[float]:
        return [r[setup]["jobs_per_second"] for r in runs]

    rows = [[s, statistics.median(rate(s)), min(rate(s)), max(rate(s)), " ".join(f"{x:g}" for x in rate(s))]
            for s in setups]
    print_table(["set-up", "jobs/s median", "min", "max", "runs"], rows)
    ratios = ceiling(args, runs)
    for a, b in (("nofork", "inline"), ("nofork", "fork"), ("nofork", "builtin"), ("fork", "builtin"),
                 ("least", "inline"), ("nofork", "least")):
        if a in setups and b in setups:
            per_run = [r[a]["jobs_per_second"] / r[b]["jobs_per_second"] for r in runs]
            ratios[f"{a}/{b}"] = {"median": round(statistics.median(per_run), 3),
                                  "runs": [round(x, 3) for x in per_run]}
            print(f"{a}/{b}: median {ratios[f'{a}/{b}']['median']} (runs {ratios[f'{a}/{b}']['runs']})")
    env = {k: v for k, v in os.environ.items() if k.startswith("FRAPPE_")}
    write_json(RESULTS / f"frappe_tiny_jobs-{args.bench.name}.json",
               {"args": {k: str(v) for k, v in vars(args).items()}, "env": env, "machine": machine_facts(),
                "runs": runs, "ratios": ratios})


if __name__ == "__main__":
    main()
