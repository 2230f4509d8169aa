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

import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
from .options import OneLineErrors, check_scaling, given
from .outputs import check_output, check_plot_path
from ..master.state import read_pools
from ..worker.process import set_parent_death_signal
from .demo_report import (
    DemoSettings,
    JobStats,
    Sample,
    draw,
    job_stats,
    summarize,
    summary_lines,
    write_json,
)

JOB = "rq_orchestrator.cli.demo_jobs.work"
READY_TIMEOUT = 30.0  # seconds for the pool's first workers to be ready
STOP_GRACE = 10.0  # seconds a warm stop may take on top of one job


class DemoError(click.ClickException):
    """The demo could not run to the end (exit status 1)."""


# -- the command ------------------------------------------------------------
@click.command("demo", cls=OneLineErrors)
@click.option("--url", "-u", default=None,
              help="Run against this Redis (only the demo's own keys are written, then deleted; what rq keeps of "
                   "exited workers expires within a minute, as for any rq worker). "
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
    if no_plot and given("plot_path"):
        raise BadInput("--plot and --no-plot: give one of them")
    if not no_plot:
        check_plot_path(plot_path, asked=given("plot_path"))
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
    for option, value in (("--duration", s.duration), ("--idle", s.idle), ("--interval", s.interval),
                          ("--job-seconds", s.job_seconds)):
        if math.isinf(value):
            raise BadInput(f"{option} must be a finite number of seconds, got {value}")
    if not s.duration > 0:
        raise BadInput(f"--duration must be greater than 0, got {s.duration}")
    if not s.idle >= 0:
        raise BadInput(f"--idle must be 0 or more, got {s.idle}")
    if not s.interval > 0:
        raise BadInput(f"--interval must be greater than 0, got {s.interval}")
    if not s.job_seconds >= 0:
        raise BadInput(f"--job-seconds must be 0 or more, got {s.job_seconds}")
    check_scaling(vars(s))


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
        # Its own session: a TERM to the demo's process group (`timeout`, a terminal) is the demo's to handle,
        # with the pool still on this Redis; it dies with the demo all the same.
        server = RedisServer(popen_kwargs={"start_new_session": True, "preexec_fn": die_with_parent})
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
