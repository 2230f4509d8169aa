"""Which module a job's code lives in: what a worker tells its master to import before the next forks."""

from __future__ import annotations

import sys
from typing import Any


def rq_job_module(job: Any) -> str | None:
    """The module part of rq's ``func_name`` (``app.tasks.send`` → ``app.tasks``), or None.

    A method's name (``app.models.Report.build``) gives ``app.models.Report``;
    the master then imports the longest part that is a module.
    """
    name = job.func_name
    if not isinstance(name, str) or "." not in name:
        return None
    return name.rpartition(".")[0]


def unseen(name: str | None, sent: set[str]) -> bool:
    """Whether ``name`` is worth telling the master: not imported here (so not in the master) nor told before."""
    if not name or name in sent or name in sys.modules:
        return False
    sent.add(name)
    return True
