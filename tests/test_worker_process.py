"""A worker made in the master (no Redis, no pid) and finished in the child, against a real Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from redis import Redis
from rq import Worker

from rq_orchestrator.infra.connection import fresh_copy, server_version
from rq_orchestrator.worker.idle_wait import idle_wait
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


class LogFailsOnStop(Worker):
    """Its warm-stop log line raises, as a write does when the signal lands inside a write to the same stream."""

    def handle_warm_shutdown_request(self) -> None:
        raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")


def test_a_stop_whose_log_line_fails_is_still_a_stop():
    import signal

    worker = build_worker(LogFailsOnStop, ("default",), {}, nobody_listens())
    try:
        worker.request_stop(signal.SIGTERM, None)
    except RuntimeError:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        stopped, idle_wait.stopping = idle_wait.stopping, False  # this process's, shared with later tests
    assert worker._stop_requested and stopped


# A stand-in pool (a process group of its own) whose worker kills a work process that is still in
# that group, as one is between rq's fork and its setpgrp/setsid: rq's own kill_horse kills the group.
KILL_FRESH_HORSE = """
import os, signal, time
os.setpgrp()
from rq import Worker
from rq_orchestrator.worker.process import build_worker
from tests.test_worker_process import nobody_listens
horse = os.fork()
if horse == 0:
    time.sleep(30)
    os._exit(0)
worker = build_worker(Worker, ("default",), {}, nobody_listens())
worker._horse_pid = horse
worker.kill_horse()
_, status = os.waitpid(horse, 0)
print("survived; the work process", "was killed" if os.WIFSIGNALED(status) else "exited")
"""


def test_killing_a_work_process_not_yet_in_its_own_group_spares_the_pool():
    done = subprocess.run([sys.executable, "-c", KILL_FRESH_HORSE], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.stdout.strip() == "survived; the work process was killed", (done.returncode, done.stderr[-2000:])


def test_a_master_with_a_thread_running_refuses_to_fork(start_pool, redis):
    # A thread would be copied into no child, with whatever lock it holds at the fork.
    pool = start_pool("--num-workers", "2", "--preload", "threaded_preload", "--no-prewarm")
    assert pool.wait(30) == 1
    assert "refusing to fork while threads run in the master: left-running" in pool.output()
    assert Worker.all(connection=redis) == []
