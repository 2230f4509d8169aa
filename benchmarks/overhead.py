"""Master overhead: CPU time of the master with idle workers, and the Redis commands it issues per scaling period.

Our pools of 2, 8 and 16 idle workers, our pool of 8 started with
``--no-prewarm`` (no pre-fork rehearsal in the master), and rq's
`worker-pool -n 8`, run side by side (each on its own queue, one private
Redis). Over --seconds, the script reads each master's user + system CPU
time from /proc/PID/stat, and records every command Redis receives
(MONITOR), attributing it to a master by the client port of the master's own
connections. The default scaling period is 5 s, so a 60 s window holds 12
periods; our master also runs rq's scheduler duty once a second, and
publishes its state at every tick.

    PYTHONPATH=. python benchmarks/overhead.py --seconds 60
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from benchmarks._common import (
    LOGS,
    RESULTS,
    cpu_seconds,
    machine_facts,
    no_prewarm_pool_command,
    our_pool_command,
    print_table,
    redis_server,
    rq_pool_command,
    started,
    wait_registered,
    write_json,
)

SCALING_PERIOD = 5.0
POOLS = {  # name: (command factory, workers)
    "ours, 2 workers": (our_pool_command, 2),
    "ours, 8 workers": (our_pool_command, 8),
    "ours, 16 workers": (our_pool_command, 16),
    "ours --no-prewarm, 8 workers": (no_prewarm_pool_command, 8),
    "rq worker-pool, 8 workers": (rq_pool_command, 8),
}


def master_ports(pid: int, redis_port: int) -> set[int]:
    """Local ports of the master's own connections to Redis (not its workers')."""
    return {c.laddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.raddr and c.raddr.port == redis_port}


class Monitor:
    """Counts the commands Redis receives, by client port, while it runs (in a thread of this script)."""

    def __init__(self, client: Any) -> None:
        self.counts: dict[int, Counter[str]] = {}
        self._monitor = client.monitor()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Monitor:  # noqa: PYI034 - Python 3.10 has no typing.Self
        self._monitor.__enter__()
        self._thread.start()
        return self

    def _run(self) -> None:
        for command in self._monitor.listen():
            if self._stop.is_set():
                return
            port = int(str(command.get("client_port") or 0) or 0)
            name = str(command.get("command", "")).split(" ")[0].upper()
            self.counts.setdefault(port, Counter())[name] += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._monitor.__exit__(*exc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=RESULTS / "overhead.json")
    args = parser.parse_args()
    with redis_server() as server, started() as group:
        client = server.client()
        masters = {}
        for i, (name, (command, workers)) in enumerate(POOLS.items()):
            proc = group.start(command(server.url, f"overhead{i}", workers), LOGS / f"overhead-{i}.log")
            wait_registered(client, [proc.pid], workers)
            masters[name] = proc.pid
        time.sleep(args.settle)
        ports = {name: master_ports(pid, server.port) for name, pid in masters.items()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in masters.items()}
        with Monitor(server.client()) as monitor:
            time.sleep(args.seconds)
        cpu_after = {name: cpu_seconds(pid) for name, pid in masters.items()}
        ports = {name: ports[name] | master_ports(pid, server.port) for name, pid in masters.items()}
    periods = args.seconds / SCALING_PERIOD
    results = {}
    for name, (_, workers) in POOLS.items():
        commands: Counter[str] = Counter()
        for port in ports[name]:
            commands.update(monitor.counts.get(port, Counter()))
        cpu = cpu_after[name] - cpu_before[name]
        results[name] = {
            "workers": workers,
            "cpu_seconds": round(cpu, 3),
            "cpu_percent_of_one_core": round(100 * cpu / args.seconds, 3),
            "redis_commands": sum(commands.values()),
            "redis_commands_per_period": round(sum(commands.values()) / periods, 1),
            "redis_commands_by_name": dict(commands.most_common()),
        }
    print(f"\nmaster over {args.seconds:.0f} s, workers idle (scaling period {SCALING_PERIOD:.0f} s)")
    print_table(["pool", "CPU, % of one core", "Redis commands per period", "most frequent"],
                [[name, r["cpu_percent_of_one_core"], r["redis_commands_per_period"],
                  ", ".join(f"{k} {v}" for k, v in list(r["redis_commands_by_name"].items())[:4])]
                 for name, r in results.items()])
    write_json(args.json, {"machine": machine_facts(), "seconds": args.seconds, "scaling_period_s": SCALING_PERIOD,
                           "pools": results, "target": "ours, 8 workers: <= 0.5% of one core"})


if __name__ == "__main__":
    main()
