"""Prometheus metrics of a pool, served from the master's own loop.

The master must stay single-threaded (it forks), so the endpoint is no
``start_http_server`` thread: `MetricsServer` is a non-blocking socket the
master's selector watches, and `handle_ready` serves what is ready and
returns at once. A slow or silent client is dropped after a few seconds; it
never blocks the loop.

The metrics come from the pool's published snapshot (`StatePublisher.snapshot`,
which also carries the master's counters), rendered with prometheus-client
(the optional extra ``metrics``). Names follow Prometheus's conventions and
the rq-exporter project's where they overlap (``state``/``status`` labels).
"""

from __future__ import annotations

import logging
import math
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from ..infra.errors import BadInput

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_CLIENTS = 16  # connections served at once; more wait in the listen backlog
CLIENT_SECONDS = 5.0  # a connection that has not been served by then is dropped
MAX_REQUEST = 8192
RESTART_CAUSES = ("crashed", "killed", "max_jobs", "max_memory", "in_doubt", "exited")
JOB_STATUSES = ("finished", "failed", "stopped")
POOL_LABELS = ("pool", "host")

# (name, help, key in a group's snapshot); every one labelled pool, host, group.
GROUP_GAUGES = (
    ("rq_orchestrator_workers",
     "Workers that make the pool's size: alive and not retiring, or retiring with their replacement after them.",
     "workers"),
    ("rq_orchestrator_workers_target", "Workers the scaling policy wants.", "target"),
    ("rq_orchestrator_workers_min", "Fewest workers (--min-workers).", "min"),
    ("rq_orchestrator_workers_max", "Most workers (--max-workers).", "max"),
    ("rq_orchestrator_workers_busy", "Workers running a job now.", "busy"),
    ("rq_orchestrator_utilization_ratio", "Busy workers over the utilization window / workers now "
     "(+Inf: none now, busy time in the window).", "utilization"),
    ("rq_orchestrator_queued_jobs", "Jobs waiting in the group's queues.", "queued"),
    ("rq_orchestrator_oldest_job_wait_seconds", "How long the oldest queued job has waited (0: none).",
     "oldest_wait_s"),
)
GROUP_COUNTERS = (
    ("rq_orchestrator_scale_ups", "Scaling decisions that added workers.", "scale_ups"),
    ("rq_orchestrator_scale_downs", "Scaling decisions that retired workers.", "scale_downs"),
)

log = logging.getLogger("rq_orchestrator")


class MetricsUnavailable(BadInput):
    """The metrics endpoint cannot start: one line on stderr, exit status 2, nothing started."""


def require_client() -> None:
    """Fail early, in one clear line, when prometheus-client is missing."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise MetricsUnavailable(
            "--metrics-port needs prometheus-client: pip install 'rq_orchestrator[metrics]'"
        ) from None


# -- rendering ---------------------------------------------------------------
def render_metrics(snapshot: dict[str, Any]) -> bytes:
    """The pool's metrics in Prometheus's text format (0.0.4)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


class _SnapshotCollector:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        yield from group_families(self.snapshot)
        yield from pool_families(self.snapshot)
        yield from service_families(self.snapshot)


def group_families(snapshot: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    labels = [*POOL_LABELS, "group"]
    base = [snapshot["name"], snapshot["host"]]
    for kind, table in ((GaugeMetricFamily, GROUP_GAUGES), (CounterMetricFamily, GROUP_COUNTERS)):
        for name, text, key in table:
            family = kind(name, text, labels=labels)
            for group in snapshot["groups"]:
                family.add_metric([*base, group["name"]], group_value(group, key))
            yield family


def group_value(group: dict[str, Any], key: str) -> float:
    """A group's figure; a utilization the snapshot holds as null is infinite (no workers, busy time in the window)."""
    value = group.get(key)
    return math.inf if value is None and key == "utilization" else value or 0


def pool_families(snapshot: dict[str, Any]) -> Iterator[Any]:
    from prometheus_client.core import InfoMetricFamily

    base = [snapshot["name"], snapshot["host"]]
    info = InfoMetricFamily("rq_orchestrator_pool", "The pool's master.", labels=POOL_LABELS)
    info.add_metric(base, {"pid": str(snapshot["pid"]), "queues": ",".join(snapshot["queues"])})
    yield info
    yield _gauge("rq_orchestrator_start_time_seconds", "When the master started (Unix time).",
                 base, snapshot["started_at"])
    yield _gauge("rq_orchestrator_memory_bytes",
                 "Memory of the master, its workers and their job processes (PSS: shared pages counted once).",
                 base, snapshot.get("memory_bytes") or 0)
    counters = snapshot.get("counters") or {}
    yield _by_label("rq_orchestrator_worker_restarts", "Workers replaced, by cause.",
                    base, "cause", RESTART_CAUSES, counters.get("restarts", {}))
    yield _by_label("rq_orchestrator_jobs", "Jobs the pool's workers ended, by status.",
                    base, "status", JOB_STATUSES, counters.get("jobs", {}))
    cluster = snapshot.get("cluster")
    if cluster:
        labels = [*base, cluster["name"]]
        yield _gauge("rq_orchestrator_cluster_leases", "Cluster worker slots this pool holds.",
                     labels, cluster["leases"], "cluster")
        yield _gauge("rq_orchestrator_cluster_max_workers",
                     "Most workers of the whole cluster (--cluster-max-workers).", labels, cluster["limit"], "cluster")


def service_families(snapshot: dict[str, Any]) -> Iterator[Any]:
    """One gauge and one counter per service child (e.g. Frappe's scheduler), labelled ``service``; none without."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    services = snapshot.get("services") or []
    if not services:
        return
    labels = [*POOL_LABELS, "service"]
    up = GaugeMetricFamily("rq_orchestrator_service_up", "1 while the service's child process runs, else 0.",
                           labels=labels)
    restarts = CounterMetricFamily("rq_orchestrator_service_restarts",
                                   "Times the service's child process ended and was started again.", labels=labels)
    for service in services:
        values = [snapshot["name"], snapshot["host"], service["name"]]
        up.add_metric(values, 1 if service["state"] == "running" else 0)
        restarts.add_metric(values, service["restarts"])
    yield up
    yield restarts


def _gauge(name: str, text: str, values: list[str], value: float, *extra: str) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily(name, text, labels=[*POOL_LABELS, *extra])
    family.add_metric(values, value)
    return family


def _by_label(name: str, text: str, base: list[str], label: str, known: tuple[str, ...],
              counts: dict[str, int]) -> Any:
    """A counter per value of ``label``: the known ones from zero, so they exist before the first event."""
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, text, labels=[*POOL_LABELS, label])
    for value in dict.fromkeys([*known, *counts]):
        family.add_metric([*base, value], counts.get(value, 0))
    return family


# -- serving -----------------------------------------------------------------
@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    request: bytes = b""
    response: bytes | None = None  # what is left to send, once the request is read


class MetricsServer:
    """A tiny HTTP endpoint for the master's loop: GET any path returns ``render()``.

    Register it with `attach(selector)` (its sockets wake the loop) and call
    `handle_ready()` on every loop iteration; it never blocks.
    """

    def __init__(self, host: str, port: int, render: Callable[[], bytes]) -> None:
        require_client()
        self.render = render
        self._clients: dict[int, _Client] = {}
        self._selector: selectors.BaseSelector | None = None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.create_server((host, port), family=family, backlog=MAX_CLIENTS)
        except OSError as exc:
            raise MetricsUnavailable(f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._listener.setblocking(False)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def fileno(self) -> int:
        return self._listener.fileno()

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Have ``selector`` watch the listening socket and every client (their readiness wakes the loop)."""
        self._selector = selector
        selector.register(self._listener, selectors.EVENT_READ, self)

    def handle_ready(self) -> None:
        """Accept what is waiting, move every client as far as it goes without blocking, drop the late."""
        self._accept()
        now = time.monotonic()
        for client in list(self._clients.values()):
            if now > client.deadline or self._step(client):
                self._drop(client)
        self._pace_listener()

    def close(self) -> None:
        """In the master: stop serving."""
        for client in list(self._clients.values()):
            self._drop(client)
        self._unwatch(self._listener)
        self._listener.close()

    def close_inherited(self) -> None:
        """In a forked child: close the sockets without touching the selector it shares with the master."""
        for client in self._clients.values():
            client.sock.close()
        self._clients.clear()
        self._selector = None
        self._listener.close()

    def _accept(self) -> None:
        while len(self._clients) < MAX_CLIENTS:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. too many open files: try again next time
                log.debug("metrics: accept failed: %s", exc)
                return
            sock.setblocking(False)
            self._clients[sock.fileno()] = _Client(sock, time.monotonic() + CLIENT_SECONDS)
            self._watch(sock, selectors.EVENT_READ)

    def _pace_listener(self) -> None:
        """Stop watching for connections while MAX_CLIENTS are served: a full backlog must not spin the loop."""
        if self._selector is None:
            return
        watched = self._listener.fileno() in self._selector.get_map()
        if watched and len(self._clients) >= MAX_CLIENTS:
            self._unwatch(self._listener)
        elif not watched and len(self._clients) < MAX_CLIENTS:
            self._watch(self._listener, selectors.EVENT_READ)

    def _step(self, client: _Client) -> bool:
        """Read the request, then write the response; True once done (or the client is gone)."""
        try:
            if client.response is None and not self._read(client):
                return False
            assert client.response is not None
            sent = client.sock.send(client.response)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True
        client.response = client.response[sent:]
        return not client.response

    def _read(self, client: _Client) -> bool:
        """True once the whole request is in and the response is ready to send."""
        chunk = client.sock.recv(4096)
        if not chunk:
            raise ConnectionResetError("client closed")
        client.request += chunk
        if b"\r\n\r\n" not in client.request and len(client.request) < MAX_REQUEST:
            return False
        client.response = self._respond(client.request)
        self._watch(client.sock, selectors.EVENT_WRITE)
        return True

    def _respond(self, request: bytes) -> bytes:
        method = request.split(b" ", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return _http(405, "Method Not Allowed", b"only GET\n", "text/plain")
        try:
            body = self.render()
        except Exception:  # noqa: BLE001 - a rendering bug must not stop the master
            log.exception("metrics: rendering failed")
            return _http(500, "Internal Server Error", b"rendering failed\n", "text/plain")
        return _http(200, "OK", body if method == b"GET" else b"", CONTENT_TYPE, len(body))

    def _watch(self, sock: socket.socket, events: int) -> None:
        if self._selector is None:
            return
        if sock.fileno() in self._selector.get_map():
            self._selector.modify(sock, events, self)
        else:
            self._selector.register(sock, events, self)

    def _unwatch(self, sock: socket.socket) -> None:
        if self._selector is not None:
            with suppress(KeyError, ValueError, OSError):
                self._selector.unregister(sock)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        self._unwatch(client.sock)
        client.sock.close()


def _http(code: int, reason: str, body: bytes, content_type: str, length: int | None = None) -> bytes:
    head = (f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n")
    return head.encode() + body
