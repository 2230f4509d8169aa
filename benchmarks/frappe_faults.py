"""What a tiny Frappe job costs the machine: CPU time and page faults a job, process by process.

``inline`` is the tiny-job benchmark's limit: ``execute_job`` in a loop in one
process. ``fork``, ``nofork`` and ``builtin`` are one worker
(``--num-workers 1``) of this app in fork mode, with ``--no-fork``, and of
Frappe's own pool: it takes ``--warmup`` tiny jobs (this app learns the job's
module and replaces its worker), then ``--jobs`` more, and its
``/proc/PID/stat`` before and after gives its own minor page faults and CPU
time a job, and those of the job processes it forked and waited for
(``cminflt``, ``cutime``/``cstime``). For each, the CPU a job of the pool's
master, the queue's Redis server and MariaDB (shared with the machine: keep it
otherwise idle). A forked job process shares every page of its worker until
one of the two writes to it; the first write to such a page is a fault that
copies it, and CPython writes to every object it touches (reference counts,
3.11's adaptive bytecode). Only CPU time is measured, not wall time.

    PYTHONPATH=. python benchmarks/frappe_faults.py --bench /work/benches/fb15 --site localhost
"""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path
from typing import Any

from benchmarks._common import LOGS, RESULTS, descendants, machine_facts, print_table, registered_pids, started, \
    wait_for, wait_registered, write_json
from benchmarks.frappe_bench import helper, other_workers_running, without_app
from benchmarks.frappe_tiny_jobs import ENQUEUE, JOB, bench_python, job_rows, output, queue_client

SETUPS = ("inline", "fork", "nofork", "builtin")
INLINE = """
import resource, sys, time
from frappe.utils.background_jobs import execute_job
site, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
execute_job(site, method, None, "inline", {})  # the first run imports what every later one finds imported
print("ready", flush=True)
sys.stdin.readline()
faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
for _ in range(count):
    execute_job(site, method, None, "inline", {})
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, time.process_time() - cpu, flush=True)
"""
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")  # /proc/PID/stat counts CPU time in clock ticks
FIELDS = {"minflt": 7, "cminflt": 8, "utime": 11, "stime": 12, "cutime": 13, "cstime": 14}  # after "pid (comm) "


def counters(pid: int) -> dict[str, int]:
    """The fault and CPU counters of ``/proc/PID/stat`` (CPU in clock ticks)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return {name: int(fields[index]) for name, index in FIELDS.items()}


def cpu_ticks(pids: dict[str, int]) -> dict[str, int]:
    """Each named process's CPU time so far, in clock ticks."""
    return {name: (values := counters(pid))["utime"] + values["stime"] for name, pid in pids.items()}


def cpu_ms_a_job(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    return {f"{name} CPU ms": (after[name] - before[name]) / jobs * TICK_MS for name in before}


def servers(client: Any) -> dict[str, int]:
    """The pids of the queue's Redis server and of MariaDB."""
    mariadb = subprocess.run(["pgrep", "-o", "-x", "mariadbd"], capture_output=True, text=True).stdout.split()
    return {"Redis": int(client.info("server")["process_id"]), **({"MariaDB": int(mariadb[0])} if mariadb else {})}


def run_jobs(args: argparse.Namespace, client: Any, count: int) -> float:
    """Enqueue ``count`` tiny jobs and wait for their end: the enqueuing process's CPU ms a job."""
    lines = output(bench_python(args.bench, ENQUEUE, args.site, str(count), str(count), JOB)).split("\n")
    ids = lines[0].split()
    wait_for(lambda: all(row[0] in (b"finished", b"failed") for row in job_rows(client, ids)), 300, "the jobs", 0.2)
    return float(lines[1]) / count * 1000


def measure_inline(args: argparse.Namespace, client: Any) -> dict[str, float]:
    """The limit: ``execute_job`` in a loop in one process, as the tiny-job benchmark's ``inline``."""
    proc = bench_python(args.bench, INLINE, args.site, JOB, str(args.jobs), stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the inline loop did not start")
    others = servers(client)
    before = cpu_ticks(others)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    faults, cpu = proc.stdout.readline().split()
    after = cpu_ticks(others)
    proc.wait()
    return {"worker faults": int(faults) / args.jobs, "worker CPU ms": float(cpu) / args.jobs * 1000,
            **cpu_ms_a_job(before, after, args.jobs)}


def measure(args: argparse.Namespace, setup: str, client: Any) -> dict[str, float]:
    command = ["frappe", "--site", args.site, "worker-pool", "--num-workers", "1"]
    command += ["--no-fork"] if setup == "nofork" else []
    with without_app(args.bench, setup == "builtin"), started() as group:
        group.start(helper(args.bench, *command), LOGS / f"frappe-faults-{setup}.log", cwd=args.bench / "sites")
        wait_registered(client, group.pids, 1, timeout=180)
        run_jobs(args, client, args.warmup)
        wait_registered(client, group.pids, 1, timeout=60)  # the replacement, if the warm-up replaced the worker
        (worker,) = registered_pids(client) & set(descendants(group.pids))
        others = {"master": group.pids[0], **servers(client)}
        before, others_before = counters(worker), cpu_ticks(others)
        enqueuer_ms = run_jobs(args, client, args.jobs)
        after, others_after = counters(worker), cpu_ticks(others)
        if worker not in registered_pids(client):
            raise SystemExit(f"{setup}: the worker was replaced during the measured jobs")
    per = {name: (after[name] - before[name]) / args.jobs for name in FIELDS}
    return {"worker faults": per["minflt"], "job process faults": per["cminflt"],
            "worker CPU ms": (per["utime"] + per["stime"]) * TICK_MS,
            "job process CPU ms": (per["cutime"] + per["cstime"]) * TICK_MS,
            "enqueuer CPU ms": enqueuer_ms,
            **cpu_ms_a_job(others_before, others_after, args.jobs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("/work/benches/fb15"))
    parser.add_argument("--site", default="test.local")
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--setups", default=",".join(SETUPS))
    args = parser.parse_args()
    busy = other_workers_running(args.bench)
    if busy:
        raise SystemExit("workers already run in this bench (another benchmark?):\n" + "\n".join(busy))
    client = queue_client(args.bench)
    results = {}
    for setup in args.setups.split(","):
        results[setup] = measure_inline(args, client) if setup == "inline" else measure(args, setup, client)
        print(setup, results[setup], flush=True)
    names = list(dict.fromkeys(name for figures in results.values() for name in figures))
    print_table(["a job", *results], [[name, *(round(f.get(name, 0), 2) for f in results.values())] for name in names])
    write_json(RESULTS / f"frappe_faults-{args.bench.name}.json",
               {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_facts(), "per_job": results})


if __name__ == "__main__":
    main()
