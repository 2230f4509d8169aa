"""A cluster-wide cap on workers: one lease in Redis per running worker.

Pools on several hosts that share a Redis and a cluster name never run more
than ``limit`` workers together, so a fleet cannot exceed, say, its
database's connection limit. A master takes a lease before it forks a worker
(no lease: no fork), renews its leases every second, and releases a lease
when its worker exits. A master that dies without releasing loses its leases
after ``ttl`` seconds, and other pools can take them.

Leases are the members of one sorted set per cluster, scored by expiry time.
Every change runs as a Lua script, so "drop the expired, count, add" is
atomic across hosts; times come from Redis's clock, so hosts whose clocks
differ still agree. Each call is O(log n) in the cluster's leases (plus the
expired ones it removes).

Caveat: when a master is killed, its workers finish the job in hand before
they exit (they are told to stop warmly); their leases may expire before
they are gone. Choose a ``ttl`` longer than your jobs if the cap is hard.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from ..infra.keys import cluster_key

RETRY_SECONDS = 0.5  # after a refusal, the next acquire waits this long before asking Redis again
RENEW_SECONDS = 1.0  # how often leases are renewed (more often if the ttl is short)

log = logging.getLogger("rq_orchestrator")

# Redis >= 5 replicates a script's effects, which lets it read TIME before writing;
# older servers need to be asked (newer ones ignore the request).
_NOW = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
"""
_EXPIRE_WITH_LAST_LEASE = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('PEXPIREAT', KEYS[1], last[2]) end
"""
# KEYS[1] leases; ARGV lease id, limit, ttl (ms). Returns 1 if taken.
ACQUIRE = _NOW + """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
""" + _EXPIRE_WITH_LAST_LEASE + "return 1"
# KEYS[1] leases; ARGV limit, ttl (ms), lease ids... Returns the ids that could not be kept.
RENEW = _NOW + """
local lost = {}
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[i])
  else
    table.insert(lost, ARGV[i])
  end
end
""" + _EXPIRE_WITH_LAST_LEASE + "return lost"


def default_cluster_name(queues: Iterable[str]) -> str:
    """Pools that serve the same queues (in any order) form one cluster by default."""
    return ",".join(sorted(set(queues)))


def leases_in_use(connection: Redis, cluster: str) -> int:
    """Unexpired leases of a cluster right now (read-only: for status and tests)."""
    seconds, micros = connection.time()
    return int(connection.zcount(cluster_key(cluster), f"({seconds * 1000 + micros // 1000}", "+inf"))


class ClusterLeases:
    """One master's leases in a cluster: acquire before forking, release on exit, renew in the loop.

    Redis errors never escape: an acquire that cannot reach Redis is a
    refusal (no fork while the cap cannot be checked), a failed renewal is
    retried on the next one, a failed release expires with its lease.
    """

    def __init__(self, connection: Redis, cluster: str, limit: int, ttl: float, holder: str,
                 clock: Any = time.monotonic) -> None:
        if limit < 1 or ttl <= 0:
            raise ValueError(f"bad cluster lease settings: limit={limit} ttl={ttl}")
        self.connection = connection
        self.cluster = cluster
        self.key = cluster_key(cluster)
        self.limit = limit
        self.ttl = ttl
        self.holder = holder
        self.held: set[str] = set()
        self.clock = clock
        self.renew_every = min(RENEW_SECONDS, ttl / 3)
        self._ids = itertools.count(1)
        self._acquire = connection.register_script(ACQUIRE)
        self._renew = connection.register_script(RENEW)
        self._retry_at = float("-inf")
        self._renew_at = float("-inf")
        self._refused = False

    @property
    def _ttl_ms(self) -> int:
        return max(int(self.ttl * 1000), 1)

    def acquire(self) -> str | None:
        """A new lease id, or None when the cluster is full (or Redis unreachable)."""
        if self.clock() < self._retry_at:
            return None
        lease = f"{self.holder}:{next(self._ids)}"
        try:
            taken = bool(self._acquire(keys=[self.key], args=[lease, self.limit, self._ttl_ms]))
        except RedisError as exc:
            log.debug("cluster %s: cannot take a lease: %s", self.cluster, exc)
            taken = False
        self._note(taken)
        if not taken:
            self._retry_at = self.clock() + RETRY_SECONDS
            return None
        self.held.add(lease)
        return lease

    def _note(self, taken: bool) -> None:
        """Log the first refusal and the first success after it, not every retry."""
        if taken == self._refused:
            self._refused = not taken
            if taken:
                log.info("cluster %s: a worker slot is free again", self.cluster)
            else:
                log.warning("cluster %s: all %d worker slots are taken; no new worker until one is free",
                            self.cluster, self.limit)

    def renew(self) -> list[str]:
        """Extend every held lease; returns those lost (expired and taken by others), no longer held."""
        if not self.held:
            return []
        try:
            lost = [_text(x) for x in self._renew(keys=[self.key], args=[self.limit, self._ttl_ms, *sorted(self.held)])]
        except RedisError as exc:
            log.debug("cluster %s: cannot renew leases: %s", self.cluster, exc)
            return []
        if lost:
            log.warning("cluster %s: lost %d worker slots (not renewed in time)", self.cluster, len(lost))
        self.held.difference_update(lost)
        return lost

    def check(self) -> None:
        """Run the renewal script with no lease to renew: raises what a real renewal would meet."""
        self._renew(keys=[self.key], args=[self.limit, self._ttl_ms])

    def renew_if_due(self) -> list[str]:
        """`renew`, at most every `renew_every` seconds: call it on every loop iteration."""
        now = self.clock()
        if now < self._renew_at:
            return []
        self._renew_at = now + self.renew_every
        return self.renew()

    def release(self, lease: str) -> None:
        self.held.discard(lease)
        try:
            self.connection.zrem(self.key, lease)
        except RedisError as exc:
            log.debug("cluster %s: cannot release a lease (it will expire): %s", self.cluster, exc)

    def describe(self) -> dict[str, Any]:
        return {"name": self.cluster, "limit": self.limit, "ttl": self.ttl, "leases": len(self.held),
                "waiting": self._refused}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
