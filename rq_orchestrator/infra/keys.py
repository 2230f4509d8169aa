"""Every Redis key of ours, all inside what Frappe's rq ACL user may touch.

Frappe's ``bench create-rq-users`` grants the bench's rq user the keys
``~rq:[^q]* ~rq:queues ~rq:queue:<bench_id>:*`` (``frappe/utils/redis_queue.py``).
Every key here starts with ``rq:o`` and so matches ``rq:[^q]*``: a pool run
under that user may publish its state, keep its history, take cluster
leases and wake its workers. rq's own keys (``rq:worker:*``, ``rq:queue:*``,
``rq:job:*``...) are named as rq names them, in ``rq_keys``.
"""

from __future__ import annotations

PREFIX = "rq:orchestrator:"
POOLS = PREFIX + "pools"  # sorted set: pool key -> time of its last publish
POOL_PREFIX = PREFIX + "pool:"  # + <host>:<pid>: one running master's state (JSON, expiring)
HISTORY_SUFFIX = ":history"  # after a pool key: its capped list of samples and decisions


def pool_key(host: str, pid: int) -> str:
    return f"{POOL_PREFIX}{host}:{pid}"


def pool_address(key: str) -> tuple[str, str]:
    """(host, pid) of a pool key, as written by `pool_key`."""
    host, _, pid = key.removeprefix(POOL_PREFIX).rpartition(":")
    return host, pid


def history_key(key: str) -> str:
    return key + HISTORY_SUFFIX


def cluster_key(cluster: str) -> str:
    """The sorted set of a cluster's worker leases."""
    return f"{PREFIX}cluster:{cluster}:leases"


def wake_key(worker: str) -> str:
    """A per-worker key the master pushes to so that an idle worker wakes at once."""
    return f"{PREFIX}wake:{worker}"
