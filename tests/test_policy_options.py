"""The scaling policy's command-line options and profiles: parsing, precedence, and bad input."""

from __future__ import annotations

from typing import Any

import click
import pytest
from click.testing import CliRunner

from rq_orchestrator.cli.options import OneLineErrors
from rq_orchestrator.infra.errors import BadInput
from rq_orchestrator.cli.policy_options import PROFILES, describe_profile, policy_options, policy_settings
from rq_orchestrator.policy.scaling import ScalingSettings

NONE_GIVEN = {"profile": None, "max_queue_wait": None, "max_step": None, "scale_down_delay": None,
              "max_pool_memory": None, "scale_on": None}


def settings(**given: Any) -> dict[str, Any]:
    return policy_settings({**NONE_GIVEN, **given})


@click.command(cls=OneLineErrors)
@policy_options
def command(**opts: Any) -> None:
    click.echo(repr(sorted(policy_settings(opts).items())))


def test_no_option_is_the_seed():
    assert ScalingSettings(**settings()) == ScalingSettings()
    assert ScalingSettings(**settings(profile="seed")) == ScalingSettings()
    assert ScalingSettings(**policy_settings({})) == ScalingSettings()


def test_the_seed_profile_is_the_settings_defaults():
    defaults = ScalingSettings()
    for key, value in PROFILES["seed"].items():
        assert getattr(defaults, key) == value, key


def test_responsive_profile():
    assert settings(profile="responsive") == PROFILES["responsive"]
    s = ScalingSettings(1, 8, 0.5, **settings(profile="responsive"))
    assert s.queue_wait_only and s.max_queue_wait == 0.5 and s.max_step == 8


def test_explicit_options_override_the_profile():
    values = settings(profile="responsive", max_step=2, max_queue_wait=3.0, scale_down_delay=0.0)
    assert (values["max_step"], values["max_queue_wait"], values["scale_down_delay"]) == (2, 3.0, 0.0)
    assert values["scale_on"] == "queue-wait"
    assert settings(profile="responsive", scale_on="utilization")["scale_on"] == "utilization"


def test_options_without_a_profile():
    values = settings(max_queue_wait=10.0, max_step=4, scale_down_delay=60.0, max_pool_memory="2GB")
    s = ScalingSettings(2, 8, 0.5, **values)
    assert (s.max_queue_wait, s.max_step, s.scale_down_delay, s.max_pool_memory) == (10.0, 4, 60.0, 2 * 10**9)
    assert s.scale_on == "utilization"
    assert settings(max_pool_memory="1.5GiB")["max_pool_memory"] == int(1.5 * 2**30)


def test_the_scaling_period_reaches_the_policy():
    assert settings(scaling_period=2.5)["scaling_period"] == 2.5
    assert ScalingSettings(**settings(scaling_period=2.5)).reversal_window == 7.5
    assert "scaling_period" not in settings()


@pytest.mark.parametrize(
    "given, name",
    [
        ({"max_step": 0}, "--max-step"),
        ({"max_step": -2}, "--max-step"),
        ({"scale_down_delay": -1.0}, "--scale-down-delay"),
        ({"scale_down_delay": float("nan")}, "--scale-down-delay"),
        ({"max_queue_wait": -0.1}, "--max-queue-wait"),
        ({"max_queue_wait": float("nan")}, "--max-queue-wait"),
        ({"max_pool_memory": "2XB"}, "--max-pool-memory"),
        ({"max_pool_memory": "lots"}, "--max-pool-memory"),
        ({"max_pool_memory": "0"}, "--max-pool-memory"),
        ({"max_pool_memory": "-5MB"}, "--max-pool-memory"),
        ({"max_pool_memory": ""}, "--max-pool-memory"),
        ({"scale_on": "queue-wait"}, "--max-queue-wait"),
        ({"profile": "responsive", "max_step": 0}, "--max-step"),
    ],
)
def test_bad_values_are_bad_input(given, name):
    with pytest.raises(BadInput) as caught:
        settings(**given)
    assert caught.value.exit_code == 2
    assert name in caught.value.format_message()


def test_zero_is_a_valid_wait_and_delay():
    values = settings(max_queue_wait=0.0, scale_down_delay=0.0)
    assert (values["max_queue_wait"], values["scale_down_delay"]) == (0.0, 0.0)


def test_decorator_defaults_to_none_and_parses():
    runner = CliRunner()
    assert runner.invoke(command, []).output.strip() == repr(sorted(settings().items()))
    result = runner.invoke(command, ["--profile", "responsive", "--max-step", "3", "--max-pool-memory", "512MB"])
    assert result.exit_code == 0, result.output
    assert "('max_step', 3)" in result.output and "('max_pool_memory', 512000000)" in result.output


@pytest.mark.parametrize(
    "args, name",
    [
        (["--max-step", "0"], "--max-step"),
        (["--max-step", "two"], "--max-step"),
        (["--scale-down-delay", "-3"], "--scale-down-delay"),
        (["--max-pool-memory", "12 parsecs"], "--max-pool-memory"),
        (["--profile", "turbo"], "--profile"),
        (["--scale-on", "vibes"], "--scale-on"),
    ],
)
def test_bad_command_lines_exit_2_in_one_line(args, name):
    result = CliRunner().invoke(command, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], result.output


def test_help_says_what_each_profile_sets():
    text = CliRunner().invoke(command, ["--help"]).output
    flat = " ".join(text.split())
    for name in PROFILES:
        assert f"{name}: {describe_profile(name)}" in flat
    expected = "--max-queue-wait 0.5 --max-step 8 --scale-down-delay 0 --scale-on queue-wait"
    assert describe_profile("responsive") == expected
