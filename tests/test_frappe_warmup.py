"""The Frappe adapter's warm-up: the modules every job would import cold are imported before the job process forks."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
from redis import Redis
from rq import Queue, Worker

from rq_orchestrator.frappe_adapter import JOB_CONTROLLERS, JobModuleFirst, job_module, job_modules

TARGET = "tests.warm_app.target"


def run_one_job(redis: Redis, worker_class: type, method: str) -> object:
    """Enqueue one Frappe-shaped job, run it with a forking worker (this process is the worker), return its result."""
    queue = Queue("warm", connection=redis)
    job = queue.enqueue("tests.warm_jobs.run_method", method=method)
    worker_class([queue], connection=redis).work(burst=True)
    job.refresh()
    return job.return_value() if hasattr(job, "return_value") else job.result


@pytest.fixture
def fresh_target():
    sys.modules.pop(TARGET, None)
    yield
    sys.modules.pop(TARGET, None)


def test_a_job_process_finds_its_method_module_imported_by_the_worker(redis: Redis, fresh_target: None) -> None:
    warm = type("Worker", (JobModuleFirst, Worker), {})
    assert run_one_job(redis, warm, f"{TARGET}.value") is True
    assert TARGET in sys.modules  # imported in the worker, where every later job process finds it


def test_without_the_warm_up_the_job_process_imports_it_alone(redis: Redis, fresh_target: None) -> None:
    assert run_one_job(redis, Worker, f"{TARGET}.value") is False
    assert TARGET not in sys.modules


def test_a_module_that_will_not_import_is_left_to_the_job(redis: Redis) -> None:
    warm = type("Worker", (JobModuleFirst, Worker), {})
    queue = Queue("warm", connection=redis)
    job = queue.enqueue("tests.warm_jobs.run_method", method="tests.warm_app.broken.value")
    warm([queue], connection=redis).work(burst=True)
    assert job.get_status(refresh=True) == "failed"  # failed in the job process, as without the warm-up
    assert "tests.warm_app.broken" not in sys.modules


@pytest.mark.parametrize("kwargs", [{}, {"method": None}, {"method": len}])
def test_a_job_without_a_method_name_names_no_module(kwargs: dict) -> None:
    assert job_module(SimpleNamespace(kwargs=kwargs)) == ""


def test_the_master_imports_every_apps_job_hooks_and_the_core_controllers() -> None:
    frappe = SimpleNamespace(get_all_apps=lambda with_internal_apps: ["tests.warm_app"],
                             scrub=lambda name: name.replace(" ", "_").lower())
    names = job_modules(frappe)
    assert names[:2] == ["tests.warm_app.job_hooks", "tests.warm_app.job_hooks"]
    assert "frappe.core.doctype.docfield.docfield" in names
    assert "frappe.core.doctype.has_role.has_role" in names
    assert len(names) == 2 + len(JOB_CONTROLLERS)
