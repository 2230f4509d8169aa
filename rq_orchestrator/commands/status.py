"""`bench worker-pool-status`: `rq-orchestrator status` on the bench's own Redis queue.

Importing this module must not import frappe: it is imported inside the command.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..options import BadInput, OneLineErrors
from ..status import show_status, status_options


@click.command("worker-pool-status", cls=OneLineErrors)
@status_options
def worker_pool_status(**opts: Any) -> None:
    """Show every worker pool of this bench's Redis queue, on any host.

    Exit status: 0 all pools publishing, 1 one stopped publishing (stale),
    3 no pool found.
    """
    sys.exit(show_status(bench_connection(), **opts))


def bench_connection() -> Any:
    """The bench's queue connection, as Frappe makes it (ACL credentials from the site config)."""
    try:
        import frappe
        from frappe.utils import background_jobs
    except ImportError:
        raise BadInput("frappe is not importable: run `bench worker-pool-status` inside a Frappe bench") from None
    with frappe.init_site():
        try:
            return background_jobs.get_redis_conn()
        except Exception as exc:  # noqa: BLE001 - Frappe raises plain Exception for config problems
            raise BadInput(f"cannot connect to the bench's Redis queue: {type(exc).__name__}: {exc}") from None
