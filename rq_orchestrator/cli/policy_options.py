"""Command-line options of the scaling policy, and the named profiles that bundle them.

Every option defaults to None so that an option given on the command line
can be told from a profile's value: the profile fills in what was not given.
``policy_settings(opts)`` turns the parsed options into keyword arguments of
:class:`~rq_orchestrator.policy.scaling.ScalingSettings`, or raises BadInput (one
line naming the option, exit status 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from ..infra.errors import BadInput
from ..policy.scaling import SCALE_ON
from ..infra.sizes import parse_size

# What each profile sets; options given explicitly win. "seed" is the seed's rule alone.
PROFILES: dict[str, dict[str, Any]] = {
    "seed": {"max_queue_wait": None, "max_step": 1, "scale_down_delay": 0.0, "max_pool_memory": None,
             "scale_on": "utilization"},
    "responsive": {"max_queue_wait": 0.5, "max_step": 8, "scale_down_delay": 0.0, "max_pool_memory": None,
                   "scale_on": "queue-wait"},
}
DEFAULT_PROFILE = "seed"
OPTION_NAMES = {
    "max_queue_wait": "--max-queue-wait",
    "max_step": "--max-step",
    "scale_down_delay": "--scale-down-delay",
    "max_pool_memory": "--max-pool-memory",
    "scale_on": "--scale-on",
}


def describe_profile(name: str) -> str:
    """A profile as the options it stands for, e.g. ``--max-step 8 --scale-on queue-wait``."""
    values = PROFILES[name]
    given = [f"{OPTION_NAMES[key]} {value:g}" if isinstance(value, float) else f"{OPTION_NAMES[key]} {value}"
             for key, value in values.items() if value is not None]
    return " ".join(given)


def _profile_help() -> str:
    lines = "; ".join(f"{name}: {describe_profile(name)}" for name in PROFILES)
    return f"Named bundle of the scaling options below; options given explicitly override it. {lines}."


def policy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with the scaling policy's options (all default to None)."""
    options = [
        click.option("--profile", type=click.Choice(sorted(PROFILES)), default=None,
                     show_default=DEFAULT_PROFILE, help=_profile_help()),
        click.option("--max-queue-wait", type=float, default=None, metavar="SECONDS",
                     help="Grow at once (checked every second) when the oldest queued job has waited longer, "
                          "or is bound to: jobs wait, every worker is busy, and mean job length / busy workers "
                          "is longer."),
        click.option("--max-step", type=int, default=None, metavar="N", show_default="1",
                     help="Most workers added at once, sized to the arriving work and the backlog (drained "
                          "within a period, or with --scale-on queue-wait started by the next check); "
                          "scaling down stays one per period."),
        click.option("--scale-down-delay", type=float, default=None, metavar="SECONDS", show_default="0",
                     help="No scale-down sooner than this after a scale-up or a scale-down."),
        click.option("--max-pool-memory", default=None, metavar="SIZE",
                     help="No scale-up while the whole pool uses more memory than SIZE (e.g. 2GB)."),
        click.option("--scale-on", type=click.Choice(SCALE_ON), default=None, show_default="utilization",
                     help="What adds workers: utilization above the threshold (and, with --max-queue-wait, "
                          "waiting jobs), or waiting jobs only (queue-wait: retire one when none waited too long "
                          "for three periods, the others could have done the window's work and started the "
                          "busiest moment's jobs within --max-queue-wait)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def policy_settings(opts: dict[str, Any]) -> dict[str, Any]:
    """ScalingSettings keyword arguments from parsed options: the profile's values, overridden by explicit ones.

    ``opts`` may hold other options too; with "scaling_period" in it, the
    policy learns the period (its backlog horizon and reversal window).
    """
    values = dict(PROFILES[opts.get("profile") or DEFAULT_PROFILE])
    values.update({key: opts[key] for key in OPTION_NAMES if opts.get(key) is not None})
    if opts.get("max_pool_memory") is not None:
        values["max_pool_memory"] = _size(opts["max_pool_memory"])
    _check(values)
    if opts.get("scaling_period") is not None:
        values["scaling_period"] = opts["scaling_period"]
    return values


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise BadInput(f"--max-pool-memory: {exc}") from None


def _check(values: dict[str, Any]) -> None:
    wait, step, delay = values["max_queue_wait"], values["max_step"], values["scale_down_delay"]
    if wait is not None and not 0 <= wait < math.inf:
        raise BadInput(f"--max-queue-wait must be 0 or more seconds (finite), got {wait}")
    if step < 1:
        raise BadInput(f"--max-step must be at least 1, got {step}")
    if not 0 <= delay < math.inf:
        raise BadInput(f"--scale-down-delay must be 0 or more seconds (finite), got {delay}")
    if values["scale_on"] == "queue-wait" and wait is None:
        raise BadInput("--scale-on queue-wait needs --max-queue-wait")
