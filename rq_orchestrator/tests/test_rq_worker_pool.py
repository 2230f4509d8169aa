"""Inside a bench: the RQ Worker Pool virtual doctype, through the paths the desk takes.

List (reportview, as the list view asks; `frappe.get_list`/`get_all`, as code
asks, with v15's and newer lines' different argument shapes), count, and the
form (`frappe.get_doc`) for no pool, a running pool, and a pool whose master
was killed (stale, its row kept with its name). The pool is a real `rq-orchestrator
worker-pool` on a private redis-server, so that other pools on the bench's
Redis do not change the counts; the doctype reads it through the
controller's one connection seam, pointed there for the test.

`bench --site SITE run-tests --app rq_orchestrator`; skipped outside a bench.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from unittest import mock

try:
    import frappe
except ImportError:  # pragma: no cover - outside a bench
    frappe = None

DOCTYPE = "RQ Worker Pool"


def controller_module():
    from rq_orchestrator.rq_orchestrator.doctype.rq_worker_pool import rq_worker_pool

    return rq_worker_pool


@unittest.skipIf(frappe is None, "needs a Frappe bench")
class TestRQWorkerPool(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        from rq_orchestrator.infra.embedded_redis import RedisServer

        cls.server = RedisServer().start()
        cls.connection = cls.server.client()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.close()

    def setUp(self) -> None:
        self.connection.flushall()
        frappe.set_user("Administrator")
        seam = mock.patch.object(controller_module(), "desk_connection", lambda: self.connection)
        seam.start()
        self.addCleanup(seam.stop)
        self.addCleanup(frappe.set_user, "Administrator")

    # -- helpers ---------------------------------------------------------------
    def start_pool(self) -> subprocess.Popen:
        self.pool_log = tempfile.TemporaryFile()
        self.addCleanup(self.pool_log.close)
        pool = subprocess.Popen(
            [sys.executable, "-m", "rq_orchestrator", "worker-pool", "desktest-a", "desktest-b",
             "--url", self.server.url, "--min-workers", "1", "--max-workers", "2", "--scaling-period", "0.5",
             "--utilization-window", "1", "--no-prewarm", "--name", "desktest"],
            stdout=self.pool_log, stderr=subprocess.STDOUT, start_new_session=True)
        self.addCleanup(self.stop, pool)
        self.wait_for(lambda: self.list_names() and frappe.get_doc(DOCTYPE, self.list_names()[0]).workers == 1,
                      "the pool's row with its worker", pool)
        return pool

    def stop(self, pool: subprocess.Popen) -> None:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(30)

    def wait_for(self, predicate, what: str, pool: subprocess.Popen | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}\n{self.pool_output() if pool else ''}")
            time.sleep(0.2)

    def pool_output(self) -> str:
        self.pool_log.seek(0)
        return self.pool_log.read().decode(errors="replace")[-3000:]

    def list_names(self) -> list[str]:
        return frappe.get_all(DOCTYPE, pluck="name")

    def desk_list(self, filters: list | None = None, order_by: str = "", **by_field) -> tuple[list[dict], int]:
        """What the list view gets: `frappe.desk.reportview.get` and `get_count`, as the desk calls them."""
        from frappe.desk import reportview

        args = {"doctype": DOCTYPE, "fields": json.dumps([f"`tab{DOCTYPE}`.`name`"]),
                "filters": json.dumps(filters or by_field), "start": 0, "page_length": 20, "order_by": order_by}
        frappe.local.form_dict = frappe._dict(args)
        data = reportview.get()
        frappe.local.form_dict = frappe._dict(args)
        count = reportview.get_count()
        rows = [dict(zip(data["keys"], values)) for values in data["values"]] if data else []
        return rows, count

    # -- tests -----------------------------------------------------------------
    def test_no_pool_gives_an_empty_list_and_no_form(self) -> None:
        self.assertEqual(self.desk_list(), ([], 0))
        self.assertEqual(frappe.get_list(DOCTYPE), [])
        self.assertEqual(frappe.get_all(DOCTYPE, limit_page_length=0), [])
        with self.assertRaises(frappe.DoesNotExistError):
            frappe.get_doc(DOCTYPE, "vm:1:short-default")

    def test_a_running_pool_is_one_row_and_its_form_has_history(self) -> None:
        pool = self.start_pool()
        rows, count = self.desk_list()
        self.assertEqual(count, 1)
        row = rows[0]
        self.assertEqual(row["name"].split(":")[1], str(pool.pid))
        self.assertEqual((row["pool"], row["queues"], row["state"]), ("desktest", "desktest-a, desktest-b", "ok"))
        self.assertEqual((row["min_workers"], row["max_workers"], row["size"]), (1, 2, "1 (1–2)"))
        self.assertEqual(self.desk_list(state="stale"), ([], 0))
        self.assertEqual(len(self.desk_list(state="ok")[0]), 1)
        self.assertEqual(frappe.get_all(DOCTYPE, fields=["name"], limit_start=1, limit_page_length=5), [])
        self.assertEqual(frappe.get_list(DOCTYPE)[0].name, row["name"])  # frappe._dict rows, as RQ Worker's

        def history() -> dict:
            return json.loads(frappe.get_doc(DOCTYPE, row["name"]).history_json)

        # A quiet pool publishes a sample at its keep-alive (every 10 s), a busy one every period.
        self.wait_for(lambda: len(history()["chart"]["t"]) >= 2, "two samples in the history", pool, timeout=30)
        doc = frappe.get_doc(DOCTYPE, row["name"])
        history = json.loads(doc.history_json)
        self.assertEqual(history["chart"]["workers"][-1], 1)
        self.assertIsNotNone(doc.modified)
        self.assertEqual(doc.as_dict()["pool"], "desktest")

    def test_the_filter_bar_narrows_the_list_and_the_count(self) -> None:
        """Comparisons, ranges and time spans on what the desk shows (times in the site's zone); a bad filter is refused."""
        from frappe.utils import today

        self.start_pool()
        self.assertEqual(self.desk_list([[DOCTYPE, "workers", ">", "1"]]), ([], 0))
        self.assertEqual(self.desk_list([[DOCTYPE, "workers", ">=", "1"]], "`tabRQ Worker Pool`.`modified` desc")[1], 1)
        self.assertEqual(self.desk_list([[DOCTYPE, "updated_at", "between", [today(), today()]]])[1], 1)
        self.assertEqual(self.desk_list([[DOCTYPE, "updated_at", "timespan", "today"]])[1], 1)
        self.assertEqual(self.desk_list([[DOCTYPE, "updated_at", "timespan", "yesterday"]]), ([], 0))
        self.assertEqual(self.desk_list([[DOCTYPE, "utilization", "=", 0]])[1], 1)  # 0.0 %, as a cell's click sends it
        frappe.clear_messages()
        with self.assertRaises(frappe.ValidationError):
            self.desk_list([[DOCTYPE, "workers", "between", 3]])
        shown = [m.get("message") for m in frappe.get_message_log()]  # what the desk shows the user
        self.assertIn("the RQ Worker Pool list needs two values for 'between', got 3", shown)

    def test_a_killed_pool_reads_stale_and_keeps_its_row(self) -> None:
        pool = self.start_pool()
        name = self.list_names()[0]
        os.killpg(pool.pid, signal.SIGKILL)
        pool.wait(10)
        self.wait_for(lambda: frappe.get_doc(DOCTYPE, name).state == "stale", "the row to turn stale", timeout=30)
        # Read where the pool ran: its master's pid is gone (elsewhere: "no update for ... s").
        doc = frappe.get_doc(DOCTYPE, name)
        self.assertIn(f"its master (pid {pool.pid}) is gone", doc.stale_reason)
        self.assertEqual(doc.as_dict()["pool"], "desktest")  # its name and group stay until it is forgotten
        rows, count = self.desk_list()
        self.assertEqual((count, rows[0]["state"]), (1, "stale"))

    def test_only_the_system_manager_reads_it(self) -> None:
        self.start_pool()
        name = self.list_names()[0]
        roles = {(p.role, p.read, p.write, p.create, p.delete) for p in frappe.get_meta(DOCTYPE).permissions}
        self.assertEqual(roles, {("System Manager", 1, 0, 0, 0)})
        self.assertTrue(frappe.has_permission(DOCTYPE, "read", user="Administrator"))
        self.assertFalse(frappe.has_permission(DOCTYPE, "read", user="Guest"))
        frappe.set_user("Guest")
        with self.assertRaises(frappe.PermissionError):
            frappe.get_list(DOCTYPE)
        from frappe.desk.form.load import getdoc

        with self.assertRaises(frappe.PermissionError):
            getdoc(DOCTYPE, name)

    def test_it_is_read_only(self) -> None:
        self.start_pool()
        doc = frappe.get_doc(DOCTYPE, self.list_names()[0])
        with self.assertRaises(NotImplementedError):
            doc.db_update()
        with self.assertRaises(NotImplementedError):
            doc.delete()


@unittest.skipIf(frappe is None, "needs a Frappe bench")
class TestRQWorkerPoolOnTheBenchRedis(unittest.TestCase):
    def test_the_list_reads_the_bench_queue_redis(self) -> None:
        """Unpatched: whatever pools publish on the bench's Redis, the list and count agree."""
        frappe.set_user("Administrator")
        rows = frappe.get_all(DOCTYPE, limit_page_length=0)
        self.assertEqual(len(rows), controller_module().RQWorkerPool.get_count({}))
        self.assertTrue(all(r["state"] in ("ok", "stopping", "stale") for r in rows))
