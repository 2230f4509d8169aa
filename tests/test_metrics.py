"""Prometheus metrics: rendered from the pool's snapshot, served by a thread-free endpoint.

The server runs in the test's main thread, driven the way the master drives
it (a selector, then `handle_ready`); only the scraping clients are threads.
"""

from __future__ import annotations

import math
import os
import selectors
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rq_orchestrator.master import metrics
from rq_orchestrator.cli import worker_pool
from rq_orchestrator.master.metrics import MetricsServer, MetricsUnavailable, render_metrics
from test_pool import FAST

WIRED = "--metrics-port" in [opt for param in worker_pool.params for opt in param.opts]

SNAPSHOT: dict[str, Any] = {
    "name": "short-default", "host": "vm", "pid": 42, "queues": ["short", "default"], "started_at": 1700000000.5,
    "memory_bytes": 123456789,
    "counters": {"restarts": {"crashed": 2, "max_jobs": 5}, "jobs": {"finished": 40, "failed": 3}},
    "cluster": {"name": "db", "limit": 6, "ttl": 15.0, "leases": 3, "waiting": False},
    "groups": [{"name": "short-default", "queues": ["short", "default"], "min": 1, "max": 4, "workers": 3,
                "target": 4, "busy": 2, "utilization": 0.75, "queued": 7, "oldest_wait_s": 12.5,
                "scale_ups": 3, "scale_downs": 1}],
}


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """sample name and sorted labels -> value, through Prometheus's own text parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


POOL = (("host", "vm"), ("pool", "short-default"))
GROUP = (("group", "short-default"), *POOL)


def test_the_snapshot_renders_as_parseable_prometheus_text():
    samples = parse(render_metrics(SNAPSHOT).decode())
    expected = {
        ("rq_orchestrator_workers", GROUP): 3, ("rq_orchestrator_workers_target", GROUP): 4,
        ("rq_orchestrator_workers_min", GROUP): 1, ("rq_orchestrator_workers_max", GROUP): 4,
        ("rq_orchestrator_workers_busy", GROUP): 2, ("rq_orchestrator_utilization_ratio", GROUP): 0.75,
        ("rq_orchestrator_queued_jobs", GROUP): 7, ("rq_orchestrator_oldest_job_wait_seconds", GROUP): 12.5,
        ("rq_orchestrator_scale_ups_total", GROUP): 3, ("rq_orchestrator_scale_downs_total", GROUP): 1,
        ("rq_orchestrator_memory_bytes", POOL): 123456789,
        ("rq_orchestrator_start_time_seconds", POOL): 1700000000.5,
        ("rq_orchestrator_worker_restarts_total", (("cause", "crashed"), *POOL)): 2,
        ("rq_orchestrator_worker_restarts_total", (("cause", "max_jobs"), *POOL)): 5,
        ("rq_orchestrator_worker_restarts_total", (("cause", "killed"), *POOL)): 0,  # known causes start at 0
        ("rq_orchestrator_jobs_total", (*POOL, ("status", "finished"))): 40,
        ("rq_orchestrator_jobs_total", (*POOL, ("status", "failed"))): 3,
        ("rq_orchestrator_cluster_leases", (("cluster", "db"), *POOL)): 3,
        ("rq_orchestrator_cluster_max_workers", (("cluster", "db"), *POOL)): 6,
        ("rq_orchestrator_pool_info", (("host", "vm"), ("pid", "42"), ("pool", "short-default"),
                                       ("queues", "short,default"))): 1,
    }
    for key, value in expected.items():
        assert samples.get(key) == value, key


def test_a_group_scaled_to_zero_with_busy_time_in_its_window_reads_infinite_utilization():
    snapshot = {**SNAPSHOT, "groups": [{**SNAPSHOT["groups"][0], "workers": 0, "utilization": None}]}
    samples = parse(render_metrics(snapshot).decode())
    assert samples[("rq_orchestrator_utilization_ratio", GROUP)] == math.inf  # status's JSON holds it as null


def test_an_empty_queue_waits_zero_and_a_pool_without_cluster_has_no_cluster_metrics():
    group = {**SNAPSHOT["groups"][0], "oldest_wait_s": 0.0, "queued": 0}
    samples = parse(render_metrics({**SNAPSHOT, "groups": [group], "cluster": None, "counters": {}}).decode())
    assert samples[("rq_orchestrator_oldest_job_wait_seconds", GROUP)] == 0
    assert samples[("rq_orchestrator_jobs_total", (*POOL, ("status", "failed")))] == 0
    assert not [name for name, _ in samples if "cluster" in name]


class Loop:
    """The master's loop in miniature: a selector that wakes it, then `handle_ready`."""

    def __init__(self, server: MetricsServer) -> None:
        self.server = server
        self.selector = selectors.DefaultSelector()
        server.attach(self.selector)

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.selector.select(0.05)
            self.server.handle_ready()


@contextmanager
def serving(render: Callable[[], bytes]) -> Iterator[tuple[MetricsServer, Callable[[float], None]]]:
    """A server on a free port and `pump(seconds)`, which runs the loop for that long."""
    loop = Loop(MetricsServer("127.0.0.1", 0, render))
    try:
        yield loop.server, loop.pump
    finally:
        loop.server.close()
        loop.selector.close()


def scrape(server: MetricsServer, pump: Callable[[float], None], method: str = "GET") -> Any:
    """Fetch / from a client thread while the main thread serves."""
    host, port = server.address
    result: dict[str, Any] = {}

    def client() -> None:
        request = urllib.request.Request(f"http://{host}:{port}/metrics", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                result.update(status=response.status, type=response.headers["Content-Type"], body=response.read())
        except urllib.error.HTTPError as exc:
            result.update(status=exc.code)

    thread = threading.Thread(target=client)
    thread.start()
    while thread.is_alive():
        pump(0.05)
    thread.join()
    return result


def test_the_endpoint_serves_the_text_format_without_a_thread_of_its_own():
    with serving(lambda: render_metrics(SNAPSHOT)) as (server, pump):
        assert server.address[0] == "127.0.0.1"
        response = scrape(server, pump)
        assert response["status"] == 200 and response["type"] == metrics.CONTENT_TYPE
        assert parse(response["body"].decode())[("rq_orchestrator_workers", GROUP)] == 3
        assert scrape(server, pump, "POST")["status"] == 405


def test_a_silent_client_neither_blocks_the_loop_nor_stays_forever(monkeypatch):
    monkeypatch.setattr(metrics, "CLIENT_SECONDS", 0.3)
    with serving(lambda: b"up 1\n") as (server, pump):
        silent = socket.create_connection(server.address)
        pump(0.05)
        started = time.monotonic()
        server.handle_ready()
        assert time.monotonic() - started < 0.05
        assert scrape(server, pump)["body"] == b"up 1\n"  # served while the silent one waits
        pump(0.4)
        assert silent.recv(10) == b""  # dropped: the server closed it
        silent.close()


def test_a_full_house_of_silent_clients_does_not_spin_the_loop(monkeypatch):
    monkeypatch.setattr(metrics, "CLIENT_SECONDS", 1.0)
    loop = Loop(MetricsServer("127.0.0.1", 0, lambda: b"ok 1\n"))
    try:
        silent = []
        for _ in range(metrics.MAX_CLIENTS + 2):  # the last two wait in the listen backlog
            silent.append(socket.create_connection(loop.server.address, timeout=5))
            loop.pump(0.01)
        started = time.monotonic()
        assert loop.selector.select(0.3) == [] and time.monotonic() - started > 0.25  # nothing keeps waking it
        loop.pump(1.5)  # the first ones time out, the two waiting in the backlog are taken, then time out too
        assert scrape(loop.server, loop.pump)["body"] == b"ok 1\n"
        for sock in silent:
            sock.close()
    finally:
        loop.server.close()
        loop.selector.close()


def test_a_response_larger_than_the_socket_buffer_is_sent_whole():
    body = b"# big\n" + b"x" * 4_000_000 + b"\n"
    with serving(lambda: body) as (server, pump):
        assert scrape(server, pump)["body"] == body


def test_a_failing_render_is_a_500_and_the_server_goes_on():
    calls = []

    def render() -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return b"ok 1\n"

    with serving(render) as (server, pump):
        assert scrape(server, pump)["status"] == 500
        assert scrape(server, pump)["body"] == b"ok 1\n"


def test_a_forked_child_closes_its_copy_without_disturbing_the_master():
    with serving(lambda: b"ok 1\n") as (server, pump):
        pid = os.fork()
        if pid == 0:  # the worker: drop the inherited sockets, as the master's child does
            server.close_inherited()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert scrape(server, pump)["body"] == b"ok 1\n"


def test_a_port_in_use_is_one_clear_error():
    with serving(lambda: b"") as (server, _):
        with pytest.raises(MetricsUnavailable, match=r"--metrics-port: cannot listen on 127.0.0.1:\d+"):
            MetricsServer("127.0.0.1", server.address[1], lambda: b"")
    assert MetricsUnavailable.exit_code == 2


def test_without_prometheus_client_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MetricsUnavailable, match=r"pip install 'rq_orchestrator\[metrics\]'"):
        metrics.require_client()


@pytest.mark.skipif(not WIRED, reason="--metrics-port is not wired into worker-pool yet")
def test_a_running_pool_serves_its_metrics(start_pool, redis):
    from rq import Queue

    pool = start_pool("--min-workers", "2", "--max-workers", "3", "--metrics-port", "0", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 20, "two ready workers")
    jobs = [Queue(connection=redis).enqueue("jobs.sleep", 0) for _ in range(5)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs), 20, "the jobs")
    host, port = pool.state()["metrics"].rsplit(":", 1)
    assert host == "127.0.0.1"
    assert f"metrics: http://{host}:{port}/metrics" in pool.output()  # the port 0 chose, said at the start

    def scraped() -> dict:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            return parse(response.read().decode())

    name = pool.state()["name"]
    labels = (("group", name), ("host", pool.state()["host"]), ("pool", name))
    samples = pool.wait_until(
        lambda: (s := scraped()).get(("rq_orchestrator_jobs_total", labels[1:] + (("status", "finished"),))) == 5 and s,
        10, "five finished jobs counted")
    assert samples[("rq_orchestrator_workers", labels)] == 2
    assert samples[("rq_orchestrator_workers_min", labels)] == 2
    assert samples[("rq_orchestrator_memory_bytes", labels[1:])] > 1e6


@pytest.mark.skipif(not WIRED, reason="--metrics-port is not wired into worker-pool yet")
def test_a_busy_metrics_port_is_bad_input_and_nothing_starts(redis_url, redis):
    from rq import Worker

    from test_cli import run_cli

    with serving(lambda: b"") as (server, _):
        result = run_cli("worker-pool", "--url", redis_url, "--metrics-port", str(server.address[1]))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "--metrics-port: cannot listen on 127.0.0.1" in result.stderr
    assert Worker.all(connection=redis) == []
