"""Pools run under Frappe's bench rq user (`use_rq_auth`): keys ~rq:[^q]* ~rq:queues ~rq:queue:<bench>:*, +@all -@admin.

Jobs, scheduled jobs, `status`, the history, the cluster cap and queue groups work under
that user; what a stricter user refuses is said at start, once.
"""

from __future__ import annotations

import signal
import time
from datetime import timedelta
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import NoPermissionError
from rq import Queue
from rq.command import send_shutdown_command
from rq.job import Job

from acl_user import BENCH_ID, PASSWORD, USER, frappe_redis, frappe_url, make_user  # noqa: F401 - fixtures
from conftest import PoolProcess, wait_until
from rq_orchestrator.infra.keys import POOLS, cluster_key
from rq_orchestrator.master.cluster import leases_in_use
from rq_orchestrator.master.state import read_history
from test_pool import FAST
from test_status import run_status, status_json

DEFAULT = f"{BENCH_ID}:default"


@pytest.fixture
def start_pool_as(tmp_path: Path) -> Iterator[Callable[..., PoolProcess]]:
    """`start_pool`, with the Redis URL (and so the user) given by the test."""
    pools: list[PoolProcess] = []

    def start(url: str, *args: str) -> PoolProcess:
        pools.append(PoolProcess(url, args, tmp_path / f"pool-{len(pools)}.log"))
        return pools[-1]

    yield start
    for pool in pools:
        pool.cleanup()


def run_jobs(connection: Redis, queue: str, count: int, timeout: float = 30) -> list[Job]:
    """Enqueue ``count`` small jobs (no key of their own: the user may not write `test:*`) and wait for them."""
    jobs = [Queue(queue, connection=connection).enqueue("operator.add", i, 1) for i in range(count)]
    wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs), timeout, f"jobs on {queue}")
    assert [j.return_value() for j in jobs] == [i + 1 for i in range(count)]
    return jobs


RELAY_REFUSED = "rq's worker commands"  # no channel rights under Frappe's user: said once, on purpose


def refused(output: str) -> list[str]:
    """Lines about a permission the pool lacked, but for the one said on purpose about rq's commands."""
    return [line for line in output.splitlines() if "permission" in line.lower() and RELAY_REFUSED not in line]


def test_the_fixture_user_has_frappe_s_rules_and_no_more(frappe_redis, redis):
    user = redis.acl_getuser(USER)
    assert sorted(user["keys"]) == sorted(["~rq:[^q]*", "~rq:queues", f"~rq:queue:{BENCH_ID}:*"])
    assert user["categories"] == ["+@all", "-@admin"] and not user["channels"]
    for key in ("rq-orchestrator:pools", "rq:queue:otherbench:default", "rq_orchestrator:x"):
        with pytest.raises(NoPermissionError):
            frappe_redis.set(key, 1)
    with pytest.raises(NoPermissionError):
        frappe_redis.client_list()
    assert frappe_redis.set("rq:orchestrator:x", 1)


def test_jobs_status_and_history_work_under_frappe_s_user(start_pool_as, frappe_url, frappe_redis, redis):
    pool = start_pool_as(frappe_url, DEFAULT, "--min-workers", "1", "--max-workers", "3", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 20, "a ready worker")
    later = Queue(DEFAULT, connection=frappe_redis).enqueue_in(timedelta(seconds=1), "operator.add", 2, 2)
    run_jobs(frappe_redis, DEFAULT, 20)
    pool.wait_until(lambda: later.get_status(refresh=True) == "finished", 15, "the scheduled job (rq's scheduler)")
    code, document = status_json(frappe_url)
    assert code == 0 and [p["pid"] for p in document["pools"]] == [pool.pid]
    assert run_status(frappe_url).returncode == 0
    key = document["pools"][0]["key"]
    assert pool.wait_until(lambda: [s for s in read_history(frappe_redis, key) if s["kind"] == "tick"], 10, "ticks")
    every_key = [k.decode() for k in redis.keys("*")]
    assert POOLS in every_key and f"{key}:history" in every_key
    for name in every_key:  # every key the pool and rq wrote is one the user may use
        frappe_redis.exists(name)
    assert not refused(pool.output()), refused(pool.output())
    assert pool.output().count(RELAY_REFUSED) == 1  # the one thing this user may not do, said once
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert frappe_redis.zcard(POOLS) == 0


def test_the_cluster_cap_holds_under_frappe_s_user(start_pool_as, frappe_url, frappe_redis):
    args = (DEFAULT, "--cluster", "c", "--cluster-max-workers", "2", "--min-workers", "2", "--max-workers", "2", *FAST)
    pools = [start_pool_as(frappe_url, *args, "--name", f"p{i}") for i in range(2)]
    wait_until(lambda: leases_in_use(frappe_redis, "c") == 2, 20, "both slots taken")
    Queue(DEFAULT, connection=frappe_redis).enqueue("time.sleep", 0.1)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # the second pool wants two workers but gets none
        assert sum(len(p.ready_pids()) for p in pools) <= 2
        assert frappe_redis.zcard(cluster_key("c")) <= 2
        time.sleep(0.1)
    assert "all 2 worker slots are taken" in pools[0].output() + pools[1].output()
    assert not refused(pools[0].output() + pools[1].output())


def test_queue_groups_work_under_frappe_s_user(start_pool_as, frappe_url, frappe_redis):
    short, long = f"{BENCH_ID}:short", f"{BENCH_ID}:long"
    pool = start_pool_as(frappe_url, "--queue", f"{short},{DEFAULT}:1", "--queue", f"{long}:1-2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 20, "one worker per group")
    for queue in (short, DEFAULT, long):
        run_jobs(frappe_redis, queue, 5)
    state = pool.state()
    assert [g["queues"] for g in state["groups"]] == [[short, DEFAULT], [long]]
    assert not refused(pool.output())


def test_a_queue_outside_the_user_s_keys_stops_the_pool_at_start(start_pool_as, frappe_url, redis):
    pool = start_pool_as(frappe_url, DEFAULT, "default", *FAST)
    assert pool.wait(20) == 2
    lines = pool.output().strip().splitlines()
    assert len(lines) == 1 and "queue default" in lines[0] and f"'{USER}'" in lines[0], lines
    assert PASSWORD not in pool.output()
    assert not redis.keys("rq:worker*")  # nothing was started


def test_a_cluster_cap_the_user_cannot_keep_is_an_error_at_start(start_pool_as, make_user, redis):
    url = make_user("noscripts", commands=["+@all", "-@admin", "-@scripting"])
    pool = start_pool_as(url, DEFAULT, "--cluster-max-workers", "2", *FAST)
    assert pool.wait(20) == 2
    lines = pool.output().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --cluster-max-workers: the cap cannot be enforced"), lines
    assert not redis.keys("rq:worker*")


def test_a_pool_state_the_user_may_not_write_is_said_once(start_pool_as, make_user, redis):
    keys = ["rq:[^qo]*", "rq:orchestrator:wake:*", "rq:queues", f"rq:queue:{BENCH_ID}:*"]  # no pool state
    url = make_user("nostate", keys=keys)
    pool = start_pool_as(url, DEFAULT, "--min-workers", "1", "--max-workers", "1", *FAST)
    wait_until(lambda: redis.keys("rq:worker:*"), 20, "a worker", pool.interesting_output)
    run_jobs(Redis.from_url(url), DEFAULT, 3)
    time.sleep(1)  # several more publishes
    warnings = refused(pool.output())
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "'nostate'" in warnings[0], warnings
    assert not redis.keys("rq:orchestrator:pool*")


def test_rq_s_commands_are_refused_loudly_without_channel_rights(frappe_redis):
    """What part 1's relay meets under Frappe's user: no channel, so the sender's PUBLISH raises."""
    with pytest.raises(NoPermissionError, match="channels"):
        send_shutdown_command(frappe_redis, "some-worker")
    subscriber = frappe_redis.pubsub()
    with pytest.raises(NoPermissionError, match="channels"):
        subscriber.psubscribe("rq:pubsub:*")
        subscriber.get_message(timeout=1)
    subscriber.close()


def test_wake_keys_the_user_may_not_use_are_an_error_at_start(start_pool_as, make_user, redis):
    """A user stricter than Frappe's, refusing rq:orchestrator:wake:*: workers could not wait for jobs."""
    url = make_user("nowake", keys=["rq:[^qo]*", "rq:queues", f"rq:queue:{BENCH_ID}:*", "rq:orchestrator:pool*"])
    pool = start_pool_as(url, DEFAULT, "--num-workers", "1", *FAST)
    assert pool.wait(20) == 2
    lines = pool.output().strip().splitlines()
    assert len(lines) == 1 and "may not use the workers' wake keys" in lines[0], lines
    assert not redis.keys("rq:worker*")
