"""Inside a bench: `bench --site SITE run-tests --app rq_orchestrator`.

Enqueues through `frappe.enqueue`, runs `bench worker-pool` (ours) as a real
process, and checks the pool executes the jobs, scales, and shows in the RQ
Worker list. Skipped where frappe is not importable (the project's own pytest
suite does not collect this folder).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import unittest

try:
    import frappe
except ImportError:  # pragma: no cover - outside a bench
    frappe = None

from rq_orchestrator.infra.keys import POOLS

TEST_FUNC = "frappe.core.doctype.rq_job.test_rq_job.test_func"


def bench_command(*args: str) -> list[str]:
    """`bench ARGS` as the bench CLI runs it: frappe's helper, from the sites folder."""
    return [sys.executable, "-m", "frappe.utils.bench_helper", "frappe", *args]


@unittest.skipIf(frappe is None, "needs a Frappe bench")
class TestBenchWorkerPool(unittest.TestCase):
    def setUp(self) -> None:
        from frappe.utils.background_jobs import get_queue_list, get_redis_conn

        self.connection = get_redis_conn()
        self.queue = get_queue_list(["default"], build_queue_name=True)[0]
        self.sites = frappe.utils.get_bench_path() + "/sites"

    def enqueue(self, count: int, sleep: float) -> list:
        jobs = [frappe.enqueue(TEST_FUNC, queue="default", sleep=sleep) for _ in range(count)]
        frappe.db.commit()
        return jobs

    def pool(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(bench_command("worker-pool", "--queue", "default", *args), cwd=self.sites,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_finished(self, jobs: list, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(job.get_status(refresh=True) != "finished" for job in jobs):
            self.assertLess(time.monotonic(), deadline, "jobs did not finish")
            time.sleep(0.2)

    def test_burst_pool_runs_frappe_jobs(self) -> None:
        jobs = self.enqueue(6, 0.1)
        pool = self.pool("--num-workers", "2", "--burst")
        self.assertEqual(pool.wait(120), 0, pool.stdout.read().decode(errors="replace")[-3000:])
        self.wait_finished(jobs, 10)

    def test_pool_scales_and_shows_in_the_rq_worker_list(self) -> None:
        pool = self.pool("--min-workers", "1", "--max-workers", "3", "--scaling-period", "0.5",
                         "--utilization-window", "2", "--name", "benchtest")
        try:
            jobs = self.enqueue(30, 0.3)
            most = 0
            deadline = time.monotonic() + 120
            while any(job.get_status(refresh=True) != "finished" for job in jobs):
                self.assertLess(time.monotonic(), deadline, "jobs did not finish")
                workers = frappe.get_list("RQ Worker", fields=["name", "pid", "queue_type"], limit_page_length=100)
                listed = [w for w in workers if w["name"].endswith(".benchtest")]
                most = max(most, len(listed))
                time.sleep(0.3)
            self.assertGreaterEqual(most, 2, "the pool should have grown under load")
            self.assertLessEqual(most, 3)
            self.assertTrue(all(w["pid"] and w["queue_type"] == "default" for w in listed))
        finally:
            os.killpg(pool.pid, signal.SIGTERM)
            pool.wait(60)
        states = [json.loads(v) for v in self.connection.mget(self.connection.zrange(POOLS, 0, -1)) if v]
        self.assertFalse([s for s in states if s["pid"] == pool.pid], "a stopped pool removes its state")

    def test_stop_from_the_rq_job_document_stops_a_running_job(self) -> None:
        """The desk's Stop button (RQ Job form) calls rq_job.stop_job: the pool's master relays it to the worker."""
        from frappe.core.doctype.rq_job.rq_job import stop_job

        pool = self.pool("--num-workers", "1", "--name", "stoptest")
        try:
            job = self.enqueue(1, 60)[0]
            deadline = time.monotonic() + 60
            while job.get_status(refresh=True) != "started":
                self.assertLess(time.monotonic(), deadline, "the job did not start")
                time.sleep(0.2)
            stop_job(job.id)
            while job.get_status(refresh=True) != "stopped":
                self.assertLess(time.monotonic(), deadline + 15, "the job was not stopped")
                time.sleep(0.2)
            after = self.enqueue(1, 0)
            self.wait_finished(after, 30)  # the worker survived and took the next job
        finally:
            os.killpg(pool.pid, signal.SIGTERM)
            pool.wait(60)
