"""The pool's state, published in Redis for `status`, the demo and dashboards.

One key per running master, refreshed at every scaling tick and whenever its
workers change (at most twice a second), expiring by itself if the master
dies without removing it. An index sorted set lists the keys, so readers
never scan Redis. Writing costs O(workers) per publish.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from .pool import Pool

INDEX_KEY = "rq-orchestrator:pools"
KEY_PREFIX = "rq-orchestrator:pool:"
MIN_INTERVAL = 0.5

log = logging.getLogger("rq_orchestrator")


def pool_key(host: str, pid: int) -> str:
    return f"{KEY_PREFIX}{host}:{pid}"


class StatePublisher:
    def __init__(self, pool: Pool, connection: Redis) -> None:
        self.pool = pool
        self.connection = connection
        self.key = pool_key(pool.host, pool.pid)
        self.started_at = time.time()
        self._dirty = True
        self._last = float("-inf")

    @property
    def ttl(self) -> int:
        return int(max(3 * self.pool.config.scaling_period, 3.0)) + 5

    def mark_dirty(self) -> None:
        self._dirty = True

    def publish_if_due(self, now: float) -> None:
        if self._dirty and now - self._last >= MIN_INTERVAL:
            self.publish(now)

    def record_tick(self, now: float) -> None:
        self.publish(now)

    def publish(self, now: float) -> None:
        self._dirty = False
        self._last = now
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.set(self.key, json.dumps(self.snapshot(now)), ex=self.ttl)
                pipe.zadd(INDEX_KEY, {self.key: time.time()})
                pipe.execute()
        except RedisError as exc:
            log.debug("could not publish pool state: %s", exc)

    def remove(self) -> None:
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.delete(self.key)
                pipe.zrem(INDEX_KEY, self.key)
                pipe.execute()
        except RedisError:
            pass

    def snapshot(self, now: float) -> dict[str, Any]:
        pool = self.pool
        wall = time.time()
        groups, workers = [], []
        for group in pool.groups:
            settings = group.policy.settings
            decision = group.last_decision
            groups.append(
                {
                    "name": group.name,
                    "queues": list(group.queues),
                    "min": settings.min_workers,
                    "max": settings.max_workers,
                    "workers": len(group.active),
                    "target": group.target,
                    "busy": group.ledger.busy_workers,
                    "utilization": round(group.utilization(now), 4),
                    "last_decision": None
                    if decision is None
                    else {"action": decision.action.value, "target": decision.target, "reason": decision.reason},
                }
            )
            for record in group.workers.values():
                state = "retiring" if record.retiring else "busy" if record.busy else "idle" if record.ready else "starting"
                workers.append(
                    {
                        "name": record.name,
                        "pid": record.key,
                        "group": group.name,
                        "slot": record.slot,
                        "state": state,
                        "job": record.job_id,
                        "jobs_done": record.jobs_done,
                        "age_s": round(now - record.born_at, 3),
                    }
                )
        return {
            "name": pool.config.pool_name,
            "host": pool.host,
            "pid": pool.pid,
            "queues": list(pool.config.all_queues),
            "started_at": self.started_at,
            "updated_at": wall,
            "scaling_period": pool.config.scaling_period,
            "utilization_window": pool.config.utilization_window,
            "utilization_threshold": pool.config.utilization_threshold,
            "groups": groups,
            "workers": workers,
        }


def read_pools(connection: Redis) -> list[dict[str, Any]]:
    """Every pool published on this Redis; a pool whose key expired comes back as stale."""
    keys = [k.decode() if isinstance(k, bytes) else k for k in connection.zrange(INDEX_KEY, 0, -1, withscores=False)]
    values = connection.mget(keys) if keys else []
    pools = []
    for key, raw in zip(keys, values):
        if raw is None:
            pools.append({"key": key, "stale": True})
        else:
            state = json.loads(raw)
            state.update(key=key, stale=False)
            pools.append(state)
    return pools
