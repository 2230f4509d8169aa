"""Service children: a callable the pool runs once, in a child of its own, restarted with back-off, stopped with it.

The pools here run `tests/service_pool.py` (one worker, and a test callable as
the service `test-service`), a real master process on the suite's Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from conftest import TESTS, PoolProcess, alive, child_env
from rq_orchestrator.cli.status import report
from rq_orchestrator.frappe_adapter import SCHEDULER_SERVICE, run_frappe_scheduler, scheduler_services, worker_class
from rq_orchestrator.infra.config import ServiceSpec
from rq_orchestrator.master.service_child import MAX_DELAY, ServiceChild, ServiceChildren
from service_pool import STARTS
from test_metrics import parse


class ServicePool(PoolProcess):
    """`tests/service_pool.py URL SERVICE` in its own session."""

    def __init__(self, url: str, service: str, log_path: Path) -> None:
        self.url, self.log_path = url, log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in cleanup()
        argv = [sys.executable, str(TESTS / "service_pool.py"), url, service]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=child_env())
        self.client = Redis.from_url(url)

    def service(self) -> dict[str, Any]:
        state = self.state()
        return state["services"][0] if state else {}


@pytest.fixture
def start_service_pool(redis_url: str, tmp_path: Path) -> Iterator[Callable[[str], ServicePool]]:
    pools: list[ServicePool] = []

    def start(service: str) -> ServicePool:
        pools.append(ServicePool(redis_url, service, tmp_path / f"pool-{len(pools)}.log"))
        return pools[-1]

    yield start
    for pool in pools:
        pool.cleanup()


def starts(redis: Redis) -> list[tuple[int, int]]:
    """(pid, parent pid) of every start of the test service, in order."""
    return [tuple(map(int, entry.split())) for entry in redis.lrange(STARTS, 0, -1)]  # type: ignore[misc]


def scrape(pool: ServicePool) -> dict:
    with urllib.request.urlopen(f"http://{pool.state()['metrics']}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def service_labels(pool: ServicePool) -> tuple[tuple[str, str], ...]:
    state = pool.state()
    return (("host", state["host"]), ("pool", state["name"]), ("service", "test-service"))


def test_the_service_runs_once_in_a_child_of_the_master_and_shows_in_status_and_metrics(start_service_pool, redis):
    pool = start_service_pool("sleeper")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 20, "a ready worker")
    [(pid, parent)] = pool.wait_until(lambda: starts(redis), 10, "the service's start")
    assert parent == pool.pid
    assert pid not in pool.ready_pids()
    service = pool.wait_until(lambda: pool.service().get("pid") == pid and pool.service(), 10, "the service published")
    assert (service["name"], service["state"], service["restarts"]) == ("test-service", "running", 0)
    text, code = report(redis, as_json=False)
    assert code == 0
    assert f"service test-service running, pid {pid}, 0 restarts" in text
    samples = scrape(pool)
    assert samples[("rq_orchestrator_service_up", service_labels(pool))] == 1
    assert samples[("rq_orchestrator_service_restarts_total", service_labels(pool))] == 0
    time.sleep(1)
    assert len(starts(redis)) == 1  # once, not per worker or per loop


def test_a_killed_service_is_restarted_with_back_off_and_is_no_worker(start_service_pool, redis):
    pool = start_service_pool("sleeper")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 20, "a ready worker")
    [(first, _)] = pool.wait_until(lambda: starts(redis), 10, "the service's start")
    workers = pool.ready_pids()
    os.kill(first, signal.SIGKILL)
    pool.wait_until(lambda: len(starts(redis)) == 2, 10, "the service's restart")
    second = starts(redis)[1][0]
    os.kill(second, signal.SIGKILL)
    pool.wait_until(lambda: len(starts(redis)) == 3, 10, "the service's second restart")
    third = starts(redis)[2][0]
    service = pool.wait_until(lambda: pool.service().get("pid") == third and pool.service(), 10, "the third published")
    assert (service["state"], service["restarts"], service["last_exit"]) == ("running", 2, "killed by SIGKILL")
    output = pool.output()
    assert "service test-service exited (killed by SIGKILL); restarting it in 1 s" in output
    assert "service test-service exited (killed by SIGKILL); restarting it in 2 s" in output
    assert pool.ready_pids() == workers  # no worker was replaced or counted for it
    assert pool.state()["counters"]["restarts"] == {}
    assert scrape(pool)[("rq_orchestrator_service_restarts_total", service_labels(pool))] == 2


def test_a_service_that_ends_by_itself_is_started_again_later_each_time(start_service_pool, redis):
    pool = start_service_pool("quitter")
    pool.wait_until(lambda: len(starts(redis)) >= 3, 20, "two restarts")
    output = pool.output()
    assert "service test-service exited (exit status 0); restarting it in 1 s" in output
    assert "service test-service exited (exit status 0); restarting it in 2 s" in output
    assert pool.proc.poll() is None


def test_the_service_stops_with_the_pool(start_service_pool, redis):
    pool = start_service_pool("sleeper")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 20, "a ready worker")
    [(pid, _)] = pool.wait_until(lambda: starts(redis), 10, "the service's start")
    os.kill(pid, signal.SIGINT)  # a terminal's Ctrl+C reaches it too: the master decides
    time.sleep(0.5)
    assert alive(pid)
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert not alive(pid)
    assert "restarting" not in pool.output()


def test_the_service_dies_with_the_master(start_service_pool, redis):
    pool = start_service_pool("sleeper")
    [(pid, _)] = pool.wait_until(lambda: starts(redis), 20, "the service's start")
    os.kill(pool.pid, signal.SIGKILL)  # the master alone: no stop, no teardown
    pool.wait_until(lambda: not alive(pid), 10, "the service's death after its master's")


def test_a_service_that_ignores_term_is_killed_after_the_grace():
    services = ServiceChildren([ServiceSpec("stubborn", lambda: None)])
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: TERM ignored, then say so
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(ready_w, b"x")
        time.sleep(30)
        os._exit(0)
    os.read(ready_r, 1)
    os.close(ready_r)
    os.close(ready_w)
    services.children[0].started(pid, time.monotonic())
    services.stop(grace=0.5)
    child = services.children[0]
    assert (child.pid, child.state, child.last_exit) == (None, "stopped", "killed by SIGKILL")
    assert not alive(pid)


def test_back_off_doubles_for_quick_ends_and_starts_afresh_after_a_long_run():
    child = ServiceChild(ServiceSpec("s", lambda: None), now=0.0)
    delays = []
    now = 0.0
    for _ in range(8):
        child.started(1234, now)
        now += 0.5
        delays.append(child.exited("exit status 1", now))
        now = child.start_at
    assert delays == [1, 2, 4, 8, 16, 32, MAX_DELAY, MAX_DELAY]
    assert child.restarts == 8 and child.state == "restarting"
    child.started(1234, now)
    assert child.exited("exit status 1", now + 3600) == 1  # it ran an hour: a fresh start
    child.stopping = True
    child.started(1234, now)
    assert child.exited("killed by SIGTERM", now + 1) is None and child.state == "stopped"
    assert not child.due(now + 100)


def test_frappe_s_scheduler_is_a_service_only_where_frappe_s_worker_class_would_start_it():
    from rq import Worker

    class FrappeLikeWorker(Worker):
        def start_frappe_scheduler(self) -> None:
            """As FrappeWorker (v15's pool, develop, v16) has it."""

    assert scheduler_services(Worker) == ()  # a Frappe without FrappeWorker
    [service] = scheduler_services(FrappeLikeWorker)
    assert (service.name, service.target) == (SCHEDULER_SERVICE, run_frappe_scheduler)


def test_the_pool_runs_the_class_frappe_s_own_pool_runs_without_its_scheduler_thread():
    """v15 has FrappeWorker (its pool starts the scheduler in every worker) and no no-fork class; develop has both."""
    from types import SimpleNamespace

    from rq import Worker

    class FrappeWorker(Worker):
        def start_frappe_scheduler(self) -> None:
            raise AssertionError("the scheduler thread must not start in a pool worker")

    class FrappeWorkerNoFork(FrappeWorker):
        pass

    v15 = SimpleNamespace(FrappeWorker=FrappeWorker)
    develop = SimpleNamespace(FrappeWorker=FrappeWorker, FrappeWorkerNoFork=FrappeWorkerNoFork)
    for background_jobs, no_fork, base in [(v15, False, FrappeWorker), (v15, True, FrappeWorker),
                                           (develop, False, FrappeWorker), (develop, True, FrappeWorkerNoFork)]:
        chosen = worker_class(background_jobs, no_fork)
        assert chosen.__mro__[1] is base
        chosen.start_frappe_scheduler(None)  # a no-op here
        assert scheduler_services(chosen) != ()
    assert worker_class(SimpleNamespace(), False) is Worker
