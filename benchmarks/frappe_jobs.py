"""Frappe jobs at work on a real bench: many tiny jobs (throughput), and 8 running jobs (memory).

Two measurements, each side by side in one run, set-ups in a rotated order per run:

* ``tiny``: 2 workers; ``--jobs`` (600) ×
  ``frappe.enqueue("frappe.core.doctype.rq_job.test_rq_job.test_func")``, a job
  that returns at once, enqueued by one process while the workers run; the
  time from the first ``enqueued_at`` to the last ``ended_at`` (read from
  Redis) gives jobs/s. Per job, from the timestamps rq writes: the time inside
  the work process (``started_at`` → ``ended_at``: Frappe's ``execute_job`` and
  rq's job bookkeeping there) and the gap between one job's end and the same
  worker's next start (the fork, rq's bookkeeping in the worker, the pop).
  Before the set-ups, the inline limit: the same job run the way a work
  process runs it (``execute_job``, with ``frappe.init``/``connect``/``destroy``),
  in a loop in one process.
* ``busy``: 8 workers, each running ``benchmarks.frappe_tasks.busy`` (metadata of
  8 doctypes, a document, 3,000 DocField rows, then a sleep); the PSS of every
  process tree read once all 8 jobs have started and settled.

Set-ups: ``ours`` (`bench worker-pool`), ``nofork`` (the same with ``--no-fork``,
where the installed pool has it), ``builtin`` (Frappe's own pool: this app's
line taken out of sites/apps.txt, restored byte for byte), ``separate``
(`bench worker` processes; by default only in ``busy``), and in ``busy`` only
``floor``: the 8 jobs run through ``execute_job`` in 8 threads of one process,
no queue, no worker. One interpreter and one copy of Frappe for all 8, plus
what each job makes for itself: no pool of processes can hold 8 such jobs in
less (read once the process has used no CPU for a second: every job loaded).

Other engineers use the same bench: the script runs every process in a
shadow of it (a temporary directory whose ``env`` and ``apps`` link to the
bench's and whose ``sites/`` holds copies of apps.txt and the common config,
the site itself linked), with the queue Redis a private ``redis-server``: no
one else's worker takes these jobs, and apps.txt is changed only in the shadow.

    python benchmarks/frappe_jobs.py tiny --runs 3
    python benchmarks/frappe_jobs.py busy --runs 3
    python benchmarks/frappe_jobs.py shadow -- python benchmarks/frappe_bench.py --bench {bench} --runs 3
      (any other bench benchmark, run in a shadow: {bench} is its path)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    cpu_seconds,
    machine_facts,
    median,
    parse_rq_time,
    print_table,
    redis_server,
    started,
    tree_memory,
    wait_for,
    wait_registered,
)
from benchmarks._common import write_json
from benchmarks.frappe_bench import helper, without_app

TINY = "frappe.core.doctype.rq_job.test_rq_job.test_func"
BUSY = "benchmarks.frappe_tasks.busy"

ENQUEUE = """
import importlib, sys, frappe
frappe.init(site=sys.argv[1], sites_path=".")
frappe.connect()
kwargs = {"seconds": float(sys.argv[4])} if sys.argv[4] != "-" else {}
method = sys.argv[2]
if method.startswith("benchmarks."):  # not an installed app's: enqueued as the function itself (by reference)
    module, _, name = method.rpartition(".")
    method = getattr(importlib.import_module(module), name)
jobs = [frappe.enqueue(method, **kwargs) for _ in range(int(sys.argv[3]))]
frappe.db.commit()
print(" ".join(job.id for job in jobs))
"""

INLINE = """
import sys, time, frappe
from frappe.utils.background_jobs import execute_job
site, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
execute_job(site, method, None, "inline", {})  # the first run imports what every later one finds imported
start = time.perf_counter()
for _ in range(count):
    execute_job(site, method, None, "inline", {})
print((time.perf_counter() - start) / count)
"""


@contextlib.contextmanager
def shadow_bench(bench: Path) -> Iterator[tuple[Path, str]]:
    """A throw-away bench beside ``bench`` with its own queue Redis: (its path, that Redis's URL)."""
    with redis_server() as server, tempfile.TemporaryDirectory(prefix="frappe-jobs-") as tmp:
        shadow = Path(tmp)
        for name in ("env", "apps", "config", "logs"):
            if (bench / name).exists():
                (shadow / name).symlink_to(bench / name)
        sites = shadow / "sites"
        sites.mkdir()
        for entry in (bench / "sites").iterdir():
            if entry.name in ("apps.txt", "apps.json"):
                (sites / entry.name).write_bytes(entry.read_bytes())
            elif entry.name != "common_site_config.json":
                (sites / entry.name).symlink_to(entry)
        config = json.loads((bench / "sites" / "common_site_config.json").read_text())
        config["redis_queue"] = server.url
        (sites / "common_site_config.json").write_text(json.dumps(config, indent=1))
        yield shadow, server.url


def commands(bench: Path, setup: str, workers: int) -> list[list[str]]:
    if setup == "separate":
        return [helper(bench, "frappe", "worker") for _ in range(workers)]
    pool = ["frappe", "worker-pool", "--num-workers", str(workers)]
    return [helper(bench, *pool, *(["--no-fork"] if setup == "nofork" else []))]


def bench_python(bench: Path, code: str, *args: str) -> str:
    return subprocess.run([str(bench / "env" / "bin" / "python"), "-c", code, *args], cwd=bench / "sites",
                          capture_output=True, text=True, check=True).stdout


def enqueue(bench: Path, site: str, method: str, count: int, seconds: float | None = None) -> list[str]:
    return bench_python(bench, ENQUEUE, site, method, str(count), "-" if seconds is None else str(seconds)).split()


def job_times(client: Any, ids: list[str]) -> list[dict[str, Any]]:
    with client.pipeline() as pipe:
        for job_id in ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "enqueued_at", "started_at", "ended_at", "worker_name")
        rows = pipe.execute()
    return [{"status": (s or b"").decode(), "enqueued": parse_rq_time(e), "started": parse_rq_time(st),
             "ended": parse_rq_time(en), "worker": (w or b"").decode()} for s, e, st, en, w in rows]


def tiny_run(bench: Path, site: str, client: Any, jobs: int) -> dict[str, Any]:
    ids = enqueue(bench, site, TINY, jobs)
    done = ("finished", "failed")
    wait_for(lambda: all(t["status"] in done for t in job_times(client, ids)), 600, "the tiny jobs", 0.2)
    times = job_times(client, ids)
    span = max(t["ended"] for t in times) - min(t["enqueued"] for t in times)
    inside = [t["ended"] - t["started"] for t in times]
    gaps = []
    for worker in {t["worker"] for t in times}:
        own = sorted((t for t in times if t["worker"] == worker), key=lambda t: t["started"])
        gaps += [b["started"] - a["ended"] for a, b in zip(own, own[1:]) if b["started"] - a["ended"] < 1.0]
    return {"seconds": round(span, 3), "jobs_per_second": round(jobs / span, 1),
            "failed": sum(t["status"] == "failed" for t in times),
            "in_job_process_ms": round(statistics.median(inside) * 1000, 2),
            "between_jobs_ms": round(statistics.median(gaps) * 1000, 2) if gaps else None}


def busy_memory(bench: Path, site: str, client: Any, workers: int, roots: list[int], settle: float) -> Any:
    ids = enqueue(bench, site, BUSY, workers, seconds=settle + 20)
    wait_for(lambda: all(t["status"] == "started" for t in job_times(client, ids)), 120, "the busy jobs to start", 0.2)
    time.sleep(settle)  # each job has loaded its data and sleeps
    memory = tree_memory(roots)
    wait_for(lambda: all(t["status"] in ("finished", "failed") for t in job_times(client, ids)), 120,
             "the busy jobs to end", 0.5)
    return memory


FLOOR = """
import sys, threading, time, frappe
from frappe.utils.background_jobs import execute_job
from benchmarks.frappe_tasks import busy
site, count, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
threads = [threading.Thread(target=execute_job, args=(site, busy, None, "floor", {"seconds": seconds}))
           for _ in range(count)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def floor_memory(args: argparse.Namespace, jobs: int) -> Any:
    """The ``floor`` set-up: PSS of one process running the ``jobs`` busy jobs in as many threads."""
    seconds = args.settle + 20
    with started() as group:
        group.start([str(args.bench / "env" / "bin" / "python"), "-c", FLOOR, args.site, str(jobs), str(seconds)],
                    LOGS / "frappe-jobs-floor.log", cwd=args.bench / "sites")
        pid = group.pids[0]
        last = -1.0
        while (now := cpu_seconds(pid)) != last:  # loading uses CPU; all 8 asleep: it stops
            last = now
            time.sleep(1.0)
        return tree_memory([pid])


def measure(args: argparse.Namespace, setup: str, client: Any) -> dict[str, Any]:
    workers = 2 if args.kind == "tiny" else 8
    if setup == "floor":
        return {"busy": floor_memory(args, workers)}
    with without_app(args.bench, setup == "builtin"), started() as group:
        for i, command in enumerate(commands(args.bench, setup, workers)):
            group.start(command, LOGS / f"frappe-jobs-{setup}-{i}.log", cwd=args.bench / "sites")
        wait_registered(client, group.pids, workers, timeout=180)
        time.sleep(args.settle)
        if args.kind == "tiny":
            return tiny_run(args.bench, args.site, client, args.jobs)
        return {"busy": busy_memory(args.bench, args.site, client, workers, group.pids, args.settle)}


def inline_limit(args: argparse.Namespace) -> float:
    return float(bench_python(args.bench, INLINE, args.site, TINY, str(args.jobs)))


def in_shadow(bench: Path, command: list[str]) -> int:
    """Run ``command`` with ``{bench}`` replaced by a shadow of ``bench``; its exit status."""
    with shadow_bench(bench) as (shadow, _url):
        return subprocess.run([part.replace("{bench}", str(shadow)) for part in command], check=False).returncode


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean-ups run on a plain kill too
    if sys.argv[1:2] == ["shadow"]:
        rest = sys.argv[2:]
        raise SystemExit(in_shadow(Path("/work/benches/fb15"), rest[1:] if rest[:1] == ["--"] else rest))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tiny", "busy"])
    parser.add_argument("--bench", type=Path, default=Path("/work/benches/fb15"))
    parser.add_argument("--site", default="test.local")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=600, help="tiny jobs per set-up and run")
    parser.add_argument("--settle", type=float, default=4.0)
    parser.add_argument("--setups", default=None, help="comma-separated (ours,nofork,builtin,separate; busy: also floor)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    setups = (args.setups or ("ours,builtin" if args.kind == "tiny" else "ours,builtin,separate")).split(",")
    with shadow_bench(args.bench) as (shadow, url):
        from redis import Redis

        runs = run_all(argparse.Namespace(**{**vars(args), "bench": shadow}), setups, Redis.from_url(url))
    report(args, setups, runs)


def run_all(args: argparse.Namespace, setups: list[str], client: Any) -> list[dict[str, Any]]:
    runs = []
    for run in range(args.runs):
        order = setups[run % len(setups):] + setups[:run % len(setups)]
        result: dict[str, Any] = {setup: measure(args, setup, client) for setup in order}
        if args.kind == "tiny":
            result["inline_ms"] = round(inline_limit(args) * 1000, 3)
        runs.append({"order": order, "setups": result, "ratios": ratios(args.kind, setups, result)})
        print(f"run {run + 1}: {json.dumps(result, default=str)[:600]}\n  ratios {runs[-1]['ratios']}", flush=True)
    return runs


def ratios(kind: str, setups: list[str], result: dict[str, Any]) -> dict[str, float]:
    if kind == "tiny":
        base = result["builtin"]["jobs_per_second"] if "builtin" in result else None
        out = {f"{s} / builtin jobs/s": round(result[s]["jobs_per_second"] / base, 3) for s in setups if base}
        inline_rate = 1000 / result["inline_ms"] * 2  # two workers, two cores
        return out | {f"{s} / inline limit (2 cores)": round(result[s]["jobs_per_second"] / inline_rate, 3)
                      for s in setups}
    if "separate" not in result:
        return {}
    separate = result["separate"]["busy"].pss_mb
    return {f"{s} / separate busy PSS": round(result[s]["busy"].pss_mb / separate, 3) for s in setups}


def report(args: argparse.Namespace, setups: list[str], runs: list[dict[str, Any]]) -> None:
    if args.kind == "tiny":
        print_table(["set-up", "jobs/s", "in the job process, ms", "between jobs, ms"],
                    [[s, median(r["setups"][s]["jobs_per_second"] for r in runs),
                      median(r["setups"][s]["in_job_process_ms"] for r in runs),
                      median(r["setups"][s]["between_jobs_ms"] or 0 for r in runs)] for s in setups])
        print(f"inline: {median(r['setups']['inline_ms'] for r in runs)} ms a job")
    else:
        print_table(["set-up", "PSS mid-job, MB", "USS, MB", "processes"],
                    [[s, median(r["setups"][s]["busy"].pss_mb for r in runs),
                      median(r["setups"][s]["busy"].uss_mb for r in runs),
                      median(r["setups"][s]["busy"].processes for r in runs)] for s in setups])
    summary = {key: median(r["ratios"][key] for r in runs) for key in runs[0]["ratios"]}
    print_table(["ratio (same run, median)", "value", "runs"],
                [[k, v, " ".join(str(r["ratios"][k]) for r in runs)] for k, v in summary.items()])
    write_json(args.json or RESULTS / f"frappe_jobs_{args.kind}.json",
               {"machine": machine_facts(), "bench": str(args.bench), "runs": runs, "ratios": summary})


if __name__ == "__main__":
    main()
