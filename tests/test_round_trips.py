"""Fewer round trips a job (worker.round_trips, worker.lean), on a real Redis: the end in one script, one start."""

from __future__ import annotations

import pytest
import rq
from redis import Redis
from redis.exceptions import ResponseError, WatchError
from rq import Queue
from rq.job import Job
from rq.version import VERSION as RQ_VERSION

from acl_user import BENCH_ID, frappe_redis, frappe_url, make_user, user_url  # noqa: F401 - fixtures
from rq_orchestrator.worker import round_trips
from rq_orchestrator.worker.round_trips import CarryMixin, HoldMixin, OneTripMixin, pipelines_of
from test_lean import monitored, pool_worker


def finished(redis, job) -> Job:
    fetched = Job.fetch(job.id, connection=redis)
    assert fetched.get_status() == "finished", (fetched.get_status(), fetched.exc_info)
    return fetched


def test_a_job_s_end_is_one_script_and_its_persist_goes_with_the_prepare(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("builtins.len", "abc") for _ in range(3)]
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    assert all(finished(redis, job).return_value() == 3 for job in jobs)
    sent = [command.split(" ")[0] for command, _ in seen]
    assert "WATCH" not in sent and "SMEMBERS" not in sent, seen
    assert sent.count("EVALSHA") == len(jobs) and sent.count("EVAL") <= 1, seen  # EVAL: a server new to it
    assert all(seen.by_script.count(f"EXISTS {job.dependents_key}") == 1 for job in jobs), seen.by_script
    persists = [inside for command, inside in seen if command.startswith("PERSIST rq:job:")]
    assert persists == [True] * len(jobs), seen  # each inside the job's prepare transaction, none alone
    for job in jobs:  # what rq's transaction writes at the end, written by the script
        assert "ZADD rq:finished:default" in " ".join(c for c in seen.by_script if job.id in c)
        assert redis.zscore("rq:finished:default", job.id) is not None
        assert redis.zscore("rq:wip:default", job.id) is None
    assert int(redis.hget(worker.key, "successful_job_count")) == len(jobs)


def test_a_job_with_a_dependent_waiting_enqueues_it_through_rq_s_own_transaction(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    parent = queue.enqueue("builtins.len", "abc")
    child = queue.enqueue("builtins.len", "ab", depends_on=parent)
    assert child.get_status() == "deferred"
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    assert finished(redis, parent) and finished(redis, child).return_value() == 2
    assert f"WATCH {parent.dependents_key}" in [command for command, _ in seen], seen  # the script wrote nothing


def test_a_job_with_a_dependent_leaves_nothing_of_its_run_behind(redis):
    """The script refused, rq's second pass runs from where the first began: its execution is deleted (rq 2.x)."""
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    parent = queue.enqueue("builtins.len", "abc")
    queue.enqueue("builtins.len", "ab", depends_on=parent)
    worker.work(burst=True, logging_level="WARNING")
    assert redis.zrange(queue.started_job_registry.key, 0, -1) == []
    assert redis.keys("rq:execution:*") == []
    queue.started_job_registry.cleanup(timestamp=10**11)  # what rq does to what it finds there, much later
    finished(redis, parent)


@pytest.mark.skipif(not hasattr(rq, "Repeat"), reason="rq < 2.2 has no Repeat")
def test_a_repeating_job_with_a_dependent_runs_every_repeat(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    parent = queue.enqueue("builtins.len", "abc", repeat=rq.Repeat(times=1))
    queue.enqueue("builtins.len", "ab", depends_on=parent)
    worker.work(burst=True, logging_level="WARNING")
    assert redis.xlen(f"rq:results:{parent.id}") == 2


def test_a_dependent_added_while_the_job_runs_is_enqueued_when_it_ends(redis):
    worker = pool_worker(redis)
    parent = Queue(connection=redis).enqueue("no_fork_jobs.enqueue_my_dependent")
    worker.work(burst=True, logging_level="WARNING")
    child_id = finished(redis, parent).return_value()
    assert finished(redis, Job.fetch(child_id, connection=redis)).return_value() == 2


def test_a_job_s_own_code_holds_the_real_client(redis):
    worker = pool_worker(redis)
    job = Queue(connection=redis).enqueue("no_fork_jobs.connection_type")
    worker.work(burst=True, logging_level="WARNING")
    assert finished(redis, job).return_value() == type(redis).__name__


def test_a_job_with_a_time_to_live_is_persisted_before_it_runs(redis):
    worker = pool_worker(redis)
    job = Queue(connection=redis).enqueue("builtins.len", "abc", ttl=300, result_ttl=-1)
    assert redis.ttl(job.key) > 0
    worker.work(burst=True, logging_level="WARNING")
    finished(redis, job)
    assert redis.ttl(job.key) == -1  # result_ttl=-1: kept for ever, as rq keeps it


def test_frappe_s_rq_user_ends_jobs_with_the_script(frappe_redis, redis):
    queue = Queue(f"{BENCH_ID}:default", connection=frappe_redis)
    worker = pool_worker(frappe_redis, queues=(queue.name,))
    jobs = [queue.enqueue("builtins.len", "abc") for _ in range(2)]
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    assert all(finished(frappe_redis, job) for job in jobs)
    assert sum(command.startswith("EVALSHA") for command, _ in seen) == len(jobs), seen


def test_a_user_who_may_not_run_scripts_ends_jobs_with_rq_s_transaction(redis, redis_server):
    redis_server.client().acl_setuser(username="noscripts-end", passwords="+pw", enabled=True, reset_keys=True,
                                      keys=["*"], commands=["+@all", "-@scripting"])
    client = Redis.from_url(user_url(redis_server, "noscripts-end", "pw"))
    worker = pool_worker(client)
    queue = Queue(connection=redis)
    parent = queue.enqueue("builtins.len", "abc")
    child = queue.enqueue("builtins.len", "ab", depends_on=parent)
    plain = queue.enqueue("builtins.len", "abcd")
    worker.work(burst=True, logging_level="WARNING")
    assert finished(redis, parent) and finished(redis, child) and finished(redis, plain).return_value() == 4
    assert client.connection_pool in round_trips.refused and redis.connection_pool not in round_trips.refused


# The pipeline itself, as rq's end-of-job code drives it.


def pipeline(redis):
    with pipelines_of(redis, OneTripMixin):
        return redis.pipeline()


def test_an_absent_watched_set_reads_empty_and_the_transaction_runs_in_one_script(redis):
    redis.script_load(round_trips.WATCHED_ABSENT)
    with pipeline(redis) as pipe, monitored(redis) as seen:
        pipe.watch("deps")
        assert pipe.smembers("deps") == set()
        pipe.multi()
        pipe.hset("h", "f", "v")
        pipe.incr("n")
        replies = pipe.execute()
    assert replies == [1, 1]
    assert redis.hget("h", "f") == b"v" and redis.get("n") == b"1"
    assert [command.split(" ")[0] for command, _ in seen if not command.startswith("HELLO")] == ["EVALSHA"], seen


def test_a_server_that_does_not_know_the_script_yet_is_sent_it(redis):
    redis.script_flush()
    with pipeline(redis) as pipe, monitored(redis) as seen:
        pipe.watch("deps")
        pipe.smembers("deps")
        pipe.multi()
        pipe.set("written", "1")
        pipe.execute()
    assert redis.get("written") == b"1"
    sent = [command for command, _ in seen if not command.startswith("HELLO")]
    assert len(sent) == 2 and sent[0].startswith("EVALSHA"), sent  # then EVAL (redis-py 4.5 garbles its lines)
    assert redis.script_exists(round_trips.WATCHED_ABSENT_SHA) == [True]


def test_a_transaction_with_a_script_in_it_is_rq_s_own_with_the_read_checked(redis):
    with pipeline(redis) as pipe, monitored(redis) as seen:
        pipe.watch("deps")
        assert pipe.smembers("deps") == set()
        pipe.multi()
        pipe.eval("return 7", 0)  # a script may not run a script: this one goes as rq would send it
        assert pipe.execute() == [7]
    assert [command.split(" ")[0] for command, _ in seen if not command.startswith("HELLO")] == [
        "WATCH", "EXISTS", "MULTI", "EVAL", "EXEC"], seen
    redis.sadd("deps", "child")
    with pipeline(redis) as pipe:
        pipe.watch("deps")
        pipe.smembers("deps")
        pipe.multi()
        pipe.eval("redis.call('SET', 'written', '1')", 0)
        with pytest.raises(WatchError):
            pipe.execute()
    assert redis.get("written") is None


def test_a_watched_set_that_exists_aborts_the_script_and_the_retry_is_rq_s_own(redis):
    redis.sadd("deps", "child")
    with pipeline(redis) as pipe:
        pipe.watch("deps")
        assert pipe.smembers("deps") == set()  # the optimistic answer...
        pipe.multi()
        pipe.set("written", "1")
        with pytest.raises(WatchError):
            pipe.execute()  # ...that the script refutes before it writes anything
        assert redis.get("written") is None
        pipe.watch("deps")  # rq's loop goes round again
        assert pipe.smembers("deps") == {b"child"}
        pipe.multi()
        pipe.set("written", "2")
        pipe.execute()
    assert redis.get("written") == b"2"


def test_a_failing_command_is_raised_after_the_others_ran_as_in_multi_exec(redis):
    redis.set("a-string", "x")
    with pipeline(redis) as pipe:
        pipe.watch("deps")
        pipe.smembers("deps")
        pipe.multi()
        pipe.set("before", "1")
        pipe.hset("a-string", "f", "v")
        pipe.set("after", "1")
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            pipe.execute()
    assert redis.get("before") == redis.get("after") == b"1"


def test_any_other_read_while_watching_sends_a_real_watch(redis):
    other = Redis(connection_pool=redis.connection_pool)
    with pipeline(redis) as pipe:
        pipe.watch("deps")
        assert pipe.get("deps") is None  # not the read the script can answer for: WATCH goes now
        other.sadd("deps", "child")  # a change after the WATCH...
        pipe.multi()
        pipe.set("written", "1")
        with pytest.raises(WatchError):
            pipe.execute()  # ...aborts the transaction, as Redis's WATCH does
    assert redis.get("written") is None


# rq 2/3 without a fork: the execution's transaction goes with the job's prepare.

needs_executions = pytest.mark.skipif(int(RQ_VERSION.split(".")[0]) < 2, reason="rq 1.x records no executions")


def transactions(seen) -> list[list[str]]:
    """The MULTI/EXEC blocks MONITOR saw, each as its commands."""
    blocks: list[list[str]] = []
    for command, inside in seen:
        if command == "MULTI":
            blocks.append([])
        elif inside:
            blocks[-1].append(command)
    return blocks


@needs_executions
def test_a_job_s_execution_is_recorded_in_its_prepare_transaction(redis):
    worker = pool_worker(redis)
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("no_fork_jobs.executions_recorded") for _ in range(3)]
    with monitored(redis) as seen:
        worker.work(burst=True, logging_level="WARNING")
    assert [finished(redis, job).return_value() for job in jobs] == [1, 1, 1]  # recorded before the job ran
    for job in jobs:
        starts = [block for block in transactions(seen)
                  if any(command.startswith(f"HSET rq:execution:{job.id}:") for command in block)]
        assert len(starts) == 1, transactions(seen)
        assert any(command.startswith(f"PERSIST rq:job:{job.id}") for command in starts[0]), starts[0]


def test_held_commands_go_with_their_job_s_next_transaction_only(redis):
    with pipelines_of(redis, HoldMixin, held_for="job-a"):
        with redis.pipeline() as pipe:
            pipe.set("held-for-a", "1")
            assert pipe.execute() == [None]
    assert redis.get("held-for-a") is None  # not sent yet
    with monitored(redis) as seen, pipelines_of(redis, CarryMixin, held_for="job-a"):
        with redis.pipeline() as pipe:
            pipe.set("a-prepared", "1")
            pipe.execute()
    assert redis.get("held-for-a") == redis.get("a-prepared") == b"1"
    assert transactions(seen) == [["SET held-for-a 1", "SET a-prepared 1"]]
    with pipelines_of(redis, HoldMixin, held_for="job-b"):
        with redis.pipeline() as pipe:
            pipe.set("held-for-b", "1")
            pipe.execute()
    with pipelines_of(redis, CarryMixin, held_for="job-c"):  # job b never got to its prepare
        with redis.pipeline() as pipe:
            pipe.set("c-prepared", "1")
            pipe.execute()
    assert redis.get("c-prepared") == b"1" and redis.get("held-for-b") is None


def test_pipelines_of_blocks_nest_and_leave_the_client_as_it_was(redis):
    with pipelines_of(redis, HoldMixin, held_for="job-x"):
        with pipelines_of(redis, OneTripMixin):
            assert isinstance(redis.pipeline(), HoldMixin) and isinstance(redis.pipeline(), OneTripMixin)
        assert isinstance(redis.pipeline(), HoldMixin) and not isinstance(redis.pipeline(), OneTripMixin)
    assert not isinstance(redis.pipeline(), HoldMixin) and "pipeline" not in vars(redis)
