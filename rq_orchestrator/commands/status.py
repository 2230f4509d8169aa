"""`bench worker-pool-status`: `rq-orchestrator status` on the bench's own Redis queue.

Importing this module must not import frappe: the adapter does, inside the command.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..cli.options import OneLineErrors
from ..cli.status import check_display, show_status, status_options


@click.command("worker-pool-status", cls=OneLineErrors)
@status_options
def worker_pool_status(**opts: Any) -> None:
    """Show every worker pool of this bench's Redis queue, on any host.

    Exit status: 0 all pools publishing, 1 one stopped publishing (stale),
    2 bad input or Redis unreachable, 3 no pool found.
    """
    check_display(opts)
    from ..frappe_adapter import bench_connection

    sys.exit(show_status(bench_connection(), **opts))
