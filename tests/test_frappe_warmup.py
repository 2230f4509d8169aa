"""The Frappe adapter's warm-up: the master imports the modules every Frappe job would otherwise import cold."""

from __future__ import annotations

from types import SimpleNamespace

from rq_orchestrator.frappe_adapter import JOB_CONTROLLERS, job_modules


def test_the_master_imports_every_apps_job_hooks_and_the_core_controllers() -> None:
    frappe = SimpleNamespace(get_all_apps=lambda with_internal_apps: ["tests.warm_app"],
                             scrub=lambda name: name.replace(" ", "_").lower())
    names = job_modules(frappe)
    assert names[:2] == ["tests.warm_app.job_hooks", "tests.warm_app.job_hooks"]
    assert "frappe.core.doctype.docfield.docfield" in names
    assert "frappe.core.doctype.has_role.has_role" in names
    assert len(names) == 2 + len(JOB_CONTROLLERS)
