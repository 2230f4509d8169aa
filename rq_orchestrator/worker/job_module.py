"""Which module a job's code lives in: what a job process tells the master to import before the next forks."""

from __future__ import annotations

from typing import Any


def rq_job_module(job: Any) -> str | None:
    """The module part of rq's ``func_name`` (``app.tasks.send`` → ``app.tasks``), or None.

    A method's name (``app.models.Report.build``) gives ``app.models.Report``;
    the master then imports the longest part that is a module.
    """
    return module_part(job.func_name)


def module_part(name: object) -> str | None:
    """``app.tasks`` of a dotted function name ``app.tasks.send``; None for anything else."""
    if not isinstance(name, str) or "." not in name:
        return None
    return name.rpartition(".")[0]
