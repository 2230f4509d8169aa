"""Sentry in the master: the master's own events are logged, not sent, since sending starts a thread and the master forks.

A pool whose master initialised Sentry (``--sentry-dsn``, a ``--config`` or
``--preload`` module calling ``sentry_sdk.init``, Frappe's ``_start_sentry``)
forks workers that report their jobs' errors from their own processes. But
sentry-sdk sends from a background thread it starts at the first event, and
an ERROR line in the master (Redis unreachable, say) is an event to its
logging integration: the thread would start in the master, which then
refuses to fork (a thread may hold a lock the child would inherit locked) and
the pool would stop at its next fork. So the master drops the events it
makes itself; its log has them.
"""

from __future__ import annotations

import os
import sys
from typing import Any


_kept_local: set[int] = set()  # the master pids whose events are dropped already


def keep_master_events_local(master_pid: int) -> bool:
    """If sentry-sdk is loaded, drop every event made in ``master_pid`` (children's pass); True if newly so.

    Called at start and again after the master imported job modules (one may set Sentry up).
    """
    if "sentry_sdk" not in sys.modules or master_pid in _kept_local:
        return False
    from sentry_sdk.scope import add_global_event_processor

    def drop_in_master(event: Any, hint: Any) -> Any:
        return None if os.getpid() == master_pid else event

    add_global_event_processor(drop_in_master)
    _kept_local.add(master_pid)
    return True
