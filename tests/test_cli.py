"""The command line: help, and bad input rejected in one line with status 2, nothing started."""

from __future__ import annotations

import subprocess
import sys

import pytest
from rq import Worker

from conftest import child_env


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rq_orchestrator", *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(),
    )


BAD_INPUT = [
    (["--min-workers", "5", "--max-workers", "3"], "--min-workers"),
    (["--min-workers", "-1"], "--min-workers"),
    (["--max-workers", "0"], "--max-workers"),
    (["--num-workers", "0"], "--num-workers"),
    (["--num-workers", "2", "--min-workers", "1"], "--num-workers"),
    (["--num-workers", "2", "--max-workers", "4"], "--num-workers"),
    (["--min-workers", "two"], "--min-workers"),
    (["--utilization-threshold", "0"], "--utilization-threshold"),
    (["--utilization-threshold", "1.5"], "--utilization-threshold"),
    (["--utilization-threshold", "-0.2"], "--utilization-threshold"),
    (["--scaling-period", "0"], "--scaling-period"),
    (["--scaling-period", "-3"], "--scaling-period"),
    (["--scaling-period", "abc"], "--scaling-period"),
    (["--scaling-period", "10", "--utilization-window", "5"], "--utilization-window"),
    (["--worker-class", "rq.NoSuchWorker"], "--worker-class"),
    (["--worker-class", "nosuchmodule.Worker"], "--worker-class"),
    (["--worker-class", "rq.Queue"], "--worker-class"),
    (["--job-class", "rq.Worker"], "--job-class"),
    (["--queue-class", "rq.nope.Queue"], "--queue-class"),
    (["--serializer", "rq.serializers.Missing"], "--serializer"),
    (["--preload", "no_such_module_xyz"], "--preload"),
    (["--preload", "jobs_that_raise"], "--preload"),
    (["--logging-level", "LOUD"], "--logging-level"),
    (["--no-such-option"], "--no-such-option"),
    (["", "default"], "queue"),
]


@pytest.mark.parametrize("args,names", BAD_INPUT, ids=[" ".join(a) or "empty" for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_with_status_2(redis_url, redis, args, names):
    result = run_cli("worker-pool", "--url", redis_url, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names in lines[0]
    assert Worker.all(connection=redis) == []  # nothing was forked


@pytest.mark.parametrize(
    "url,shown",
    [
        ("redis://127.0.0.1:1/0", "redis://127.0.0.1:1/0"),
        ("redis://admin:s3cret@127.0.0.1:1/0", "redis://admin:***@127.0.0.1:1/0"),
        ("redis://localhost:port/0", "redis://localhost:port/0"),
        ("http://localhost:6379/0", "http://localhost:6379/0"),
        ("redis://:hunter2@", "redis://:***@"),
    ],
)
def test_bad_or_unreachable_url_names_it_without_the_password(url, shown):
    result = run_cli("worker-pool", "--url", url)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert shown in lines[0]
    assert "s3cret" not in result.stderr and "hunter2" not in result.stderr


def test_help_explains_every_option():
    result = run_cli("worker-pool", "--help")
    assert result.returncode == 0
    for option in ("--url", "--min-workers", "--max-workers", "--num-workers", "--scaling-period",
                   "--utilization-threshold", "--utilization-window", "--burst", "--preload", "--worker-class",
                   "--job-class", "--queue-class", "--serializer", "--logging-level", "--quiet"):
        assert option in result.stdout


def test_package_and_cli_do_not_need_frappe():
    code = (
        "import sys, rq_orchestrator, rq_orchestrator.cli, rq_orchestrator.master.pool;"
        "assert 'frappe' not in sys.modules; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    assert result.stdout.strip() == "ok", result.stderr


def test_a_fixed_pool_from_num_workers(redis_url, redis):
    from rq_orchestrator.cli.options import resolve_bounds

    assert resolve_bounds(None, None, 3) == (3, 3)
    assert resolve_bounds(None, None, None) == (2, 8)
    assert resolve_bounds(None, 1, None) == (1, 1)
    assert resolve_bounds(10, None, None) == (10, 10)
    assert resolve_bounds(0, 4, None) == (0, 4)


MORE_BAD_INPUT = [
    (["--max-jobs-per-worker", "0"], "--max-jobs-per-worker"),
    (["--max-memory-per-worker", "lots"], "--max-memory-per-worker"),
    (["--max-memory-per-worker", "12XB"], "--max-memory-per-worker"),
    (["--max-memory-per-worker", "0MB"], "--max-memory-per-worker"),
    (["--graceful-timeout", "-1"], "--graceful-timeout"),
]


@pytest.mark.parametrize("args,names", MORE_BAD_INPUT, ids=[" ".join(a) for a, _ in MORE_BAD_INPUT])
def test_bad_recycling_input_is_rejected(redis_url, args, names):
    result = run_cli("worker-pool", "--url", redis_url, *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and names in result.stderr


def test_sizes_parse():
    from rq_orchestrator.infra.sizes import parse_size

    assert parse_size("512MB") == 512 * 10**6
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("300m") == 300 * 10**6
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("-5MB")


def test_workers_resolve_redis_pys_driver_info_once():
    from redis import Redis

    from rq_orchestrator.infra.connection import fresh_copy

    url = "redis://127.0.0.1:1"  # as the command line builds its client
    first = fresh_copy(Redis.from_url(url)).connection_pool.connection_kwargs
    second = fresh_copy(Redis.from_url(url)).connection_pool.connection_kwargs
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py < 7 reads its version once, at import
        assert "driver_info" not in first
        return
    assert isinstance(first["driver_info"], DriverInfo) and first["driver_info"] is second["driver_info"]
    own = Redis(host="127.0.0.1", port=1)  # a client that resolved its own is left as it is
    assert fresh_copy(own).connection_pool.connection_kwargs["driver_info"] is own.connection_pool.connection_kwargs["driver_info"]
