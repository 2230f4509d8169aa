"""What the pool's Redis user may do, tried once at start with the pool's own operations.

A restricted user (Frappe's bench rq user: keys ``~rq:[^q]* ~rq:queues
~rq:queue:<bench_id>:*``, commands ``+@all -@admin``, no channels) refuses
some operations with ``NoPermissionError``. No ``ACL DRYRUN`` (it is an admin
command): the master tries the real operations, harmless ones, before it
forks anything, and a pool that could not do its work stops there with one
line (exit status 2):

* a queue whose key the user may not read and write (workers could take no
  job from it, and would be replaced in a loop);
* a cluster cap (``--cluster-max-workers``) whose leases the user may not
  keep: the cap could not be enforced;
* the workers' wake keys (``rq:orchestrator:wake:*``), which idle workers
  wait on beside their queues (``worker/idle_wait.py``): without them every
  worker would fail in its first wait.

The pool's own keys (``infra/keys.py``) are inside Frappe's rules; where a
stricter user refuses them, the state publisher warns once (`state.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.exceptions import ResponseError

from ..infra.errors import BadInput
from ..infra.keys import wake_key
from ..infra.rq_keys import queue_key
from .cluster import ClusterLeases


def redis_user(connection: Any) -> str:
    """The Redis user a client logs in as (``default`` without one)."""
    return connection.connection_pool.connection_kwargs.get("username") or "default"


def check_access(connection: Any, queues: Sequence[str], leases: ClusterLeases | None) -> None:
    """Raise BadInput (one line) when the pool's user may not use a queue or the cluster's leases."""
    check_queues(connection, queues)
    check_wake_keys(connection)
    if leases is not None:
        check_leases(connection, leases)


def check_queues(connection: Any, queues: Sequence[str]) -> None:
    """Each queue's list, as a worker's pop and the master's requeue use it."""
    for queue in queues:
        key = queue_key(queue)
        refused = list_refusal(connection, key)
        if refused:
            raise BadInput(f"queue {queue}: the Redis user {redis_user(connection)!r} may not use its key "
                           f"{key} ({refused}); Frappe's rq user may only use queues named <bench_id>:<queue>")


def check_wake_keys(connection: Any) -> None:
    """A wake key, as an idle worker's pop and a stop's push use it."""
    key = wake_key("access-check")
    refused = list_refusal(connection, key)
    if refused:
        raise BadInput(f"the Redis user {redis_user(connection)!r} may not use the workers' wake keys "
                       f"({key.rsplit(':', 1)[0]}:*: {refused}); idle workers wait on them")


def list_refusal(connection: Any, key: str) -> str | None:
    """Why the user may not read and write the list ``key`` (LLEN, and LTRIM over the whole list: no change), or None."""
    try:
        with connection.pipeline(transaction=False) as pipe:
            pipe.llen(key)
            pipe.ltrim(key, 0, -1)
            pipe.execute()
    except ResponseError as exc:
        return refusal(exc)
    return None


def check_leases(connection: Any, leases: ClusterLeases) -> None:
    """Run the lease renewal (with no lease to renew): the script, its clock and its writes."""
    try:
        leases.check()
    except ResponseError as exc:
        raise BadInput(f"--cluster-max-workers: the cap cannot be enforced: the Redis user "
                       f"{redis_user(connection)!r} may not keep leases in {leases.key} ({refusal(exc)})") from None


def refusal(exc: Exception) -> str:
    """Redis's error on one line, without redis-py's pipeline preamble."""
    text = " ".join(str(exc).split())
    return text.split(" caused error: ", 1)[-1]
