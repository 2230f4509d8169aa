"""Coalesced bookkeeping (worker.lean): fewer Redis commands a job, the same picture for monitors, suspension kept."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rq import Callback, Queue, SimpleWorker
from rq.job import Job
from rq.suspension import resume, suspend

try:
    from rq.exceptions import StopRequested
except ImportError:  # rq < 2
    from rq.worker import StopRequested

from redis import Redis

from acl_user import BENCH_ID, frappe_redis, frappe_url, make_user, user_url  # noqa: F401 - fixtures
from rq_orchestrator.infra.keys import wake_key
from rq_orchestrator.worker import lean
from rq_orchestrator.worker.idle_wait import idle_wait
from rq_orchestrator.worker.process import build_worker, prepare_for_work

JOBS = 40


def pool_worker(redis, name: str = "w1.lean", queues: tuple[str, ...] = ("default",)):
    """A --no-fork pool worker run in this process (burst mode: no master, no idle wait)."""
    worker = build_worker(SimpleWorker, list(queues), {}, redis, no_fork=True)
    prepare_for_work(worker, name)
    return worker


class Seen(list):
    """What MONITOR showed: (command, ran inside MULTI/EXEC) in order; ``by_script``: the commands a script ran."""

    def __init__(self) -> None:
        super().__init__()
        self.by_script: list[str] = []


@contextmanager
def monitored(redis) -> Iterator[Seen]:
    """Every command Redis runs meanwhile (MONITOR), each with whether it ran inside MULTI/EXEC."""
    seen = Seen()
    ready = threading.Event()

    def listen() -> None:
        with redis.monitor() as monitor:
            ready.set()
            in_transaction = False
            for entry in monitor.listen():
                command = entry["command"]
                if command == "ECHO monitor-end":
                    return
                if entry.get("client_type") == "lua":
                    seen.by_script.append(command)
                    continue
                in_transaction = command == "MULTI" or in_transaction and command != "EXEC"
                seen.append((command, in_transaction))

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.1)  # MONITOR is on before the first command of the test
    try:
        yield seen
    finally:
        redis.echo("monitor-end")
        thread.join(5)


def commands(redis) -> int:
    return sum(stats["calls"] for stats in redis.info("commandstats").values())


def commands_for_jobs(redis, worker) -> float:
    """Redis commands the worker sends per job, over JOBS jobs that return at once."""
    queue = Queue(connection=redis)
    for _ in range(JOBS):
        queue.enqueue("builtins.len", "abc")
    before = commands(redis)
    worker.work(burst=True, logging_level="WARNING")
    return (commands(redis) - before) / JOBS


def test_a_pool_worker_sends_fewer_commands_a_job_than_rqs_own(redis):
    own = commands_for_jobs(redis, SimpleWorker(["default"], connection=redis))
    pool = commands_for_jobs(redis, pool_worker(redis))
    # rq's own heartbeats 3-5 times, writes `idle` twice and looks for suspension, a job;
    # the pool's worker sends none of that between back-to-back jobs.
    assert pool <= own - 4, (own, pool)


def test_monitors_see_busy_during_a_job_idle_after_and_a_live_key(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("no_fork_jobs.worker_view", job_timeout=5) for _ in range(5)]
    worker.work(burst=True, logging_level="WARNING")
    floor = worker.worker_ttl + 60 - 5
    for job in jobs:
        state, ttl = Job.fetch(job.id, connection=redis).return_value()
        # rq would give the key job_timeout + 60 = 65 s here: the pool never goes below its idle TTL
        assert state == "busy" and ttl >= floor, (state, ttl)
    assert redis.hget(worker.key, "state") == b"idle"


def test_a_suspension_is_seen_within_the_coalescing_time(redis, monkeypatch):
    monkeypatch.setattr(lean, "COALESCE", 0.2)
    worker = pool_worker(redis)
    worker.check_for_suspension(burst=True)
    suspend(redis)
    try:
        worker.check_for_suspension(burst=True)  # just looked: not again yet
        time.sleep(0.3)
        with pytest.raises(StopRequested):
            worker.check_for_suspension(burst=True)
    finally:
        resume(redis)


def test_busy_is_written_inside_the_jobs_prepare_transaction(redis):
    """rq 1.x writes `busy` alone before preparing the job: the pool's worker sends it with the job's id."""
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    for _ in range(3):
        queue.enqueue("builtins.len", "abc")
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    busy = [inside for command, inside in seen if command == f"HSET {worker.key} state busy"]
    assert busy and all(busy), seen


def test_no_job_heartbeat_after_a_return_unless_a_success_callback_runs(redis):
    """rq's heartbeat that guards a callback is skipped only for a job that returned and has no success callback."""
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    plain = queue.enqueue("builtins.len", "abc")
    called_back = queue.enqueue("builtins.len", "abc", on_success=Callback("builtins.print"))
    failed = queue.enqueue("no_fork_jobs.boom")
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")

    def beats_alone(job) -> int:
        return sum(1 for command, inside in seen
                   if command.startswith(f"HSET rq:job:{job.id} last_heartbeat") and not inside)

    assert Job.fetch(plain.id, connection=redis).get_status() == "finished"
    assert beats_alone(plain) == 0, seen
    assert beats_alone(called_back) >= 1, seen
    assert beats_alone(failed) >= 1, seen
    assert Job.fetch(failed.id, connection=redis).get_status() == "failed"


def test_a_success_callback_that_cannot_be_imported_fails_the_job_as_rq_does(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    job = queue.enqueue("builtins.len", "abc", on_success=Callback("no_fork_jobs.no_such_callback"))
    after = queue.enqueue("builtins.len", "abc")
    worker.work(burst=True, logging_level="WARNING")
    assert Job.fetch(job.id, connection=redis).get_status() == "failed"
    assert "no_such_callback" in (Job.fetch(job.id, connection=redis).exc_info or "")
    assert Job.fetch(after.id, connection=redis).get_status() == "finished"  # the worker went on


def test_idle_after_a_job_that_returned_goes_with_its_success_transaction(redis):
    """rq writes `idle` alone after every job; here a job that returned carries it in its own transaction."""
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    for _ in range(3):
        queue.enqueue("builtins.len", "abc")
    failed = queue.enqueue("no_fork_jobs.boom")
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    idle = [inside for command, inside in seen if command == f"HSET {worker.key} state idle"]
    with_end = idle.count(True) + seen.by_script.count(f"HSET {worker.key} state idle")  # the end: one script
    assert with_end == 3, (seen, seen.by_script)  # one a job that returned
    assert idle.count(False) <= 2, seen  # the start's, and the failed job's (rq ignores a failure to record it)
    assert Job.fetch(failed.id, connection=redis).get_status() == "failed"
    assert redis.hget(worker.key, "state") == b"idle"


def armed_worker(redis, queues, name: str):
    """A --no-fork pool worker that waits as in a pool (idle_wait armed), stopping after one empty wait."""
    worker = pool_worker(redis, name, queues)
    idle_wait.arm(wake_key(name), redis, lambda: None)
    worker.pool_poll_seconds, worker.pool_polls_left = 1, 1
    return worker


def work_armed(worker) -> None:
    try:
        worker.work(logging_level="WARNING")
    finally:
        idle_wait.key = None


def test_a_waiting_job_is_popped_and_read_in_one_round_trip(redis):
    queues = ["prefetch-high", "prefetch-low"]  # several queues: the wait is a BLPOP
    worker = armed_worker(redis, queues, "w1.prefetch")
    jobs = [Queue(name, connection=redis).enqueue("builtins.len", "abc") for name in queues * 2]
    gone = Queue("prefetch-low", connection=redis).enqueue("builtins.len", "abc")
    redis.delete(gone.key)  # deleted while queued: skipped, as rq skips it
    with monitored(redis) as seen:
        work_armed(worker)
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert redis.llen("rq:queue:prefetch-low") == redis.llen("rq:queue:prefetch-high") == 0
    read_alone = [command for command, _ in seen if command.startswith("HGETALL rq:job:")]
    read_by_script = [command for command in seen.by_script if command.startswith("HGETALL rq:job:")]
    assert len(read_by_script) == len(jobs) + 1, seen.by_script
    assert read_alone == [f"HGETALL rq:job:{gone.id}"], read_alone  # rq's own read finds it gone
    high_first = [command.split(":")[-1] for command in read_by_script][:2]
    assert high_first == [jobs[0].id, jobs[2].id]  # the queues' order is kept, as BLPOP keeps it


def test_one_queue_s_waiting_job_is_moved_and_read_in_one_round_trip(redis):
    """On one queue rq pops with (B)LMOVE into its intermediate list: the script moves there too, and reads the job."""
    worker = armed_worker(redis, ["prefetch-one"], "w1.prefetch-one")
    queue = Queue("prefetch-one", connection=redis)
    jobs = [queue.enqueue("builtins.len", "abc") for _ in range(4)]
    with monitored(redis) as seen:
        work_armed(worker)
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert redis.llen(queue.key) == redis.llen(f"{queue.key}:intermediate") == 0
    into_rq_s_list = "LMOVE rq:queue:prefetch-one rq:queue:prefetch-one:intermediate LEFT RIGHT"
    moved_by_script = [command for command in seen.by_script if command == into_rq_s_list]
    read_by_script = [command.split(":")[-1] for command in seen.by_script if command.startswith("HGETALL rq:job:")]
    read_alone = [command for command, _ in seen if command.startswith("HGETALL rq:job:")]
    assert read_by_script == [job.id for job in jobs], seen.by_script  # in the queue's order
    assert len(moved_by_script) == len(jobs) + 1  # and one that found the queue empty: then rq's BLMOVE waits
    assert read_alone == [] and any(command.startswith("BLMOVE ") for command, _ in seen), seen


@pytest.mark.parametrize("names", [("short", "default"), ("default",)], ids=["lpop", "lmove"])
def test_frappe_s_rq_user_pops_and_reads_with_the_script(frappe_redis, redis, names):
    queues = [f"{BENCH_ID}:{name}" for name in names]  # Frappe's queue names under its rq user
    worker = armed_worker(frappe_redis, queues, "w1.frappe-user")
    jobs = [Queue(queues[-1], connection=frappe_redis).enqueue("builtins.len", "abc") for _ in range(3)]
    with monitored(redis) as seen:
        work_armed(worker)
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert idle_wait.pop_and_read is not None and idle_wait.move_and_read is not None
    assert sum(command.startswith("HGETALL rq:job:") for command in seen.by_script) == len(jobs), seen.by_script


def test_a_user_who_may_not_run_scripts_gets_jobs_by_blpop(redis, redis_server):
    redis_server.client().acl_setuser(username="noscripts", passwords="+pw", enabled=True, reset_keys=True,
                                      keys=["*"], commands=["+@all", "-@scripting"])
    client = Redis.from_url(user_url(redis_server, "noscripts", "pw"))
    queues = ["noscript-high", "noscript-low"]
    worker = armed_worker(client, queues, "w1.noscripts")
    jobs = [Queue("noscript-low", connection=redis).enqueue("builtins.len", "abc") for _ in range(3)]
    work_armed(worker)
    assert all(job.get_status(refresh=True) == "finished" for job in jobs)
    assert idle_wait.pop_and_read is None  # refused once, not tried again


def test_jobs_that_come_one_at_a_time_are_taken_by_blpop_alone(redis):
    """The script goes first only while jobs are queued: a worker whose BLPOP waited for its job waits the same way next."""
    queues = ["trickle-high", "trickle-low"]
    worker = armed_worker(redis, queues, "w1.trickle")
    worker.pool_poll_seconds, worker.pool_polls_left = 2, 1
    queue = Queue("trickle-low", connection=redis)
    jobs = []

    def trickle() -> None:
        for _ in range(3):
            time.sleep(0.3)
            jobs.append(queue.enqueue("builtins.len", "abc"))

    feeder = threading.Thread(target=trickle)
    with monitored(redis) as seen:
        feeder.start()
        work_armed(worker)
        feeder.join()
    assert len(jobs) == 3 and all(job.get_status(refresh=True) == "finished" for job in jobs)
    scripts = [command for command, _ in seen if command.startswith(f"EVALSHA {idle_wait.pop_and_read.sha} ")]
    assert len(scripts) == 1, seen  # the fresh worker's first look only
