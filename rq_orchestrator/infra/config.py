"""What a pool is asked to run: plain data, validated once, shared by every front end."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_MIN_WORKERS = 2
DEFAULT_MAX_WORKERS = 8
DEFAULT_SCALING_PERIOD = 5.0
DEFAULT_THRESHOLD = 0.5
DEFAULT_WINDOW = 30.0


@dataclass(frozen=True)
class GroupSpec:
    """An ordered list of queues served by workers of their own, within bounds."""

    queues: tuple[str, ...]
    min_workers: int = DEFAULT_MIN_WORKERS
    max_workers: int = DEFAULT_MAX_WORKERS

    @property
    def name(self) -> str:
        return "-".join(short_queue_name(q) for q in self.queues)


@dataclass(frozen=True)
class ServiceSpec:
    """A callable the pool runs once, in a child process of its own, for as long as the pool runs."""

    name: str
    target: Callable[[], object]


@dataclass(frozen=True)
class PoolConfig:
    groups: tuple[GroupSpec, ...]
    max_workers_total: int | None = None  # cap on all groups together
    worker_bound: int | None = None  # the most workers the groups together may reach, TTIN included (cli.limits)
    utilization_threshold: float = DEFAULT_THRESHOLD
    scaling_period: float = DEFAULT_SCALING_PERIOD
    utilization_window: float = DEFAULT_WINDOW
    burst: bool = False
    worker_class: type | None = None  # None: rq.Worker
    worker_kwargs: dict[str, Any] = field(default_factory=dict)
    logging_level: str = "INFO"
    dequeue_strategy: str = "default"  # rq's: default (queues in the order given), round_robin or random
    name: str = ""
    with_scheduler: bool = True
    prewarm: bool = True  # rehearse a worker in the master before forking (rq_orchestrator.master.prewarm)
    max_boot_failures: int = 3
    max_jobs_per_worker: int | None = None
    max_memory_per_worker: int | None = None  # bytes
    no_fork: bool = False  # run each job in its worker's process (rq_orchestrator.worker.no_fork)
    graceful_timeout: float | None = None  # seconds before a warm stop turns cold
    policy: dict[str, Any] = field(default_factory=dict)  # more ScalingSettings (see policy_options)
    stuck_margin: float = 90.0  # a job running this long past its timeout means its worker is wedged
    metrics_port: int | None = None  # serve Prometheus metrics on this port (0: any free one)
    metrics_host: str = "127.0.0.1"
    cluster: str = ""  # pools of one cluster share cluster_max_workers
    cluster_max_workers: int | None = None
    cluster_lease_ttl: float = 15.0  # seconds: a dead pool's worker slots return after this long
    services: tuple[ServiceSpec, ...] = ()  # each in a child of its own (rq_orchestrator.master.service_child)
    learn_job_modules: bool = True  # fork mode: import the modules of the jobs run (rq_orchestrator.master.learning)
    job_module: Callable[[Any], str | None] | None = None  # which module a job's code is in; None: rq's func_name

    @property
    def pool_name(self) -> str:
        if self.name:
            return self.name
        return self.groups[0].name if len(self.groups) == 1 else "pool"  # worker names carry the group

    @property
    def all_queues(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for group in self.groups:
            seen.update(dict.fromkeys(group.queues))
        return tuple(seen)


def short_queue_name(queue: str) -> str:
    """``bench-abc:short`` -> ``short``: Frappe prefixes queues with its bench id."""
    return queue.rsplit(":", 1)[-1]


def hostname() -> str:
    return socket.gethostname().split(".")[0] or "localhost"
