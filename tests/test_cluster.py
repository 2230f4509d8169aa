"""The cluster-wide worker cap: leases taken atomically in Redis, never more than the limit.

The lease tests drive `ClusterLeases` directly against the private Redis, with
three "pools" as three processes. The end-to-end test runs three real pools
with --cluster-max-workers; it is skipped until the option is wired into
`worker-pool`.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import psutil
import pytest
from redis import Redis
from rq import Queue

from conftest import wait_until
from rq_orchestrator.cli import worker_pool
from rq_orchestrator.master.cluster import ClusterLeases, cluster_key, default_cluster_name, leases_in_use
from rq_orchestrator.master.learning import PROBE_TITLE
from rq_orchestrator.infra.config import hostname
from rq_orchestrator.master.state import read_pools
from test_pool import FAST

WIRED = "--cluster-max-workers" in [opt for param in worker_pool.params for opt in param.opts]


def leases(redis: Redis, name: str = "c", limit: int = 2, ttl: float = 5.0, holder: str = "h") -> ClusterLeases:
    return ClusterLeases(redis, name, limit, ttl, holder)


def test_a_cluster_never_grants_more_than_its_limit(redis):
    a, b = leases(redis, holder="a"), leases(redis, holder="b")
    first, second = a.acquire(), b.acquire()
    assert first and second and first != second
    assert b.acquire() is None and a.acquire() is None
    assert leases_in_use(redis, "c") == 2
    a.release(first)
    time.sleep(0.55)  # a refusal makes the next acquire wait a little before asking Redis again
    assert b.acquire() is not None and second in b.held and len(b.held) == 2
    assert leases_in_use(redis, "c") == 2


def test_an_unrenewed_lease_expires_and_its_slot_returns(redis):
    dead, alive = leases(redis, limit=1, ttl=0.5, holder="dead"), leases(redis, limit=1, ttl=0.5, holder="alive")
    assert dead.acquire()
    assert alive.acquire() is None
    time.sleep(0.6)
    assert alive.acquire() is not None
    assert redis.zcard(cluster_key("c")) == 1  # the expired lease was removed, not just ignored


def test_renewal_keeps_leases_and_reports_those_taken_by_others(redis):
    slow, other = leases(redis, limit=1, ttl=0.5, holder="slow"), leases(redis, limit=1, ttl=0.5, holder="other")
    lease = slow.acquire()
    for _ in range(4):  # 0.8 s: longer than the ttl, renewed every 0.2 s
        time.sleep(0.2)
        assert slow.renew() == []
    assert other.acquire() is None
    time.sleep(0.6)  # the renewal came too late: another pool took the slot
    assert other.acquire() is not None
    assert slow.renew() == [lease] and slow.held == set()
    assert 0 < redis.pttl(cluster_key("c")) <= 500  # the set expires with its last lease


def test_a_late_renewal_takes_its_lease_back_when_there_is_room(redis):
    slow = leases(redis, limit=2, ttl=0.3, holder="slow")
    lease = slow.acquire()
    time.sleep(0.4)
    assert leases_in_use(redis, "c") == 0
    assert slow.renew() == [] and slow.held == {lease}
    assert leases_in_use(redis, "c") == 1


def test_the_default_cluster_is_named_after_the_queues_in_any_order():
    assert default_cluster_name(["high", "default"]) == default_cluster_name(("default", "high")) == "default,high"


def simulated_pool(url: str, holder: str, limit: int, seconds: float, seed: int) -> None:
    """A master's loop in miniature: keep up to 3 'workers' (each a lease), renew, release on exit.

    Each worker counts itself in `active` while it holds its lease; the
    highest value ever seen is kept in `active:max`.
    """
    redis = Redis.from_url(url)
    cluster = ClusterLeases(redis, "sim", limit, 1.0, holder)
    rng = random.Random(seed)
    workers: list[tuple[str, float]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = time.monotonic()
        for lease, ends in [w for w in workers if w[1] <= now]:
            redis.decr("active")  # the worker exits, then its lease is released
            cluster.release(lease)
            workers.remove((lease, ends))
        while len(workers) < 3 and (lease := cluster.acquire()) is not None:
            workers.append((lease, now + rng.uniform(0.01, 0.15)))
            redis.eval("local n = redis.call('INCR', KEYS[1]) "
                       "if n > tonumber(redis.call('GET', KEYS[2]) or 0) then redis.call('SET', KEYS[2], n) end",
                       2, "active", "active:max")
        cluster.renew_if_due()
        time.sleep(0.005)
    for lease, _ in workers:
        redis.decr("active")
        cluster.release(lease)


def test_three_pools_competing_for_slots_never_exceed_the_limit(redis, redis_url):
    spawn = multiprocessing.get_context("spawn")
    pools = [spawn.Process(target=simulated_pool, args=(redis_url, f"p{i}", 4, 3.0, i)) for i in range(3)]
    for pool in pools:
        pool.start()
    seen = []
    while any(p.is_alive() for p in pools):
        seen.append(leases_in_use(redis, "sim"))
        time.sleep(0.01)
    for pool in pools:
        pool.join()
        assert pool.exitcode == 0
    assert max(seen) <= 4 and int(redis.get("active:max")) == 4  # shared fully, never exceeded
    assert int(redis.get("active")) == 0 and leases_in_use(redis, "sim") == 0


def hold_leases(url: str, count: int) -> None:
    cluster = ClusterLeases(Redis.from_url(url), "kill", 3, 1.0, "doomed")
    for _ in range(count):
        assert cluster.acquire()
    while True:
        cluster.renew_if_due()
        time.sleep(0.05)


def test_a_killed_holder_s_slots_return_within_the_lease_time(redis, redis_url):
    holder = multiprocessing.get_context("spawn").Process(target=hold_leases, args=(redis_url, 3))
    holder.start()
    wait_until(lambda: leases_in_use(redis, "kill") == 3, 15, "the holder's three leases")
    time.sleep(1.5)  # longer than the ttl: the holder's renewals keep them
    assert leases_in_use(redis, "kill") == 3
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    killed_at = time.monotonic()
    survivor = ClusterLeases(redis, "kill", 3, 1.0, "survivor")
    wait_until(lambda: survivor.acquire() and len(survivor.held) == 3, 5, "the slots to return")
    assert time.monotonic() - killed_at < 1.0 + 0.6  # the ttl, plus one retry interval


# -- end to end: three real pools sharing one cap ---------------------------------
def live_workers(master_pids: list[int]) -> dict[int, int]:
    """master pid -> its live (not zombie) children but the probe that imports a job module, in one pass.

    A child still titled as its master has just been forked and is not yet a
    worker or the probe (a probe forked while jobs begin, not yet titled, was
    once counted as a fifth worker): it is counted once it has its title.
    """
    processes = list(psutil.process_iter(["pid", "ppid", "status", "cmdline"]))
    titles = {p.info["pid"]: " ".join(p.info["cmdline"] or []) for p in processes}
    counts = dict.fromkeys(master_pids, 0)
    for proc in processes:
        master, title = proc.info["ppid"], titles[proc.info["pid"]]
        if master not in counts or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if not title.startswith(PROBE_TITLE) and title != titles.get(master):
            counts[master] += 1
    return counts


def lease_holders(redis: Redis, name: str) -> list[str]:
    return [m.decode() for m in redis.zrange(cluster_key(name), 0, -1)]


@pytest.mark.skipif(not WIRED, reason="--cluster-max-workers is not wired into worker-pool yet")
def test_three_pools_share_the_cap_under_load_and_a_killed_pool_s_slots_return(start_pool, redis, redis_url):
    cap, ttl = 4, 3.0
    args = ("--cluster", "e2e", "--cluster-max-workers", str(cap), "--cluster-lease-ttl", str(ttl),
            "--min-workers", "1", "--max-workers", "4", *FAST)
    pools = [start_pool(*args, "--name", f"p{i}") for i in range(3)]
    for pool in pools:
        pool.wait_until(lambda p=pool: p.ready_pids(), 20, "a first worker")
    queue = Queue(connection=redis)
    for _ in range(400):
        queue.enqueue("jobs.sleep", 0.3)
    masters = [p.pid for p in pools]
    samples: list[dict[int, int]] = []

    def full() -> bool:
        samples.append(live_workers(masters))
        assert sum(samples[-1].values()) <= cap, samples[-1]
        assert len(lease_holders(redis, "e2e")) <= cap
        return sum(samples[-1].values()) == cap and len(samples) > 40

    wait_until(full, 30, "the pools to use the whole cap")
    status = {p["pid"]: p for p in read_pools(redis)}
    assert all(status[m]["cluster"]["name"] == "e2e" for m in masters)

    doomed = next(p for p in pools if any(h.startswith(f"{hostname()}:{p.pid}:") for h in lease_holders(redis, "e2e")))
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.proc.wait()
    killed_at = time.monotonic()
    survivors = [m for m in masters if m != doomed.pid]

    def survivors_full() -> bool:
        counts = live_workers(survivors)
        assert sum(counts.values()) <= cap, counts
        return sum(counts.values()) == cap

    wait_until(lambda: not any(h.startswith(f"{hostname()}:{doomed.pid}:") for h in lease_holders(redis, "e2e")),
               ttl + 2, "the killed pool's leases to expire")
    wait_until(survivors_full, ttl + 10, "the surviving pools to take the freed slots")
    assert time.monotonic() - killed_at < ttl + 10


def test_a_pool_stopped_by_an_unbuildable_worker_frees_its_cluster_slots_at_once(start_pool, redis):
    """The first worker of the round built and leased, the second's constructor raises: no lease waits for its TTL."""
    pool = start_pool("--cluster", "built", "--cluster-max-workers", "4", "--cluster-lease-ttl", "60",
                      "--num-workers", "2", "--no-prewarm", "--worker-class", "jobs.BuiltOnce", *FAST)
    assert pool.wait(20) == 1
    assert "cannot build a worker of class jobs.BuiltOnce: RuntimeError: built once already" in pool.output()
    assert leases_in_use(redis, "built") == 0


@pytest.mark.skipif(not WIRED, reason="--cluster-max-workers is not wired into worker-pool yet")
@pytest.mark.parametrize("args,message", [
    (["--cluster", "db"], "--cluster needs --cluster-max-workers"),
    (["--cluster-max-workers", "0"], "--cluster-max-workers"),
    (["--cluster-max-workers", "2", "--cluster-lease-ttl", "0.5"], "--cluster-lease-ttl"),
    (["--cluster-lease-ttl", "5"], "--cluster-lease-ttl needs --cluster-max-workers"),
    (["--cluster-max-workers", "2", "--min-workers", "3"], "--cluster-max-workers (2) is below this pool's minimum (3"),
    (["--cluster-max-workers", "3", "--queue", "a:2", "--queue", "b:2-4"], "minimum (4 workers)"),
])
def test_bad_cluster_options_are_one_line_with_status_2(redis_url, args, message):
    from test_cli import run_cli

    result = run_cli("worker-pool", "--url", redis_url, *args)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr
