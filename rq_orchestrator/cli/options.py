"""Command-line options shared by `rq-orchestrator worker-pool` and `bench worker-pool`.

One definition of every pool option and one validation, so both front ends
accept the same input and reject bad input the same way: a one-line message
naming the option, exit status 2, and nothing started.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from ..infra.config import (
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_WORKERS,
    DEFAULT_SCALING_PERIOD,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
    GroupSpec,
    PoolConfig,
)
from ..master.cluster import default_cluster_name
from ..master.metrics import require_client
from .group_specs import check_total, plain
from .limits import (MAX_LEASE_TTL, MAX_WINDOW, MAX_WORKERS_ENV, MIN_SCALING_PERIOD, MIN_STUCK_MARGIN, WORKER_CEILING,
                     WORKER_MEMORY, check_period_and_window, check_worker_memory, check_workers, worker_bound)
from .policy_options import policy_options, policy_settings
from ..infra.sizes import parse_size
from ..infra.errors import BadInput, import_given

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEQUEUE_STRATEGIES = ("default", "round_robin", "random")  # rq's DequeueStrategy values (rq 1.15 to 3.x)


class OneLineErrors(click.Command):
    """A click command whose usage errors are one line, not usage + hint + error."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise BadInput(exc.format_message()) from None


def pool_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with every option of the pool."""
    options = [
        click.option("--min-workers", type=int, default=None, show_default=f"{DEFAULT_MIN_WORKERS}",
                     help="Fewest workers the pool keeps (0 scales to zero)."),
        click.option("--max-workers", type=int, default=None, show_default=f"{DEFAULT_MAX_WORKERS}",
                     help=f"Most workers the pool runs; at most what the machine holds (the least of {WORKER_CEILING}, "
                          f"memory / {WORKER_MEMORY // 2**20} MiB, RLIMIT_NPROC / 2; ${MAX_WORKERS_ENV} sets it)."),
        click.option("--num-workers", "-n", type=int, default=None,
                     help="A fixed pool of N workers (min = max = N, within the bound of --max-workers); not with "
                          "--min/--max-workers."),
        click.option("--max-workers-total", type=int, default=None, metavar="N",
                     help="With several --queue groups: the most workers of all groups together; a group "
                          "that needs one takes it from an idle group below its threshold. Without it, the groups' "
                          "maximums together must be within the bound of --max-workers."),
        click.option("--scaling-period", type=float, default=DEFAULT_SCALING_PERIOD, show_default=True,
                     help=f"Seconds between scaling decisions, from {MIN_SCALING_PERIOD:g} to {MAX_WINDOW:g} (fractions allowed)."),
        click.option("--utilization-threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
                     help="Add a worker above this utilization, retire one below half of it; in (0, 1]."),
        click.option("--utilization-window", type=float, default=DEFAULT_WINDOW, show_default=True,
                     help=f"Seconds of history utilization is averaged over; at least the scaling period, at most {MAX_WINDOW:g}."),
        click.option("--burst", "-b", is_flag=True, help="Workers exit when the queues are empty; the pool exits 0 when all have and no job waits."),
        click.option("--preload", multiple=True, metavar="MODULE",
                     help="Import MODULE in the master before forking, so workers share it (repeatable)."),
        click.option("--prewarm/--no-prewarm", default=True, show_default=True,
                     help="Before forking, rehearse a worker in the master against a private, throwaway "
                          "redis-server, so workers share the code and objects every worker would otherwise "
                          "copy (about 1 MB less per worker; needs redis-server; skipped with --burst)."),
        click.option("--learn-job-modules/--no-learn-job-modules", default=True, show_default=True,
                     help="Fork mode: when a job's process had to import the job's module, import it in the "
                          "master too (if it imports within 1 s without starting a thread) and replace the workers "
                          "forked before (idle ones now, busy ones after their job), so that later job processes "
                          "share it instead of importing it on every job."),
        click.option("--worker-class", "-w", default=None, help="RQ worker class (dotted path); default rq.Worker "
                     "(in a bench: the class Frappe uses for its version)."),
        click.option("--job-class", "-j", default=None, help="RQ job class (dotted path)."),
        click.option("--queue-class", default=None, help="RQ queue class (dotted path)."),
        click.option("--serializer", "-S", default=None, help="RQ serializer (dotted path), e.g. rq.serializers.JSONSerializer."),
        click.option("--exception-handler", multiple=True, metavar="PATH",
                     help="Call PATH(job, exc_type, exc_value, traceback) when a job fails, as `rq worker "
                          "--exception-handler` (repeatable; runs in the job's process)."),
        click.option("--disable-default-exception-handler", "-d", is_flag=True,
                     help="Leave out rq's own failure handling, which keeps a failed job in the failed job "
                          "registry (as `rq worker -d`; the job is still marked failed)."),
        click.option("--results-ttl", type=click.IntRange(min=-1), default=None, metavar="SECONDS",
                     help="Keep a job's result this long unless the job says otherwise (-1: forever) "
                          "[default: rq's, 500]."),
        click.option("--worker-ttl", type=click.IntRange(min=16), default=None, metavar="SECONDS",
                     help="A worker's key in Redis outlives its last heartbeat by this much; an idle worker "
                          "waits this minus 15 s per blocking pop [default: rq's, 420]."),
        click.option("--job-monitoring-interval", type=click.IntRange(min=1), default=None, metavar="SECONDS",
                     help="Fork mode: a worker heartbeats for its running job this often [default: rq's, 30]."),
        click.option("--disable-job-desc-logging", is_flag=True, help="Do not log each job's description."),
        click.option("--dequeue-strategy", "-ds", type=click.Choice(DEQUEUE_STRATEGIES), default=None,
                     help="Which queue a worker looks at first, as `rq worker --dequeue-strategy`: default, the "
                          "order given; round_robin, the one after the queue of its last job; random, the "
                          "queues shuffled after each job [default: default]."),
        click.option("--max-jobs-per-worker", type=int, default=None, metavar="N",
                     help="Recycle a worker after about N jobs (up to 10% jitter); its replacement starts first."),
        click.option("--max-memory-per-worker", default=None, metavar="SIZE",
                     help="Recycle a worker whose resident memory exceeds SIZE (e.g. 512MB), checked between jobs; "
                          "must be above the master's resident memory after preload (a fresh worker's)."),
        click.option("--no-fork", is_flag=True,
                     help="Run each job in the worker process itself, for any worker class, instead of a fork per job "
                          "(much faster for short jobs); a worker whose job timed out or raised SystemExit, "
                          "KeyboardInterrupt or MemoryError is replaced by a fresh fork of the master."),
        click.option("--graceful-timeout", type=float, default=None, metavar="SECONDS",
                     help="On TERM/INT, wait this long for running jobs, then stop cold (default: wait for them)."),
        click.option("--stuck-margin", type=float, default=90.0, show_default=True, metavar="SECONDS",
                     help=f"Kill (and replace) a worker whose job runs this long past its timeout; at least {MIN_STUCK_MARGIN:g}."),
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
                     help="Serve Prometheus metrics on PORT (0: any free port); needs prometheus-client."),
        click.option("--metrics-host", default="127.0.0.1", show_default=True,
                     help="Address the metrics endpoint listens on."),
        click.option("--cluster", default=None, metavar="NAME",
                     help="Pools of one cluster share --cluster-max-workers (default: named after the queues)."),
        click.option("--cluster-max-workers", type=int, default=None, metavar="N",
                     help="Most workers all pools of the cluster run together, on any host (a lease in Redis each)."),
        click.option("--cluster-lease-ttl", type=float, default=15.0, show_default=True, metavar="SECONDS",
                     help=f"A dead pool's worker slots return to the cluster after this long; from 2 to {MAX_LEASE_TTL:g}."),
        click.option("--with-scheduler/--without-scheduler", "-s", default=None,
                     help="Run RQ's scheduler (enqueue_at/enqueue_in, retry intervals) once, in the master "
                          "[default: with; in a bench: without, as Frappe's own workers]."),
        click.option("--name", default="", help="Pool name in worker names and status (default: from the queues)."),
        click.option("--logging-level", default="INFO", show_default=True, help="Level of the pool's and workers' logs."),
        click.option("--quiet", "-q", is_flag=True, help="Only warnings and errors (same as --logging-level WARNING)."),
    ]
    for option in reversed(options):
        func = option(func)

    return policy_options(func)


def resolve_bounds(min_workers: int | None, max_workers: int | None, num_workers: int | None) -> tuple[int, int]:
    """Turn the three count options into (min, max), or raise BadInput."""
    if num_workers is not None:
        if min_workers is not None or max_workers is not None:
            raise BadInput("--num-workers fixes the pool size: do not combine it with --min-workers/--max-workers")
        if num_workers < 1:
            raise BadInput(f"--num-workers must be at least 1, got {num_workers}")
        return num_workers, num_workers
    if min_workers is not None and min_workers < 0:
        raise BadInput(f"--min-workers must be 0 or more, got {min_workers}")
    if max_workers is not None and max_workers < 1:
        raise BadInput(f"--max-workers must be at least 1, got {max_workers}")
    if min_workers is not None and max_workers is not None and min_workers > max_workers:
        raise BadInput(f"--min-workers ({min_workers}) is greater than --max-workers ({max_workers})")
    # A bound given alone moves the other default out of its way.
    low = min_workers if min_workers is not None else min(DEFAULT_MIN_WORKERS, max_workers or DEFAULT_MIN_WORKERS)
    high = max_workers if max_workers is not None else max(DEFAULT_MAX_WORKERS, low)
    return low, high


def check_scaling(opts: dict[str, Any], forks: bool = True) -> tuple[int, int]:
    """The pool's size and timing options, checked alike wherever a pool is sized (worker-pool, demo, simulate).

    Returns (min, max), or raises BadInput. Reads the options ``min_workers``,
    ``max_workers``, ``num_workers`` (absent: None), ``scaling_period``,
    ``utilization_threshold`` and ``utilization_window``. Unless ``forks`` is
    False (the simulator's virtual workers), the counts must fit this machine.
    """
    bounds = resolve_bounds(opts["min_workers"], opts["max_workers"], opts.get("num_workers"))
    for option in ("num_workers", "min_workers", "max_workers"):
        if forks and opts.get(option) is not None:
            check_workers(opts[option], "--" + option.replace("_", "-"))
    check_period_and_window(opts["scaling_period"], opts["utilization_window"])
    check_timing(opts["utilization_threshold"], opts["scaling_period"], opts["utilization_window"])
    return bounds


def check_timing(threshold: float, period: float, window: float) -> None:
    if not 0 < threshold <= 1:
        raise BadInput(f"--utilization-threshold must be in (0, 1], got {threshold}")
    if not period > 0:
        raise BadInput(f"--scaling-period must be greater than 0, got {period}")
    if not window >= period:
        raise BadInput(f"--utilization-window ({window}) must be at least --scaling-period ({period})")


def import_object(path: str, option: str) -> Any:
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise BadInput(f"{option}: {path!r} is not a dotted path (module.Name)")
    module = import_given(module_name, option, shown=path)
    try:
        return getattr(module, attr)
    except Exception as exc:  # noqa: BLE001 - a module __getattr__ may raise anything: the user's input too
        raise BadInput(f"{option}: cannot import {path}: {type(exc).__name__}: {exc}") from None


def import_class(path: str, option: str, base: type) -> type:
    obj = import_object(path, option)
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise BadInput(f"{option}: {path} is not a subclass of {base.__module__}.{base.__qualname__}")
    return obj


def preload(modules: Iterable[str]) -> None:
    for name in modules:
        import_given(name, "--preload")


def logging_level(level: str, quiet: bool) -> str:
    if quiet and given("logging_level"):
        raise BadInput(f"--quiet is --logging-level WARNING: give one of them, not both (got --logging-level {level})")
    if quiet:
        return "WARNING"
    if level.upper() not in LOG_LEVELS:
        raise BadInput(f"--logging-level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    return level.upper()


def check_numbers(opts: dict[str, Any]) -> tuple[int, int]:
    """Validate every option that needs no import and no connection; returns (min, max)."""
    bounds = check_scaling(opts)
    if opts["max_workers_total"] is not None:
        check_workers(opts["max_workers_total"], "--max-workers-total")
    logging_level(opts["logging_level"], opts["quiet"])
    if opts["max_jobs_per_worker"] is not None and opts["max_jobs_per_worker"] < 1:
        raise BadInput(f"--max-jobs-per-worker must be at least 1, got {opts['max_jobs_per_worker']}")
    if opts["graceful_timeout"] is not None and not 0 <= opts["graceful_timeout"] < math.inf:
        raise BadInput(f"--graceful-timeout must be 0 or more seconds (finite; leave it out to wait for the jobs), "
                       f"got {opts['graceful_timeout']}")
    memory_limit(opts["max_memory_per_worker"])
    policy_settings(opts)
    if not MIN_STUCK_MARGIN <= opts["stuck_margin"] < math.inf:
        raise BadInput(f"--stuck-margin must be at least {MIN_STUCK_MARGIN:g} second (finite), got {opts['stuck_margin']:g}")
    check_cluster(opts["cluster"], opts["cluster_max_workers"], opts["cluster_lease_ttl"])
    if given("name") and not opts["name"]:
        raise BadInput("--name: empty (leave it out to name the pool after its queues)")
    if not plain(opts["name"]):
        raise BadInput(f"--name: no spaces or control characters in a pool name (worker names carry it), "
                       f"got {opts['name']!r}")
    if opts["metrics_port"] is not None:
        require_client()
    elif given("metrics_host"):
        raise BadInput("--metrics-host needs --metrics-port (no metrics are served without a port)")
    return bounds


def group_specs(groups: Sequence[Any], opts: dict[str, Any]) -> tuple[GroupSpec, ...]:
    """The groups with their bounds, once every number of the options is checked, alone and together."""
    low, high = check_numbers(opts)
    check_bounds_apply(groups, opts)
    specs = tuple(GroupSpec(g.queues, *(g.bounds or (low, high))) for g in groups)
    check_total([(s.min_workers, s.max_workers) for s in specs], opts["max_workers_total"])
    minimum, cluster_cap = sum(s.min_workers for s in specs), opts["cluster_max_workers"]
    if cluster_cap is not None and minimum > cluster_cap:  # the pool would wait for slots it can never get
        raise BadInput(f"--cluster-max-workers ({cluster_cap}) is below this pool's minimum ({minimum} workers)")
    return specs


def check_bounds_apply(groups: Sequence[Any], opts: dict[str, Any]) -> None:
    """Pool-wide bounds given while every --queue group has its own would be ignored: refused instead."""
    given = [o for o in ("num_workers", "min_workers", "max_workers") if opts[o] is not None]
    if given and groups and all(g.bounds for g in groups):
        names = "/".join("--" + o.replace("_", "-") for o in given)
        raise BadInput(f"{names}: every --queue group has its own worker count, so this would apply to none; "
                       "give the count in the group (QUEUES:N or QUEUES:MIN-MAX)")


def check_cluster(name: str | None, max_workers: int | None, lease_ttl: float) -> None:
    if name is not None and max_workers is None:
        raise BadInput("--cluster needs --cluster-max-workers")
    if name is not None and not name.strip():
        raise BadInput("--cluster: empty cluster name")
    if name is not None and not plain(name):
        raise BadInput(f"--cluster: no spaces or control characters in a cluster name, got {name!r}")
    if max_workers is not None and max_workers < 1:
        raise BadInput(f"--cluster-max-workers must be at least 1, got {max_workers}")
    if not 2 <= lease_ttl <= MAX_LEASE_TTL:
        raise BadInput(f"--cluster-lease-ttl must be from 2 to {MAX_LEASE_TTL:g} seconds, got {lease_ttl:g}")
    if max_workers is None and given("cluster_lease_ttl"):
        raise BadInput("--cluster-lease-ttl needs --cluster-max-workers (there is no lease without a cap)")


def given(param: str) -> bool:
    """Whether the command line or the environment set this option (not its default)."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source(param) if ctx is not None else None
    return source is not None and source is not click.core.ParameterSource.DEFAULT


def memory_limit(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise BadInput(f"--max-memory-per-worker: {exc}") from None


def build_config(groups: Sequence[Any], opts: dict[str, Any], default_worker_class: type | None = None,
                 default_with_scheduler: bool = True) -> PoolConfig:
    """Validate the pool options, import what they name, and return the pool's config.

    ``groups`` are GroupRequests (see group_specs); a group without bounds of
    its own gets the pool-wide ones. Preloaded modules are imported here, in
    the master, before any fork.
    """
    from rq.job import Job
    from rq.queue import Queue
    from rq.serializers import resolve_serializer
    from rq.worker import BaseWorker, Worker

    specs = group_specs(groups, opts)
    level = logging_level(opts["logging_level"], opts["quiet"])
    preload(opts["preload"])
    worker_kwargs: dict[str, Any] = {}
    if opts["worker_class"]:
        worker_class = import_class(opts["worker_class"], "--worker-class", BaseWorker)
    else:
        worker_class = default_worker_class or Worker
    check_worker_memory(memory_limit(opts["max_memory_per_worker"]), opts["max_memory_per_worker"])  # after every import the master makes
    if opts["job_class"]:
        worker_kwargs["job_class"] = import_class(opts["job_class"], "--job-class", Job)
    if opts["queue_class"]:
        worker_kwargs["queue_class"] = import_class(opts["queue_class"], "--queue-class", Queue)
    if opts["serializer"]:
        import_object(opts["serializer"], "--serializer")
        try:
            resolve_serializer(opts["serializer"])
        except Exception as exc:  # noqa: BLE001
            raise BadInput(f"--serializer: {opts['serializer']} is not a serializer: {exc}") from None
        worker_kwargs["serializer"] = opts["serializer"]
    worker_kwargs.update(rq_worker_settings(opts))
    return PoolConfig(
        groups=specs,
        max_workers_total=opts["max_workers_total"],
        worker_bound=worker_bound()[0],
        utilization_threshold=opts["utilization_threshold"],
        scaling_period=opts["scaling_period"],
        utilization_window=opts["utilization_window"],
        burst=opts["burst"],
        worker_class=worker_class,
        worker_kwargs=worker_kwargs,
        logging_level=level,
        dequeue_strategy=opts["dequeue_strategy"] or "default",
        name=opts["name"],
        with_scheduler=default_with_scheduler if opts["with_scheduler"] is None else opts["with_scheduler"],
        prewarm=opts["prewarm"],
        max_jobs_per_worker=opts["max_jobs_per_worker"],
        max_memory_per_worker=memory_limit(opts["max_memory_per_worker"]),
        no_fork=opts["no_fork"],
        learn_job_modules=opts["learn_job_modules"],
        graceful_timeout=opts["graceful_timeout"],
        stuck_margin=opts["stuck_margin"],
        metrics_port=opts["metrics_port"],
        metrics_host=opts["metrics_host"],
        cluster=opts["cluster"] or default_cluster_name(q for spec in specs for q in spec.queues),
        cluster_max_workers=opts["cluster_max_workers"],
        cluster_lease_ttl=opts["cluster_lease_ttl"],
        policy=policy_settings(opts),
    )


def rq_worker_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """The options `rq worker` takes as they are, as keyword arguments of every worker's constructor."""
    from rq.worker import Worker

    settings: dict[str, Any] = {}
    handlers = [import_object(path, "--exception-handler") for path in opts["exception_handler"]]
    for path, handler in zip(opts["exception_handler"], handlers):
        if not callable(handler):
            raise BadInput(f"--exception-handler: {path} is not callable")
    if handlers:
        settings["exception_handlers"] = handlers
    if opts["disable_default_exception_handler"]:
        settings["disable_default_exception_handler"] = True
    if opts["disable_job_desc_logging"]:
        settings["log_job_description"] = False
    if opts["results_ttl"] is not None:
        settings["default_result_ttl"] = opts["results_ttl"]
    if opts["job_monitoring_interval"] is not None:
        settings["job_monitoring_interval"] = opts["job_monitoring_interval"]
    if opts["worker_ttl"] is not None:  # rq 2 renamed it, and warns on the old name
        takes_new_name = "worker_ttl" in inspect.signature(Worker.__init__).parameters
        settings["worker_ttl" if takes_new_name else "default_worker_ttl"] = opts["worker_ttl"]
    return settings


def setup_logging(level: str) -> None:
    """The pool's lines as rq's worker writes its own: errors to stderr, the rest to stdout.

    Under supervisor (stdout_logfile, stderr_logfile) the master's routine
    lines then sit beside its workers', and the error log holds errors.
    """
    logger = logging.getLogger("rq_orchestrator")
    if not logger.handlers:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
        for stream, wanted in ((sys.stdout, lambda r: r.levelno < logging.ERROR),
                               (sys.stderr, lambda r: r.levelno >= logging.ERROR)):
            handler = logging.StreamHandler(stream)
            handler.setFormatter(formatter)
            handler.addFilter(wanted)
            logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
