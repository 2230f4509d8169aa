"""Memory on a real Frappe bench: our `bench worker-pool` against 8 `bench worker` processes and Frappe's own pool.

Set-ups, 8 workers each, all on the bench's default queues:

* ours: `bench worker-pool --num-workers 8` (this app installed in the bench;
  its pre-fork rehearsal, prewarm, on by default);
* no-prewarm: the same with ``--no-prewarm``, to show what the rehearsal brings;
* builtin: Frappe's own `bench worker-pool --num-workers 8`: this app's line
  is taken out of sites/apps.txt for the duration, then the file is put back
  exactly as it was (also on errors and Ctrl+C);
* separate: 8 `bench worker` processes.

Each is started the way bench starts it (``env/bin/python -m
frappe.utils.bench_helper frappe ...`` in sites/, without the bench CLI
process in between). Once all 8 are registered and settled, the total PSS
and USS of the process trees are read (idle); then a burst of 16 one-second
jobs is enqueued through ``frappe.enqueue`` (``test_func``, sleep=1), its
duration taken from Redis (first ``enqueued_at`` to last ``ended_at``). The
burst is repeated (``--bursts``, 3 by default, a settle apart: one burst of
2.4 s varies by about 3 % from one to the next) and the median of its times
kept; then the memory is read again. The bench's queue Redis is used;
nothing is flushed.

    python benchmarks/frappe_bench.py --bench /work/bench15 --site test.local --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks._common import (
    LOGS,
    RESULTS,
    machine_facts,
    median,
    parse_rq_time,
    print_table,
    started,
    tree_memory,
    wait_for,
    wait_registered,
    write_json,
)

WORKERS = 8
BURST = 16
APP_NAME = "rq_orchestrator"

ENQUEUE = """
import sys, frappe
frappe.init(site=sys.argv[1], sites_path=".")
frappe.connect()
jobs = [frappe.enqueue("frappe.core.doctype.rq_job.test_rq_job.test_func", sleep=1) for _ in range(int(sys.argv[2]))]
frappe.db.commit()
print(" ".join(job.id for job in jobs))
"""


def helper(bench: Path, *args: str) -> list[str]:
    return [str(bench / "env" / "bin" / "python"), "-m", "frappe.utils.bench_helper", *args]


def commands(bench: Path, setup: str) -> list[list[str]]:
    pool = ["frappe", "worker-pool", "--num-workers", str(WORKERS)]
    if setup == "separate":
        return [helper(bench, "frappe", "worker") for _ in range(WORKERS)]
    if setup == "no-prewarm":
        pool.append("--no-prewarm")
    return [helper(bench, *pool)]


@contextlib.contextmanager
def without_app(bench: Path, active: bool) -> Iterator[None]:
    """sites/apps.txt without this app (Frappe's own worker-pool comes back), restored byte for byte."""
    apps = bench / "sites" / "apps.txt"
    original = apps.read_bytes()
    if active:
        lines = [line for line in original.decode().splitlines() if line.strip() != APP_NAME]
        apps.write_text("\n".join(lines) + "\n")
    try:
        yield
    finally:
        apps.write_bytes(original)


def other_workers_running(bench: Path) -> list[str]:
    """Command lines of processes already working in this bench (another engineer's pool, say)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cwd = os.readlink(f"/proc/{entry}/cwd")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if cwd.startswith(str(bench)) and ("worker" in cmdline or "rq:" in cmdline):
                found.append(f"{entry}: {cmdline[:100]}")
    return found


def burst(bench: Path, site: str, client: Any) -> dict[str, float]:
    """Enqueue the burst; its duration from the first enqueue to the last end, read from the jobs in Redis."""
    out = subprocess.run([str(bench / "env" / "bin" / "python"), "-c", ENQUEUE, site, str(BURST)],
                         cwd=bench / "sites", capture_output=True, text=True, check=True)
    ids = out.stdout.split()
    keys = [f"rq:job:{job_id}" for job_id in ids]
    wait_for(lambda: all(client.hget(k, "status") in (b"finished", b"failed") for k in keys), 120, "the burst", 0.1)
    failed = sum(client.hget(k, "status") == b"failed" for k in keys)
    enqueued = [parse_rq_time(client.hget(k, "enqueued_at")) for k in keys]
    ended = [parse_rq_time(client.hget(k, "ended_at")) for k in keys]
    return {"burst_seconds": round(max(e for e in ended if e) - min(e for e in enqueued if e), 3), "failed": failed}


def measure(bench: Path, site: str, setup: str, client: Any, settle: float, bursts: int) -> dict[str, Any]:
    with without_app(bench, setup == "builtin"), started() as group:
        for i, command in enumerate(commands(bench, setup)):
            group.start(command, LOGS / f"frappe-{setup}-{i}.log", cwd=bench / "sites")
        wait_registered(client, group.pids, WORKERS, timeout=180)
        time.sleep(settle)
        idle = tree_memory(group.pids)
        timings = []
        for _ in range(bursts):
            timings.append(burst(bench, site, client))
            time.sleep(settle)
        seconds = [t["burst_seconds"] for t in timings]
        return {"idle": idle, "after_burst": tree_memory(group.pids), "burst_seconds": median(seconds),
                "bursts": seconds, "failed": sum(t["failed"] for t in timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("/work/bench15"))
    parser.add_argument("--site", default="test.local")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--bursts", type=int, default=3, help="bursts per set-up and run (their median is its time)")
    parser.add_argument("--json", type=Path, default=RESULTS / "frappe_bench.json")
    args = parser.parse_args()
    busy = other_workers_running(args.bench)
    if busy:
        raise SystemExit("workers already run in this bench; not measuring:\n" + "\n".join(busy))
    from redis import Redis

    config = json.loads((args.bench / "sites" / "common_site_config.json").read_text())
    client = Redis.from_url(config["redis_queue"])
    setups = ["ours", "no-prewarm", "builtin", "separate"]
    runs = []
    for run in range(args.runs):
        order = setups[run % len(setups):] + setups[:run % len(setups)]
        result = {setup: measure(args.bench, args.site, setup, client, args.settle, args.bursts) for setup in order}
        runs.append({"order": order, "setups": result, "ratios": ratios(result)})
        print(f"run {run + 1}: {runs[-1]['ratios']}", flush=True)
    report(args, runs)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    separate = result["separate"]["idle"].pss_mb
    out = {f"{s}/separate idle": round(result[s]["idle"].pss_mb / separate, 3) for s in ("ours", "no-prewarm", "builtin")}
    out |= {f"{s} burst / builtin burst": round(result[s]["burst_seconds"] / result["builtin"]["burst_seconds"], 3)
            for s in ("ours", "no-prewarm", "separate")}
    return out


def report(args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    setups = list(runs[0]["setups"])
    print(f"\nFrappe bench {args.bench}, {WORKERS} workers, medians of {len(runs)} runs")
    print_table(["set-up", "idle PSS, MB", "idle USS, MB", "after burst PSS, MB", f"burst of {BURST} x 1 s jobs, s"],
                [[s, _median(runs, s, "idle", "pss_mb"), _median(runs, s, "idle", "uss_mb"),
                  _median(runs, s, "after_burst", "pss_mb"), median(r["setups"][s]["burst_seconds"] for r in runs)]
                 for s in setups])
    summary = {key: median(r["ratios"][key] for r in runs) for key in runs[0]["ratios"]}
    print_table(["ratio (same run, median)", "value"], [[k, v] for k, v in summary.items()])
    probe = "import frappe, rq, redis, sys; print(frappe.__version__, rq.VERSION, redis.__version__, sys.version.split()[0])"
    versions = subprocess.run([str(args.bench / "env" / "bin" / "python"), "-c", probe],
                              capture_output=True, text=True, check=True).stdout.split()
    write_json(args.json, {
        "machine": machine_facts(),
        "bench": {"path": str(args.bench), "frappe": versions[0], "rq": versions[1], "redis_py": versions[2],
                  "python": versions[3]},
        "workers": WORKERS, "burst_jobs": BURST, "bursts_per_setup": args.bursts, "runs": runs, "ratios": summary,
        "targets": {"ours/separate idle": "<= 0.30", "ours burst / builtin burst": "<= 1.0"},
    })


def _median(runs: list[dict[str, Any]], setup: str, state: str, field: str) -> float:
    return median(getattr(r["setups"][setup][state], field) for r in runs)


if __name__ == "__main__":
    main()
