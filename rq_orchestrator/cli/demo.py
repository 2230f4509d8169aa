"""`rq-orchestrator demo`: watch a pool grow under a steady load and shrink back.

It replays the seed's experiment: a one-second job every half second (two
busy workers' worth) against a pool with the seed's settings, then as long
without load. Every second it prints what the pool publishes about itself in
Redis; at the end it sums up how fast the pool grew and shrank and how long
jobs waited, and plots the run.

Everything it writes lives under its own queue name (`demo-<random>`) and is
deleted at the end, so it is safe on a Redis named with --url; without --url
it runs a private redis-server.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import click
from redis import Redis
from redis.exceptions import RedisError

from ..infra.config import (
    DEFAULT_MAX_WORKERS,
    DEFAULT_MIN_WORKERS,
    DEFAULT_SCALING_PERIOD,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW,
)
from ..infra.embedded_redis import NoRedisServer, RedisServer
from ..infra.connection import connect
from ..infra.errors import BadInput
from .options import OneLineErrors, check_timing, resolve_bounds
from ..master.state import read_pools
from ..worker.process import set_parent_death_signal

JOB = "rq_orchestrator.cli.demo_jobs.work"
REFERENCE_WORKERS = 4  # the seed expects its load to settle at 4-5 workers
READY_TIMEOUT = 30.0  # seconds for the pool's first workers to be ready
STOP_GRACE = 10.0  # seconds a warm stop may take on top of one job
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


class DemoError(click.ClickException):
    """The demo could not run to the end (exit status 1)."""


@dataclass(frozen=True)
class DemoSettings:
    duration: float
    idle: float
    interval: float
    job_seconds: float
    min_workers: int
    max_workers: int
    scaling_period: float
    utilization_threshold: float
    utilization_window: float

    @property
    def total(self) -> float:
        return self.duration + self.idle

    @property
    def job_count(self) -> int:
        """Jobs of the load: one at 0, interval, 2 x interval, ... before the load ends."""
        return math.ceil(self.duration / self.interval - 1e-9)

    def pool_options(self) -> list[str]:
        return [
            "--min-workers", str(self.min_workers),
            "--max-workers", str(self.max_workers),
            "--scaling-period", str(self.scaling_period),
            "--utilization-threshold", str(self.utilization_threshold),
            "--utilization-window", str(self.utilization_window),
            "--preload", "rq_orchestrator.cli.demo_jobs",
            "--logging-level", "WARNING",
        ]


@dataclass(frozen=True)
class Sample:
    """One second of the run: the pool's published state (None until seen) and the queue."""

    t: float
    phase: str
    workers: int | None
    busy: int | None
    queued: int
    utilization: float | None
    decision: dict[str, Any] | None


@dataclass(frozen=True)
class JobStats:
    enqueued: int
    finished: int
    failed: int
    waits: list[float]


@dataclass(frozen=True)
class Summary:
    max_workers: int | None
    seconds_to_max: float | None
    seconds_to_reference: float | None
    seconds_back_to_min: float | None
    workers_at_end: int | None
    jobs_enqueued: int
    jobs_finished: int
    jobs_failed: int
    wait_p50: float | None
    wait_p95: float | None


# -- the command ------------------------------------------------------------
@click.command("demo", cls=OneLineErrors)
@click.option("--url", "-u", default=None,
              help="Run against this Redis (only the demo's own keys are written, then deleted). "
                   "Default: a private redis-server.")
@click.option("--duration", type=float, default=120.0, show_default=True, help="Seconds of load.")
@click.option("--idle", type=float, default=None, show_default="--duration",
              help="Seconds without load afterwards, to watch the pool shrink.")
@click.option("--interval", type=float, default=0.5, show_default=True, help="Seconds between two jobs.")
@click.option("--job-seconds", type=float, default=1.0, show_default=True, help="How long each job sleeps.")
@click.option("--min-workers", type=int, default=DEFAULT_MIN_WORKERS, show_default=True,
              help="The pool's fewest workers.")
@click.option("--max-workers", type=int, default=DEFAULT_MAX_WORKERS, show_default=True,
              help="The pool's most workers.")
@click.option("--scaling-period", type=float, default=DEFAULT_SCALING_PERIOD, show_default=True,
              help="Seconds between the pool's scaling decisions.")
@click.option("--utilization-threshold", type=float, default=DEFAULT_THRESHOLD, show_default=True,
              help="The pool adds a worker above it, retires one below half of it.")
@click.option("--utilization-window", type=float, default=DEFAULT_WINDOW, show_default=True,
              help="Seconds the pool averages utilization over.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default="rq-orchestrator-demo.png",
              show_default=True, help="Where to draw the run (.png, .svg or .pdf).")
@click.option("--no-plot", is_flag=True, help="Draw nothing.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the per-second samples and the summary to this JSON file.")
def demo(url: str | None, plot_path: str, no_plot: bool, json_path: str | None, **values: Any) -> None:
    """Start a pool, feed it the seed's load, and show it scale up and back down.

    Enqueues a job of --job-seconds every --interval seconds for --duration
    seconds, then waits --idle seconds, printing the pool's state every second.
    """
    if values["idle"] is None:
        values["idle"] = values["duration"]
    settings = DemoSettings(**values)
    check_settings(settings)
    check_output("--json", json_path)
    if not no_plot:
        check_plot_path(plot_path)
    if url is not None:
        connect(url)
    queue = f"demo-{secrets.token_hex(4)}"
    try:
        with signals_interrupt(), demo_redis(url) as redis_url:
            introduce(queue, redis_url if url is None else "the Redis at --url", settings)
            samples, jobs = run(redis_url, queue, settings)
    except KeyboardInterrupt:
        stopped = "the pool" if url else "the pool and the private Redis"
        click.echo(f"\ninterrupted: {stopped} stopped", err=True)
        sys.exit(130)
    summary = summarize(samples, jobs, settings)
    click.echo("\n".join(summary_lines(summary, settings)))
    if json_path:
        write_json(Path(json_path), queue, settings, samples, summary)
        click.echo(f"json: {Path(json_path).resolve()}")
    if not no_plot:
        draw(samples, settings, Path(plot_path))


def check_settings(s: DemoSettings) -> None:
    if not s.duration > 0:
        raise BadInput(f"--duration must be greater than 0, got {s.duration}")
    if not s.idle >= 0:
        raise BadInput(f"--idle must be 0 or more, got {s.idle}")
    if not s.interval > 0:
        raise BadInput(f"--interval must be greater than 0, got {s.interval}")
    if not s.job_seconds >= 0:
        raise BadInput(f"--job-seconds must be 0 or more, got {s.job_seconds}")
    resolve_bounds(s.min_workers, s.max_workers, None)
    check_timing(s.utilization_threshold, s.scaling_period, s.utilization_window)


def check_output(option: str, path: str | None) -> None:
    """Fail before the run, not after it, when an output file cannot be written."""
    if path is not None and not Path(path).resolve().parent.is_dir():
        raise BadInput(f"{option}: no such directory: {Path(path).parent}")


def check_plot_path(path: str) -> None:
    check_output("--plot", path)
    if Path(path).suffix.lower() not in PLOT_SUFFIXES:
        raise BadInput(f"--plot: {path} must end in {', '.join(PLOT_SUFFIXES)}")


def introduce(queue: str, where: str, s: DemoSettings) -> None:
    click.echo(f"demo queue {queue} on {where}")
    click.echo(f"pool: {s.min_workers}-{s.max_workers} workers, scaling every {s.scaling_period:g} s, "
               f"threshold {s.utilization_threshold:.2f}, window {s.utilization_window:g} s")
    click.echo(f"load: a {s.job_seconds:g} s job every {s.interval:g} s for {s.duration:g} s, "
               f"then {s.idle:g} s idle")


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """Make TERM and HUP interrupt the demo like Ctrl+C, so its cleanup runs."""
    signums = (signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, signal.default_int_handler) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def demo_redis(url: str | None) -> Iterator[str]:
    """The URL of the Redis the user named, or of a private redis-server that lives as long as the block."""
    if url is not None:
        yield url
        return
    try:
        server = RedisServer()
    except NoRedisServer as exc:
        raise DemoError(f"cannot start a private Redis: {exc}; or pass --url") from None
    try:
        with sigint_blocked():
            server.start()
    except NoRedisServer as exc:
        server.close()
        raise DemoError(f"cannot start a private Redis: {exc}; or pass --url") from None
    try:
        yield server.url
    finally:
        server.close()


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in the block: a process started in it inherits the mask.

    The private redis-server shares the demo's process group, so a terminal's
    Ctrl+C would kill it too, before the demo has stopped the pool that uses
    it. Started with SIGINT blocked, it serves until the demo stops it.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# -- the run ----------------------------------------------------------------
def run(url: str, queue: str, settings: DemoSettings) -> tuple[list[Sample], JobStats]:
    """Start the pool, wait for its workers, run the load, stop the pool; the demo's keys are deleted after."""
    connection = Redis.from_url(url)
    load = Load(connection, queue, settings)
    try:
        with PoolProcess(url, queue, settings) as pool:
            pool.wait_until_ready(connection, queue, settings.min_workers)
            samples = watch(connection, load, pool, settings)
        return samples, job_stats(connection, load.job_ids)
    finally:
        load.delete()


class PoolProcess:
    """The pool, run as `python -m rq_orchestrator worker-pool` in a session of its own.

    Its own session keeps a terminal's Ctrl+C away from it: the demo stops it
    warm, once, and kills its process group only if that takes too long.
    """

    def __init__(self, url: str, queue: str, settings: DemoSettings) -> None:
        # The URL goes in the environment, where `ps` does not show its password.
        self.args = [sys.executable, "-m", "rq_orchestrator", "worker-pool", queue, *settings.pool_options()]
        self.env = {**os.environ, "RQ_REDIS_URL": url}
        self.stop_timeout = settings.job_seconds + STOP_GRACE
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PoolProcess:
        self.process = subprocess.Popen(
            self.args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=2,  # workers log to stdout: keep the demo's own stdout for the demo
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise DemoError(f"the pool exited with status {code}; see its messages above")

    def wait_until_ready(self, connection: Redis, queue: str, workers: int) -> None:
        """Wait until the pool has published that `workers` workers are idle, so the load starts on a ready pool."""
        click.echo(f"waiting for the pool's {workers} workers...")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            self.check_running()
            state = pool_state(connection, queue, self.pid)
            if state is not None and sum(w["state"] == "idle" for w in state["workers"]) >= workers:
                return
            if time.monotonic() > deadline:
                raise DemoError(f"the pool's workers were not ready after {READY_TIMEOUT:g} s")
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def die_with_parent() -> None:
    """In the pool's process, before exec: stop (warm) if the demo dies without stopping it."""
    set_parent_death_signal(signal.SIGTERM)


class Load:
    """The demo's jobs, enqueued on a fixed schedule so a slow loop never drifts the rate."""

    def __init__(self, connection: Redis, queue: str, settings: DemoSettings) -> None:
        from rq import Queue

        self.queue = Queue(queue, connection=connection)
        self.settings = settings
        self.job_ids: list[str] = []
        # Results must outlive the run: the summary reads every job at the end.
        self.ttl = int(settings.total) + 600

    @property
    def next_at(self) -> float:
        """Seconds after the start at which the next job is due (inf once the load is over)."""
        if len(self.job_ids) >= self.settings.job_count:
            return math.inf
        return len(self.job_ids) * self.settings.interval

    def enqueue_due(self, elapsed: float) -> None:
        while self.next_at <= elapsed:
            job = self.queue.enqueue(JOB, self.settings.job_seconds, result_ttl=self.ttl, failure_ttl=self.ttl,
                                     job_timeout=int(self.settings.job_seconds) + 60)
            self.job_ids.append(job.id)

    def delete(self) -> None:
        """Delete the demo's queue, jobs, their registry entries and results from Redis.

        What rq keeps of dead workers and of its locks expires by itself within minutes.
        """
        from rq.job import Job
        from rq.results import Result

        connection = self.queue.connection
        try:
            with connection.pipeline() as pipe:
                for job in Job.fetch_many(self.job_ids, connection=connection):
                    if job is not None:
                        job.delete(pipeline=pipe)
                        pipe.delete(Result.get_key(job.id))  # rq 1.x leaves them to expire
                pipe.execute()
            self.queue.delete(delete_jobs=True)
        except RedisError as exc:
            click.echo(f"could not delete the demo's keys ({self.queue.name}): {exc}", err=True)


def watch(connection: Redis, load: Load, pool: PoolProcess, settings: DemoSettings) -> list[Sample]:
    """Run the load, then the idle phase, sampling the pool once a second."""
    samples: list[Sample] = []
    line = StatusLine(sys.stdout)
    start = time.monotonic()
    next_sample = 0.0
    try:
        while next_sample <= math.ceil(settings.total):
            pool.check_running()
            elapsed = time.monotonic() - start
            load.enqueue_due(elapsed)
            if elapsed >= next_sample:
                sample = take_sample(connection, load, pool.pid, elapsed, settings)
                samples.append(sample)
                line.show(format_sample(sample))
                next_sample = math.floor(elapsed) + 1.0
            time.sleep(max(min(load.next_at, next_sample) - (time.monotonic() - start), 0.0))
    finally:
        line.close()
    return samples


def pool_state(connection: Redis, queue: str, pid: int) -> dict[str, Any] | None:
    for state in read_pools(connection):
        if state.get("pid") == pid and state.get("queues") == [queue]:
            return state
    return None


def take_sample(connection: Redis, load: Load, pid: int, elapsed: float, settings: DemoSettings) -> Sample:
    state = pool_state(connection, load.queue.name, pid)
    group: dict[str, Any] = state["groups"][0] if state else {}
    return Sample(
        t=round(elapsed, 3),
        phase="load" if elapsed < settings.duration else "idle",
        workers=group.get("workers"),
        busy=group.get("busy"),
        queued=load.queue.count,
        utilization=group.get("utilization"),
        decision=group.get("last_decision"),
    )


def format_sample(s: Sample) -> str:
    workers = "-" if s.workers is None else s.workers
    busy = "-" if s.busy is None else s.busy
    utilization = "-" if s.utilization is None else f"{s.utilization:.2f}"
    d = s.decision
    decision = "-" if d is None else f"{d['action']} -> {d['target']} ({d['reason']})"
    return (f"{s.t:5.0f}s  {s.phase}  workers {workers}  busy {busy}  queued {s.queued}  "
            f"util {utilization}  last decision: {decision}")


class StatusLine:
    """One status line a second: rewritten in place on a terminal, one line each otherwise (logs, pipes)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def show(self, text: str) -> None:
        if self.tty:
            # Cut to the terminal's width: a wrapped line could not be rewritten in place.
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r\x1b[K" + text[:width])
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


# -- the results ------------------------------------------------------------
def job_stats(connection: Redis, job_ids: list[str]) -> JobStats:
    """Count the demo's jobs by outcome and collect how long each waited in the queue."""
    from rq.job import Job, JobStatus

    finished = failed = 0
    waits: list[float] = []
    for job in Job.fetch_many(job_ids, connection=connection):
        if job is None:
            continue
        status = job.get_status(refresh=False)
        finished += status == JobStatus.FINISHED
        failed += status == JobStatus.FAILED
        if job.enqueued_at is not None and job.started_at is not None:
            waits.append((job.started_at - job.enqueued_at).total_seconds())
    return JobStats(enqueued=len(job_ids), finished=finished, failed=failed, waits=waits)


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def first_time(samples: list[Sample], reached: Callable[[int], bool], after: float = 0.0) -> float | None:
    """Elapsed time of the first sample at or after `after` whose worker count is `reached`."""
    return next((s.t for s in samples if s.t >= after and s.workers is not None and reached(s.workers)), None)


def summarize(samples: list[Sample], jobs: JobStats, settings: DemoSettings) -> Summary:
    counts = [s.workers for s in samples if s.workers is not None]
    top = max(counts, default=0)
    back = first_time(samples, lambda n: n <= settings.min_workers, after=settings.duration)
    return Summary(
        max_workers=top if counts else None,
        seconds_to_max=first_time(samples, lambda n: n >= top),
        seconds_to_reference=first_time(samples, lambda n: n >= REFERENCE_WORKERS),
        seconds_back_to_min=None if back is None else round(back - settings.duration, 3),
        workers_at_end=counts[-1] if counts else None,
        jobs_enqueued=jobs.enqueued,
        jobs_finished=jobs.finished,
        jobs_failed=jobs.failed,
        wait_p50=percentile(jobs.waits, 0.50),
        wait_p95=percentile(jobs.waits, 0.95),
    )


def summary_lines(s: Summary, settings: DemoSettings) -> list[str]:
    up = "never saw the pool" if s.seconds_to_max is None else (
        f"{s.seconds_to_max:.1f} s to {s.max_workers} workers (the run's max)")
    if s.seconds_to_reference is not None:
        up += f", {s.seconds_to_reference:.1f} s to {REFERENCE_WORKERS} workers"
    else:
        up += f", never reached {REFERENCE_WORKERS} workers"
    back = (f"{s.seconds_back_to_min:.1f} s after the load ended ({settings.min_workers} workers)"
            if s.seconds_back_to_min is not None else f"not back at min ({s.workers_at_end} workers at the end)")
    waits = "no job started" if s.wait_p50 is None else f"p50 {s.wait_p50:.3f} s, p95 {s.wait_p95:.3f} s"
    return [
        "summary (times from the load's start or end; worker counts sampled once a second)",
        f"  max workers:       {s.max_workers}",
        f"  time to scale up:  {up}",
        f"  time back to min:  {back}",
        f"  jobs:              {s.jobs_enqueued} enqueued, {s.jobs_finished} finished, {s.jobs_failed} failed",
        f"  job wait:          {waits}",
    ]


def write_json(path: Path, queue: str, settings: DemoSettings, samples: list[Sample], summary: Summary) -> None:
    data = {
        "queue": queue,
        "settings": asdict(settings),
        "samples": [asdict(s) for s in samples],
        "summary": asdict(summary),
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


# -- the plot ---------------------------------------------------------------
def draw(samples: list[Sample], settings: DemoSettings, path: Path) -> None:
    """Draw workers, queue length and utilization over time, or say why not."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        click.echo("plot skipped: matplotlib is not installed (pip install 'rq_orchestrator[demo]')")
        return
    seen = [s for s in samples if s.workers is not None]
    figure = Figure(figsize=(11, 5.5), dpi=110)
    counts = figure.add_subplot()
    utilization = counts.twinx()
    counts.axvspan(0, settings.duration, color="0.9", zorder=0, label="load")
    draw_counts(counts, seen, settings)
    draw_utilization(utilization, seen, settings)
    counts.yaxis.set_major_locator(MaxNLocator(integer=True))
    counts.set_xlim(0, max(settings.total, seen[-1].t if seen else 0))
    counts.set_xlabel("seconds since the load started")
    counts.set_title(f"rq-orchestrator demo: a {settings.job_seconds:g} s job every {settings.interval:g} s "
                     f"for {settings.duration:g} s, then idle\n"
                     f"pool {settings.min_workers}-{settings.max_workers} workers, scaling every "
                     f"{settings.scaling_period:g} s, threshold {settings.utilization_threshold:g}, "
                     f"window {settings.utilization_window:g} s", fontsize=10)
    handles = [*counts.get_legend_handles_labels()[0], *utilization.get_legend_handles_labels()[0]]
    # Below the axes, where no line can run under it.
    counts.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8,
                  frameon=False)
    figure.tight_layout()
    figure.savefig(path)
    click.echo(f"plot: {path.resolve()}")


def draw_counts(ax: Any, samples: list[Sample], settings: DemoSettings) -> None:
    times = [s.t for s in samples]
    ax.step(times, [s.workers for s in samples], where="post", color="tab:blue", linewidth=2, label="workers")
    ax.plot(times, [s.queued for s in samples], color="tab:orange", linewidth=1, label="queued jobs")
    changes = scale_changes(samples)
    for sign, marker, color, label in ((1, "^", "tab:green", "scaled up"), (-1, "v", "tab:red", "scaled down")):
        points = [(t, n) for t, n, delta in changes if delta * sign > 0]
        ax.scatter([t for t, _ in points], [n for _, n in points], marker=marker, s=60, color=color, zorder=5,
                   label=label)
    ax.set_ylim(0, max([settings.max_workers, *(s.queued for s in samples)]) + 1)
    ax.set_ylabel("workers / queued jobs")


def draw_utilization(ax: Any, samples: list[Sample], settings: DemoSettings) -> None:
    values = [s.utilization if s.utilization is not None else math.nan for s in samples]
    ax.plot([s.t for s in samples], values, color="tab:purple", linewidth=1.2, label="utilization")
    ax.axhline(settings.utilization_threshold, color="tab:purple", linestyle="--", linewidth=0.8,
               label="scale up above")
    ax.axhline(settings.utilization_threshold / 2, color="tab:purple", linestyle=":", linewidth=0.8,
               label="scale down below")
    ax.set_ylim(0, max([1.05, *(v * 1.05 for v in values if not math.isnan(v))]))
    ax.set_ylabel("utilization (busy / workers)", color="tab:purple")
    ax.tick_params(axis="y", colors="tab:purple")


def scale_changes(samples: list[Sample]) -> list[tuple[float, int, int]]:
    """(time, workers, change) wherever the worker count changed from one sample to the next."""
    changes: list[tuple[float, int, int]] = []
    for before, after in zip(samples, samples[1:]):
        if before.workers is not None and after.workers is not None and after.workers != before.workers:
            changes.append((after.t, after.workers, after.workers - before.workers))
    return changes
