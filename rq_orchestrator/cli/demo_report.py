"""What a demo run measured, and how it is reported: the scenario, samples, job waits, summary, JSON and chart."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
from redis import Redis

REFERENCE_WORKERS = 4  # the seed expects its load to settle at 4-5 workers


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
