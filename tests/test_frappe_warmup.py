"""The Frappe adapter's warm-up: the master imports the modules every Frappe job would otherwise import cold."""

from __future__ import annotations

from types import SimpleNamespace

from rq_orchestrator.frappe_adapter import JOB_CONTROLLERS, frappe_job_module, job_modules


def test_the_master_imports_every_apps_job_hooks_and_the_core_controllers() -> None:
    frappe = SimpleNamespace(get_all_apps=lambda with_internal_apps: ["tests.warm_app"],
                             scrub=lambda name: name.replace(" ", "_").lower())
    names = job_modules(frappe)
    assert names[:2] == ["tests.warm_app.job_hooks", "tests.warm_app.job_hooks"]
    assert "frappe.core.doctype.docfield.docfield" in names
    assert "frappe.core.doctype.has_role.has_role" in names
    assert len(names) == 2 + len(JOB_CONTROLLERS)


def test_a_frappe_jobs_module_is_the_module_of_the_method_it_runs() -> None:
    def job(func_name: str, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(func_name=func_name, kwargs=kwargs)

    execute = "frappe.utils.background_jobs.execute_job"
    assert frappe_job_module(job(execute, method="erpnext.stock.utils.repost", site="s")) == "erpnext.stock.utils"
    assert frappe_job_module(job(execute, method=print)) is None  # a callable: its module is already imported
    assert frappe_job_module(job("myapp.tasks.send")) == "myapp.tasks"  # a job enqueued with rq itself
