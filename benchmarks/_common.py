"""Helpers shared by the benchmarks: Redis, the three kinds of worker set-up, memory, tables, JSON."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LOGS = Path(tempfile.gettempdir()) / "rq-orchestrator-benchmarks"  # output of every process started
APP = "benchmarks.heavy_app"
NOOP = f"{APP}.noop"
SLEEP = f"{APP}.sleep"
BIN = Path(sys.executable).parent  # the venv's console scripts: rq, rq-orchestrator


# -- small utilities ---------------------------------------------------------
def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def machine_facts() -> dict[str, Any]:
    import redis
    import rq

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rq": rq.__version__ if hasattr(rq, "__version__") else rq.VERSION,
        "redis_py": redis.__version__,
        "load_average_at_start": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def app_facts(app: str = APP) -> dict[str, float]:
    """Resident memory and import time of a fresh interpreter that imports rq, then the application."""
    code = (
        f"import time, rq; t = time.perf_counter(); import importlib; importlib.import_module({app!r}); "
        "s = time.perf_counter() - t; "
        "rss = next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('Rss:')); "
        "print(s, rss / 1024)"
    )
    runs = [subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
            for _ in range(3)]
    seconds, rss = zip(*(map(float, r.stdout.split()) for r in runs))
    return {"import_seconds": round(median(seconds), 2), "rss_mb": round(median(rss), 1)}


# -- Redis -----------------------------------------------------------------
@contextlib.contextmanager
def redis_server() -> Iterator[Any]:
    from rq_orchestrator.infra.embedded_redis import RedisServer

    with RedisServer() as server:
        yield server


def enqueue(client: Any, queue: str, func: str, count: int, **kwargs: Any) -> None:
    """Enqueue ``count`` jobs of ``func`` (by name: this process never imports the application)."""
    from rq import Queue

    q = Queue(queue, connection=client)
    batch = 500
    for start in range(0, count, batch):
        datas = [Queue.prepare_data(func, kwargs=kwargs, result_ttl=3600) for _ in range(min(batch, count - start))]
        with client.pipeline() as pipe:
            q.enqueue_many(datas, pipeline=pipe)
            pipe.execute()


def enqueue_noops(client: Any, queue: str, count: int) -> None:
    enqueue(client, queue, NOOP, count)


def finished_jobs(client: Any, queue: str) -> int:
    return int(client.zcard(f"rq:finished:{queue}"))


def registered_workers(client: Any) -> set[str]:
    return {m.decode() if isinstance(m, bytes) else m for m in client.smembers("rq:workers")}


def registered_pids(client: Any) -> set[int]:
    """Pids of the workers registered in Redis (rq keeps one hash per worker, with its pid)."""
    with client.pipeline() as pipe:
        for key in registered_workers(client):
            pipe.hget(key, "pid")
        return {int(pid) for pid in pipe.execute() if pid}


def wait_registered(client: Any, roots: Iterable[int], count: int, timeout: float = 120) -> None:
    """Until ``count`` processes of the trees under ``roots`` are registered rq workers."""
    roots = list(roots)
    wait_for(lambda: len(registered_pids(client) & set(descendants(roots))) >= count, timeout,
             f"{count} registered workers", 0.1)


def parse_rq_time(value: bytes | str | None) -> float | None:
    """An rq timestamp ('2026-11-28T03:41:12.123456Z', UTC) as seconds since the epoch."""
    if not value:
        return None
    from datetime import datetime, timezone

    text = value.decode() if isinstance(value, bytes) else value
    return datetime.strptime(text.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


# -- worker set-ups ----------------------------------------------------------
def child_env() -> dict[str, str]:
    """Environment for every process we start: the application importable, unbuffered output."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), "PYTHONUNBUFFERED": "1"}


def our_pool_command(url: str, queue: str, workers: int, *extra: str) -> list[str]:
    return [str(BIN / "rq-orchestrator"), "worker-pool", queue, "--url", url, "--num-workers", str(workers),
            "--preload", APP, *extra]


def no_prewarm_pool_command(url: str, queue: str, workers: int, *extra: str) -> list[str]:
    """Our pool without the pre-fork rehearsal (``--no-prewarm``): what prewarm brings is the difference."""
    return our_pool_command(url, queue, workers, "--no-prewarm", *extra)


def rq_pool_command(url: str, queue: str, workers: int, *extra: str) -> list[str]:
    return [str(BIN / "rq"), "worker-pool", queue, "--url", url, "-n", str(workers), "-c", APP, *extra]


def rq_worker_command(url: str, queue: str, *extra: str) -> list[str]:
    return [str(BIN / "rq"), "worker", queue, "--url", url, "-c", APP, *extra]


@dataclass
class Started:
    """Processes we started, each the root of a tree (a pool master or a separate worker)."""

    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def start(self, command: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_env(), start_new_session=True, cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop(self, timeout: float = 15.0) -> None:
        tree = descendants(self.pids)  # job processes leave the group (rq's horse calls setpgrp)
        for proc in self.procs:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for proc in self.procs:  # leftovers in the group (a scheduler process)
            _signal_group(proc, signal.SIGKILL)
        for pid in tree:  # and outside it (a job process still running)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


@contextlib.contextmanager
def started() -> Iterator[Started]:
    group = Started()
    try:
        yield group
    finally:
        group.stop()


# -- memory ----------------------------------------------------------------
def smaps_rollup(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    return fields


def private_mb(pid: int) -> float:
    fields = smaps_rollup(pid)
    return (fields["Private_Clean"] + fields["Private_Dirty"]) / 1024


def descendants(roots: Iterable[int]) -> list[int]:
    """The roots and all their descendants, alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, pending = [], list(roots)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


@dataclass
class TreeMemory:
    pss_mb: float
    uss_mb: float
    rss_mb: float
    processes: int
    per_process: list[dict[str, Any]]


def tree_memory(roots: Iterable[int]) -> TreeMemory:
    """PSS, USS (private clean + dirty) and RSS summed over the process trees rooted at ``roots``."""
    rows = []
    for pid in descendants(roots):
        with contextlib.suppress(OSError, KeyError):
            fields = smaps_rollup(pid)
            rows.append({
                "pid": pid,
                "title": _title(pid),
                "pss_mb": round(fields["Pss"] / 1024, 2),
                "uss_mb": round((fields["Private_Clean"] + fields["Private_Dirty"]) / 1024, 2),
                "rss_mb": round(fields["Rss"] / 1024, 2),
            })
    return TreeMemory(
        pss_mb=round(sum(r["pss_mb"] for r in rows), 1),
        uss_mb=round(sum(r["uss_mb"] for r in rows), 1),
        rss_mb=round(sum(r["rss_mb"] for r in rows), 1),
        processes=len(rows),
        per_process=rows,
    )


def _title(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()[:100]
    return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process (not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
