"""`rq-orchestrator simulate`: replay a trace file through the simulator, print what it measured, draw it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..infra.errors import BadInput
from ..policy.scaling import ScalingSettings
from ..policy.simulator import (DEFAULT_SPAWN_DELAY, DEFAULT_TAIL, MAX_SIMULATED_SECONDS, BadTrace, Result, TooLong,
                                TraceJob, read_trace, run_simulation)
from .options import OneLineErrors, check_scaling, pool_options
from .outputs import check_plot_path
from .policy_options import policy_options, policy_settings

SCALING_OPTIONS = ("min_workers", "max_workers", "num_workers", "scaling_period",
                   "utilization_threshold", "utilization_window")


def read_trace_option(path: str) -> list[TraceJob]:
    """The jobs of --trace, or BadInput saying what is wrong with the file."""
    try:
        return read_trace(path)
    except BadTrace as exc:
        raise BadInput(f"--trace: {exc}") from None


def settings_from_options(opts: dict[str, Any]) -> ScalingSettings:
    """The pool's scaling options and the policy options, validated, as ScalingSettings (or BadInput)."""
    low, high = check_scaling(opts, forks=False)
    return ScalingSettings(low, high, opts["utilization_threshold"], **policy_settings(opts))


# -- the command ------------------------------------------------------------------
@click.command("simulate", cls=OneLineErrors)
@click.option("--trace", required=True, metavar="FILE", help="CSV of jobs: a header arrival_s,duration_s, "
              "then one job a line, in any order.")
@policy_options
@click.option("--spawn-delay", type=float, default=DEFAULT_SPAWN_DELAY, show_default=True, metavar="SECONDS",
              help="Seconds from a scale-up to the new worker's first job. The default is above every "
                   "sample of the real pool's measured latency (medians 40-61 ms, worst 83 ms: "
                   "benchmarks/spawn.py); rq's own worker-pool takes about 1 s.")
@click.option("--until", type=float, default=None, metavar="SECONDS",
              help=f"Simulate until this time, or until the last job ends if later "
                   f"(default: {DEFAULT_TAIL:g} s after the last job ends).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--plot", default=None, metavar="FILE", help="Draw workers, queue length and utilization (PNG, SVG or "
              "PDF, by the file's suffix).")
def simulate(trace: str, spawn_delay: float, until: float | None, as_json: bool, plot: str | None,
             **opts: Any) -> None:
    """Replay a trace of jobs on a virtual clock through the pool's own scaling code.

    Prints job waits (p50, p95, max), worker-seconds, the largest and smallest
    pool, scale-ups, scale-downs and reversals (changes of direction within
    three periods), time to the largest pool, makespan, and the time from the
    queue's last emptying to the pool back at its minimum.
    """
    settings = settings_from_options(opts)
    if not 0 <= spawn_delay <= MAX_SIMULATED_SECONDS:
        raise BadInput(f"--spawn-delay must be 0 to {MAX_SIMULATED_SECONDS:g} seconds, got {spawn_delay}")
    if until is not None and not 0 <= until <= MAX_SIMULATED_SECONDS:
        raise BadInput(f"--until must be 0 to {MAX_SIMULATED_SECONDS:g} seconds (a week), got {until}")
    if plot:
        check_plot_path(plot)
    try:
        result = run_simulation(read_trace_option(trace), settings, opts["utilization_window"], spawn_delay, until)
    except TooLong as exc:
        raise BadInput(f"--trace: {exc}") from None
    metrics = result.metrics()
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        width = max(len(key) for key in metrics)
        for key, value in metrics.items():
            click.echo(f"{key:<{width}}  {'-' if value is None else value}")
    if plot:
        draw(result, settings, Path(plot), title=Path(trace).name)


def _pool_scaling_params() -> list[click.Parameter]:
    """The pool's own scaling options, taken from its decorator so names, help and defaults stay one."""
    command = click.command()(pool_options(lambda **_: None))
    params = [param for param in command.params if param.name in SCALING_OPTIONS]
    for param in params:  # virtual workers: this machine's bound does not apply
        if param.name == "max_workers" and isinstance(param, click.Option):
            param.help = "Most workers the simulated pool runs (virtual: not bound by this machine)."
    return params


simulate.params[1:1] = _pool_scaling_params()
# The simulator has no memory: a memory cap it would take and ignore is refused as unknown instead.
simulate.params = [param for param in simulate.params if param.name != "max_pool_memory"]


# -- the plot ---------------------------------------------------------------------
def draw(result: Result, settings: ScalingSettings, path: Path, title: str = "") -> None:
    """Workers and utilization (top), queued jobs (bottom) over the run, or a line saying why not."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        click.echo("plot skipped: matplotlib is not installed (pip install 'rq_orchestrator[demo]')", err=True)
        return
    samples = result.samples
    times = [s.t for s in samples]
    figure = Figure(figsize=(11, 6), dpi=100)
    workers, queued = figure.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    workers.step(times, [s.workers for s in samples], where="post", color="tab:blue", label="workers")
    workers.set_ylim(0, settings.max_workers + 0.5)
    workers.set_ylabel("workers", color="tab:blue")
    busy = workers.twinx()
    busy.plot(times, [min(s.utilization, 1.5) for s in samples], color="tab:purple", linewidth=0.8)
    busy.set_ylim(0, 1.55)
    busy.set_ylabel("utilization", color="tab:purple")
    queued.plot(times, [s.queued for s in samples], color="tab:orange", linewidth=1)
    queued.set_ylabel("queued jobs", color="tab:orange")
    queued.set_xlabel("virtual seconds")
    workers.set_title(f"simulate {title}: {settings.min_workers}-{settings.max_workers} workers, "
                      f"p95 wait {result.wait_p95_s:.2f} s, {result.worker_seconds:.0f} worker-seconds")
    figure.tight_layout()
    figure.savefig(path)
    click.echo(f"plot: {path}", err=True)
