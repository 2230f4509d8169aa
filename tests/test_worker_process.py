"""A worker made in the master (no Redis, no pid) and finished in the child, against a real Redis."""

from __future__ import annotations

import os
import socket

from redis import Redis
from rq import Worker

from rq_orchestrator.infra.connection import fresh_copy, server_version
from rq_orchestrator.worker.process import build_worker, prepare_for_work


def nobody_listens() -> Redis:
    """A client whose every command would fail: nothing listens on its port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)


def test_the_master_builds_a_worker_without_talking_to_redis():
    worker = build_worker(Worker, ("default", "low"), {}, nobody_listens())
    assert worker.queue_names() == ["default", "low"]
    assert worker.pid is None  # the child's pid is recorded in the child
    assert worker.connection.connection_pool._created_connections == 0


def test_the_master_s_answer_spares_each_worker_the_version_request():
    worker = build_worker(Worker, ("default",), {}, nobody_listens(), server_version=(7, 0, 15))
    assert worker.get_redis_server_version() == (7, 0, 15)  # no INFO: the server is unreachable


def test_the_child_finishes_the_worker_with_its_name_pid_host_and_address(redis):
    version = server_version(redis)
    assert version is not None and len(version) == 3
    worker = build_worker(Worker, ("default",), {}, fresh_copy(redis), version)
    prepare_for_work(worker, "host.pool.w1.4242")
    assert (worker.name, worker.pid, worker.hostname) == ("host.pool.w1.4242", os.getpid(), socket.gethostname())
    clients = {c["name"]: c["addr"] for c in redis.client_list()}
    assert worker.ip_address == clients["host.pool.w1.4242"]
    assert worker.ip_address.startswith("127.0.0.1:")
    worker.register_birth()
    registered = Worker.find_by_key(worker.key, connection=redis)
    assert (registered.pid, registered.ip_address) == (os.getpid(), worker.ip_address)
    worker.register_death()


def test_a_master_with_a_thread_running_refuses_to_fork(start_pool, redis):
    # A thread would be copied into no child, with whatever lock it holds at the fork.
    pool = start_pool("--num-workers", "2", "--preload", "threaded_preload", "--no-prewarm")
    assert pool.wait(30) == 1
    assert "refusing to fork while threads run in the master: left-running" in pool.output()
    assert Worker.all(connection=redis) == []
