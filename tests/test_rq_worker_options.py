"""The options `rq worker` takes as they are (exception handlers, TTLs, job logging, dequeue strategy, pid file) reach the pool."""

from __future__ import annotations

import pytest
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry

FAST = ("--num-workers", "1", "--scaling-period", "0.2", "--utilization-window", "1")
DONE = (JobStatus.FINISHED, JobStatus.FAILED)


def run_two_jobs(pool, redis) -> tuple:
    queue = Queue(connection=redis)
    failing, passing = queue.enqueue("jobs.fail"), queue.enqueue("jobs.noop")
    pool.wait_until(lambda: all(j.get_status(refresh=True) in DONE for j in (failing, passing)), 30, "the jobs")
    return failing, passing


@pytest.mark.parametrize("mode", [(), ("--no-fork",)], ids=["fork", "no-fork"])
def test_exception_handlers_ttls_and_job_logging_reach_the_workers(start_pool, redis, mode):
    pool = start_pool(*FAST, *mode, "--exception-handler", "jobs.record_failure", "--disable-default-exception-handler",
                      "--results-ttl", "7", "--worker-ttl", "30", "--disable-job-desc-logging")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    worker_key = f"rq:worker:{pool.workers()[0]['name']}"
    assert 0 < redis.ttl(worker_key) <= 30 + 60  # rq's idle expiry: the worker TTL and a minute
    failing, passing = run_two_jobs(pool, redis)
    assert failing.get_status() == JobStatus.FAILED and passing.get_status() == JobStatus.FINISHED
    assert redis.lrange("test:handled", 0, -1) == [f"{failing.id} ValueError".encode()]
    assert 0 < redis.ttl(passing.key) <= 7
    assert failing.id not in FailedJobRegistry(connection=redis)  # rq's own handler records it there
    log = pool.output()
    assert "jobs.fail()" not in log and "jobs.noop()" not in log and failing.id in log


def test_exception_handlers_see_the_job_of_a_killed_worker_where_rq_passes_them(start_pool, redis):
    """rq 2+ passes its worker's handlers to the clean-up that fails an abandoned job; the master does too."""
    import rq

    redis.set("test:horse", "1")  # jobs.kill_my_worker kills the worker, not only the job's process
    pool = start_pool(*FAST, "--exception-handler", "jobs.record_failure")
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.kill_my_worker")
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 20, "the job to be failed")
    handled = redis.lrange("test:handled", 0, -1)
    assert handled == ([f"{job.id} AbandonedJobError".encode()] if int(rq.__version__.split(".")[0]) >= 2 else [])


def test_without_them_rqs_defaults_hold(start_pool, redis, tmp_path):
    pool = start_pool(*FAST, "--pid", str(tmp_path / "pool.pid"))
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    assert (tmp_path / "pool.pid").read_text() == str(pool.pid)
    assert redis.ttl(f"rq:worker:{pool.workers()[0]['name']}") > 30 + 60
    failing, passing = run_two_jobs(pool, redis)
    assert redis.llen("test:handled") == 0 and redis.ttl(passing.key) > 7
    assert failing.id in FailedJobRegistry(connection=redis) and "jobs.fail()" in pool.output()


@pytest.mark.parametrize("strategy,order", [("default", "HHHLLL"), ("round_robin", "HLHLHL")])
def test_the_dequeue_strategy_orders_the_queues_as_rq_worker_s(start_pool, redis, strategy, order):
    """Jobs waiting on both queues before the one worker starts: taken in the strategy's order.

    Without learning: a worker replaced after its job's module was learned starts its round robin afresh
    (rq keeps the rotation in the worker), which broke the order once in the fifteenth session's CI (HLHHLL).
    """
    jobs = {}
    for name, letter in (("high", "H"), ("low", "L")):
        queue = Queue(name, connection=redis)
        jobs.update({queue.enqueue("jobs.noop").id: letter for _ in range(3)})
    pool = start_pool("high", "low", *FAST, "--no-learn-job-modules", "--dequeue-strategy", strategy)
    pool.wait_until(lambda: redis.llen("test:order") == len(jobs), 30, "the jobs")
    ran = [entry.decode().split(":")[1] for entry in redis.lrange("test:order", 0, -1)]
    assert "".join(jobs[job_id] for job_id in ran) == order


def test_every_option_spelling_of_rq_worker_is_taken_or_named_in_the_readme():
    """A line from `rq worker -s -ds round_robin ...` must carry over: `-s` and `-ds` were refused."""
    from pathlib import Path

    from rq.cli import cli as rq_cli

    from rq_orchestrator.cli import main

    rq_worker = rq_cli.main.commands["worker"]
    ours = {o for p in main.commands["worker-pool"].params for o in p.opts + p.secondary_opts}
    table = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    table = table[table.index("#### From `rq worker`"):table.index("#### The worker bound")]
    for param in rq_worker.params:
        for spelling in param.opts + param.secondary_opts:
            assert spelling in ours or f"`{spelling}" in table or f"/`{spelling}`" in table, spelling
    context = main.commands["worker-pool"].make_context("worker-pool", ["-s", "-ds", "round_robin", "high"])
    assert (context.params["with_scheduler"], context.params["dequeue_strategy"]) == (True, "round_robin")
