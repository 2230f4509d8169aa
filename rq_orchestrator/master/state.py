"""The pool's state, published in Redis for `status`, metrics, the demo and dashboards.

One key per running master, refreshed at every scaling tick and whenever its
workers change (at most twice a second), expiring by itself FORGET_AFTER
after the last refresh if the master dies without removing it (its age, not
its presence, says it is stale). An index sorted set lists the keys, so readers
never scan Redis. Next to the key, a capped list keeps about the last hour
of history for charts: a ``tick`` sample per group every scaling period
(size, load and that period's decision), and a ``decision`` entry for every
scale-up or scale-down, including those taken between periods.

Writing costs the master O(workers) per publish: one pipeline, no scan.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TYPE_CHECKING

from redis import Redis
from redis.exceptions import NoPermissionError, RedisError

from ..infra.keys import POOLS, history_key, pool_key
from ..infra.memory import total_pss
from ..infra.processes import pid_namespace, running
from .access import redis_user, refusal
from .queue_watch import QueueStats, observe_queues
from ..policy.scaling import Action, Decision

if TYPE_CHECKING:
    from ..infra.config import PoolConfig
    from ..policy.group import WorkerGroup, WorkerRecord
    from .cluster import ClusterLeases
    from .service_child import ServiceChildren


class PublishedPool(Protocol):
    """What the publisher reads of the master (``Pool``), which owns it."""

    host: str
    pid: int
    config: PoolConfig
    groups: list[WorkerGroup]
    stopping: str | None

MIN_INTERVAL = 0.5
HISTORY_SECONDS = 3600.0  # samples kept: one hour of ticks...
HISTORY_MAX_SAMPLES = 3600  # ...but never more than this many per group (fast periods)
FORGET_AFTER = 900.0  # a pool that died without cleaning up is listed as stale this long
STALE_PERIODS = 3  # a pool that has not published for this many periods (at least 3 s) is stale...
KEEPALIVE_SECONDS = 10.0  # ...but a quiet pool (nothing changed since its last tick) publishes only this often
MEMORY_SECONDS = 30.0  # the pool's memory (PSS: the kernel walks every page of every worker) is measured this often...
QUIET_MEMORY_SECONDS = 300.0  # ...or this often while no job ran and no worker came or went (64 idle workers: 0.4 % of a core)

log = logging.getLogger("rq_orchestrator")
PID_NAMESPACE = pid_namespace()  # where this process's pids mean what they say (None: unknown)


def stale_after(scaling_period: float) -> float:
    """Seconds without a publish after which a pool counts as stopped (a quiet pool publishes every KEEPALIVE_SECONDS)."""
    return max(STALE_PERIODS * scaling_period, 3.0, KEEPALIVE_SECONDS + 2 * scaling_period)


def history_length(scaling_period: float, groups: int) -> int:
    return min(math.ceil(HISTORY_SECONDS / scaling_period), HISTORY_MAX_SAMPLES) * max(groups, 1)


@dataclass
class PoolCounters:
    """Cumulative counts since the master started, kept by the master, published as is.

    ``restarts``: cause -> workers replaced for it (``crashed``: exit status not 0,
    ``killed``: by a signal, ``max_jobs``, ``max_memory``: recycled, ``exited``:
    exit status 0 by itself); ``jobs``: ``finished`` / ``failed`` / ``stopped`` (rq's stop-job) -> jobs ended so.
    """

    restarts: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"restarts": dict(self.restarts), "jobs": dict(self.jobs)}


@dataclass
class GroupLog:
    """What the publisher remembers of one group between ticks: decisions and queues."""

    decision: Decision | None = None  # the last decision recorded, so none is counted twice
    last: dict[str, Any] | None = None  # the same, as published, with its wall time
    last_change: dict[str, Any] | None = None  # the last up or down
    ups: int = 0
    downs: int = 0
    queued: int = 0
    oldest_wait: float = 0.0  # seconds; 0 when no job waits

    def record(self, decision: Decision, wall: float) -> None:
        self.decision = decision
        self.last = {"action": decision.action.value, "target": decision.target,
                     "reason": decision.reason, "at": wall}
        if decision.action is not Action.HOLD:
            self.last_change = self.last
            self.ups += decision.action is Action.UP
            self.downs += decision.action is Action.DOWN


class StatePublisher:
    def __init__(self, pool: PublishedPool, connection: Redis) -> None:
        self.pool = pool
        self.connection = connection
        self.key = pool_key(pool.host, pool.pid)
        self.started_at = time.time()
        self.counters = PoolCounters()
        self.cluster: ClusterLeases | None = None  # set by the master when --cluster-max-workers is given
        self.metrics_address: str | None = None  # host:port of the metrics endpoint, when serving one
        self.services: ServiceChildren | None = None  # set by the master when it runs service children
        self._groups: dict[str, GroupLog] = {}
        self._pool_memory: int | None = None  # PSS of master and workers, measured every MEMORY_SECONDS
        self._memory_due = float("-inf")
        self._memory_activity: tuple[int, list[int]] | None = None  # jobs ended and workers at the last measurement
        self._pending: list[dict[str, Any]] = []  # decision entries for the history, sent with the next publish
        self._dirty = True
        self._last = float("-inf")
        self._refused = False  # the Redis user may not write the state: said once
        self._last_figures: list[dict[str, Any]] = []  # the last tick's samples, but for their time

    @property
    def ttl(self) -> int:
        """The state outlives a master that dies without removing it: listed, stale, by name, for FORGET_AFTER.

        Staleness is judged from the state's age (``read_pools``), not from
        the key's presence, so a killed pool keeps its name, groups and last
        figures in `status` and the desk until it is forgotten or restarted.
        """
        return max(int(FORGET_AFTER), int(stale_after(self.pool.config.scaling_period)) + 5)

    def replace_predecessors(self) -> None:
        """Drop the entries of this pool's dead earlier runs on this host: a restart replaces them.

        Its own name's rows whose master is gone, or that stopped publishing on
        this host (a run before a reboot, or in another container of the same
        name, whose pids are not this one's to judge). Another pool's dead run
        stays listed: its restart, not this one's, replaces it.
        """
        try:
            for pool in read_pools(self.connection):
                ours = pool["key"] != self.key and pool.get("name") == self.pool.config.pool_name
                if ours and (pool.get("gone") or pool["stale"] and pool.get("host") == self.pool.host):
                    forget_pool(self.connection, pool["key"])
        except RedisError as exc:  # may not read or delete them: they age out as before
            log.debug("the state of earlier runs is left as it is: %s", exc)

    def mark_dirty(self) -> None:
        self._dirty = True

    def publish_if_due(self, now: float) -> None:
        """Publish what changed (at most every MIN_INTERVAL), or the state alone every KEEPALIVE_SECONDS (a stop)."""
        if self._dirty and now - self._last >= MIN_INTERVAL or now - self._last >= KEEPALIVE_SECONDS:
            self.publish(now)

    def record_decision(self, group: WorkerGroup, decision: Decision, now: float) -> None:
        """Every scaling decision the master applies, periodic or urgent: stamped, counted, kept.

        A change is published at once; a hold waits for the tick's publish (none when the tick is quiet).
        """
        self._record(group, decision, now, time.time())
        if decision.action is not Action.HOLD:
            self.mark_dirty()

    def record_tick(self, now: float, queues: Mapping[str, QueueStats] | None = None) -> None:
        """After every scaling period's decisions: publish, with a sample per group for the history.

        ``queues`` (group name -> stats) is what the master observed for this
        tick; without it the publisher observes the queues itself. A decision
        the master did not pass to `record_decision` is recorded here. A quiet
        tick (every group's figures as at the last tick, nothing else changed)
        publishes nothing, unless KEEPALIVE_SECONDS have passed, and then only
        the state (two commands): an idle pool costs Redis about 0.2 commands a second.
        """
        wall = time.time()
        self.record_queues(queues if queues is not None else self._observe_queues())
        self._measure_memory(now)
        samples = []
        for group in self.pool.groups:
            entry = self._group_log(group.name)
            self._record(group, group.last_decision, now, wall)
            samples.append(self._sample("tick", group, entry, now, wall))
        figures = [{k: v for k, v in s.items() if k != "t"} for s in samples]
        quiet = figures == self._last_figures and not self._dirty and not self._pending
        self._last_figures = figures
        if not quiet:
            self.publish(now, samples)
        elif now - self._last >= KEEPALIVE_SECONDS:
            self.publish(now)  # the state's key and age only: the history has this tick's figures already

    def record_queues(self, queues: Mapping[str, QueueStats]) -> None:
        """The queues as the master saw them between ticks (once a second while jobs wait): published if they changed.

        Without it `status` and the metrics showed the jobs waiting, and the
        oldest wait, as at the last tick: up to a scaling period old.
        """
        for name, stats in queues.items():
            entry = self._group_log(name)
            figures = stats.queued, round(stats.oldest_wait, 3)
            if (entry.queued, entry.oldest_wait) != figures:
                entry.queued, entry.oldest_wait = figures
                self.mark_dirty()

    def _record(self, group: WorkerGroup, decision: Decision | None, now: float, wall: float) -> None:
        entry = self._group_log(group.name)
        if decision is None or decision is entry.decision:
            return
        entry.record(decision, wall)
        if decision.action is not Action.HOLD:
            self._pending.append(self._sample("decision", group, entry, now, wall))

    def publish(self, now: float, samples: list[dict[str, Any]] | None = None) -> None:
        self._dirty = False
        self._last = now
        history, self._pending = [*self._pending, *(samples or ())], []
        try:
            with self.connection.pipeline(transaction=False) as pipe:
                pipe.set(self.key, json.dumps(self.snapshot(now)), ex=self.ttl)
                pipe.zadd(POOLS, {self.key: time.time()})
                if history:
                    self._append_history(pipe, history)
                pipe.execute()
        except NoPermissionError as exc:
            self._warn_refused(exc)
        except RedisError as exc:
            log.debug("could not publish pool state: %s", exc)

    def _warn_refused(self, exc: NoPermissionError) -> None:
        if not self._refused:
            self._refused = True
            log.warning("the Redis user %r may not write this pool's state (%s: %s): `status`, the history "
                        "and dashboards will not show this pool", redis_user(self.connection), self.key, refusal(exc))

    def _append_history(self, pipe: Any, samples: list[dict[str, Any]]) -> None:
        key = history_key(self.key)
        length = history_length(self.pool.config.scaling_period, len(self.pool.groups))
        pipe.lpush(key, *(json.dumps(s, separators=(",", ":")) for s in samples))
        pipe.ltrim(key, 0, length - 1)
        pipe.expire(key, int(HISTORY_SECONDS))  # kept through quiet times, when nothing is appended
        # Pools that died without cleaning up leave an index entry; forget the old ones.
        pipe.zremrangebyscore(POOLS, "-inf", time.time() - FORGET_AFTER)

    def remove(self) -> None:
        try:
            forget_pool(self.connection, self.key)
        except RedisError:
            pass

    def _group_log(self, name: str) -> GroupLog:
        return self._groups.setdefault(name, GroupLog())

    def _observe_queues(self) -> Mapping[str, QueueStats]:
        try:
            return observe_queues(self.connection, {g.name: g.queues for g in self.pool.groups})
        except RedisError as exc:
            log.debug("could not observe the queues: %s", exc)
            return {}

    def _measure_memory(self, now: float) -> None:
        """The pool's memory: PSS of the master, every worker, job process and service child (shared pages once)."""
        workers = [int(w.key) for group in self.pool.groups for w in group.workers.values()]
        activity = (sum(self.counters.jobs.values()), sorted(workers))
        quiet = activity == self._memory_activity
        if now < self._memory_due or (quiet and now < self._memory_due + QUIET_MEMORY_SECONDS - MEMORY_SECONDS):
            return
        self._memory_due, self._memory_activity = now + MEMORY_SECONDS, activity
        services = self.services.pids() if self.services is not None else []
        self._pool_memory = total_pss([self.pool.pid, *workers, *services])

    def _sample(self, kind: str, group: WorkerGroup, entry: GroupLog, now: float, wall: float) -> dict[str, Any]:
        last = entry.last or {}
        figures = group_figures(group, entry, now)
        seen = group.last_observation
        # What it was decided on (a scale-down has already retired): a decision's sample, and the tick's own
        # when the group was observed at this tick (not one skipped while suspended or done with its burst).
        if seen is not None and (kind == "decision" or seen.now == now):
            figures.update(workers=seen.workers, utilization=finite(seen.utilization))
        return {"kind": kind, "t": round(wall, 3), "group": group.name, **figures,
                "action": last.get("action"), "reason": last.get("reason")}

    def snapshot(self, now: float) -> dict[str, Any]:
        """Everything `status`, the metrics and dashboards show of this pool, as JSON-ready data."""
        pool = self.pool
        groups = [self._group_snapshot(group, now) for group in pool.groups]
        workers = [worker_snapshot(group, record, now) for group in pool.groups for record in group.workers.values()]
        return {
            "name": pool.config.pool_name,
            "host": pool.host,
            "pid": pool.pid,
            "pid_namespace": PID_NAMESPACE,
            "queues": list(pool.config.all_queues),
            "started_at": self.started_at,
            "updated_at": time.time(),
            "ttl": self.ttl,
            "stale_after": stale_after(pool.config.scaling_period),
            "scaling_period": pool.config.scaling_period,
            "utilization_window": pool.config.utilization_window,
            "utilization_threshold": pool.config.utilization_threshold,
            "stopping": pool.stopping,
            "memory_bytes": self._pool_memory,
            "counters": self.counters.as_dict(),
            "cluster": self.cluster.describe() if self.cluster is not None else None,
            "metrics": self.metrics_address,
            "services": self.services.describe(now) if self.services is not None else [],
            "groups": groups,
            "workers": workers,
        }

    def _group_snapshot(self, group: WorkerGroup, now: float) -> dict[str, Any]:
        settings = group.policy.settings
        entry = self._group_log(group.name)
        return {
            "name": group.name,
            "queues": list(group.queues),
            "min": settings.min_workers,
            "max": settings.max_workers,
            **group_figures(group, entry, now),
            "scale_ups": entry.ups,
            "scale_downs": entry.downs,
            "last_decision": entry.last,
            "last_change": entry.last_change,
        }


def group_figures(group: WorkerGroup, entry: GroupLog, now: float) -> dict[str, Any]:
    """What a group looks like now: shared by the snapshot and the history samples."""
    return {
        "workers": len(group.active),
        "target": group.target,
        "busy": group.ledger.busy_workers,
        "utilization": finite(group.utilization(now)),
        "queued": entry.queued,
        "oldest_wait_s": entry.oldest_wait,
    }


def finite(utilization: float) -> float | None:
    """Rounded; None where it is infinite (no worker left, jobs ran in the window): JSON has no Infinity."""
    return round(utilization, 4) if math.isfinite(utilization) else None


def worker_snapshot(group: WorkerGroup, record: WorkerRecord, now: float) -> dict[str, Any]:
    state = "retiring" if record.retiring else "busy" if record.busy else "idle" if record.ready else "starting"
    return {
        "name": record.name,
        "pid": record.key,
        "group": group.name,
        "slot": record.slot,
        "state": state,
        "job": record.job_id,
        "jobs_done": record.jobs_done,
        "age_s": round(now - record.born_at, 3),
        "memory_bytes": process_memory(int(record.key)),
    }


def process_memory(pid: int) -> int | None:
    """Resident set size of a process in bytes (Linux /proc, as psutil reads it), or None.

    Cheap enough for every publish; pages shared copy-on-write with the
    master count in every worker (the pool's total uses PSS instead).
    """
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_pools(connection: Redis) -> list[dict[str, Any]]:
    """Every pool published on this Redis, oldest first, each with ``stale`` and ``age_s``.

    A pool is stale when its key expired (the master died without cleaning
    up: only ``key``, ``last_seen`` and ``stale_reason`` are known), or when
    it has not published for ``stale_after`` seconds. The age comes from the
    key's remaining time to live, measured by Redis's clock, so clocks that
    differ between hosts do not matter.
    """
    entries = [(_text(key), score) for key, score in connection.zrange(POOLS, 0, -1, withscores=True)]
    with connection.pipeline(transaction=False) as pipe:
        for key, _ in entries:
            pipe.get(key)
            pipe.pttl(key)
        replies = pipe.execute() if entries else []
    return [
        _pool_entry(key, last_seen, raw, pttl)
        for (key, last_seen), raw, pttl in zip(entries, replies[0::2], replies[1::2])
    ]


def _pool_entry(key: str, last_seen: float, raw: bytes | None, pttl: int) -> dict[str, Any]:
    if raw is None:
        return {"key": key, "stale": True, "stale_reason": "its state expired", "last_seen": last_seen}
    state = json.loads(raw)
    age = max(state.get("ttl", 0) - pttl / 1000, 0.0) if pttl >= 0 else 0.0
    stale = age > state.get("stale_after", math.inf)
    state.update(key=key, age_s=round(age, 3), stale=stale)
    if master_gone(state):  # killed here: seen at once, and for as long as its state is listed
        state.update(stale=True, gone=True, stale_reason=f"its master (pid {state['pid']}) is gone")
    elif stale:
        state["stale_reason"] = f"no update for {age:.0f} s"
    return state


def master_gone(state: dict[str, Any]) -> bool:
    """A pool of this machine and pid namespace whose master no longer runs (killed: nobody removed its state)."""
    here = PID_NAMESPACE is not None and state.get("pid_namespace") == PID_NAMESPACE
    return here and not running(int(state["pid"]))


def read_history(connection: Redis, key: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The pool's per-tick samples, oldest first (the last ``limit`` only, if given)."""
    raw = connection.lrange(history_key(key), 0, -1 if limit is None else limit - 1)
    return [json.loads(item) for item in reversed(raw)]


def forget_pool(connection: Redis, key: str) -> None:
    """Drop a stopped pool's entry (and whatever is left of it) from the index."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(key, history_key(key))
        pipe.zrem(POOLS, key)
        pipe.execute()
