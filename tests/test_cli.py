"""The command line: help, and bad input rejected in one line with status 2, nothing started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from rq import Queue, Worker

from conftest import child_env


def run_cli(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rq_orchestrator", *args],
        capture_output=True, text=True, timeout=timeout, env={**child_env(), **(env or {})},
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
    (["--cluster", "a b", "--cluster-max-workers", "2"], "--cluster: no spaces"),
    (["--metrics-host", "0.0.0.0"], "--metrics-host needs --metrics-port"),
    (["--preload", "exits_on_import"], "--preload: cannot import exits_on_import: SystemExit: 3"),
    (["--worker-class", "exits_on_import.Worker"], "--worker-class: cannot import exits_on_import.Worker: SystemExit"),
    (["--max-workers-total", "3"], "--max-workers-total caps several --queue groups together"),
    (["--queue", "a:1-4", "--max-workers-total", "3"], "--max-workers-total caps several --queue groups together"),
    (["--name", ""], "--name: empty"),
    (["--quiet", "--logging-level", "DEBUG"], "--quiet is --logging-level WARNING: give one of them"),
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


def test_the_current_directory_is_on_the_import_path_as_for_rq_worker(redis_url, redis, tmp_path):
    """The console script (not `python -m`, which puts it there anyway), run from the application's directory."""
    (tmp_path / "deployed_jobs.py").write_text("def answer():\n    return 42\n")
    job = Queue(connection=redis).enqueue("deployed_jobs.answer")
    script = Path(sys.executable).with_name("rq-orchestrator")
    result = subprocess.run([str(script), "worker-pool", "--url", redis_url, "--burst", "-n", "1",
                             "--preload", "deployed_jobs"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, env=child_env())
    assert result.returncode == 0, result.stderr
    assert job.return_value() == 42


def test_a_fixed_pool_from_num_workers(redis_url, redis):
    from rq_orchestrator.cli.options import resolve_bounds

    assert resolve_bounds(None, None, 3) == (3, 3)
    assert resolve_bounds(None, None, None) == (2, 8)
    assert resolve_bounds(None, 1, None) == (1, 1)
    assert resolve_bounds(10, None, None) == (10, 10)
    assert resolve_bounds(0, 4, None) == (0, 4)


MORE_BAD_INPUT = [
    (["--max-jobs-per-worker", "0"], "--max-jobs-per-worker"),
    (["--name", "a b"], "--name: no spaces or control characters in a pool name (worker names carry it), got 'a b'"),
    (["--max-memory-per-worker", "lots"], "--max-memory-per-worker"),
    (["--max-memory-per-worker", "12XB"], "--max-memory-per-worker"),
    (["--max-memory-per-worker", "0MB"], "--max-memory-per-worker"),
    (["--graceful-timeout", "-1"], "--graceful-timeout"),
    (["--exception-handler", "no_such_module.handler"], "--exception-handler: cannot import no_such_module.handler"),
    (["--exception-handler", "os.sep"], "--exception-handler: os.sep is not callable"),
    (["--worker-ttl", "10"], "--worker-ttl"),
    (["--results-ttl", "-2"], "--results-ttl"),
    (["--job-monitoring-interval", "0"], "--job-monitoring-interval"),
    (["--pid", "/no/such/dir/pool.pid"], "--pid: cannot write /no/such/dir/pool.pid: No such file or directory"),
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


# Numbers a user may type by mistake: more workers than any machine here holds, sizes and periods below sense.
HOSTILE_NUMBERS = [
    (["--num-workers", "100000"], "--num-workers"),
    (["--min-workers", "5000", "--max-workers", "5000"], "--min-workers"),
    (["--max-workers", "5000"], "--max-workers"),
    (["--min-workers", "5000"], "--min-workers"),
    (["--queue", "a:99999999"], "--queue a:99999999"),
    (["--queue", "a:1-5000"], "--queue a:1-5000"),
    (["--queue", "a", "--queue", "b", "--max-workers-total", "100000"], "--max-workers-total"),
    (["--max-memory-per-worker", "1"], "--max-memory-per-worker"),
    (["--max-memory-per-worker", "1MB"], "--max-memory-per-worker"),
    (["--scaling-period", "0.0001"], "--scaling-period"),
    (["--scaling-period", "nan"], "--scaling-period"),
    (["--scaling-period", "inf"], "--scaling-period"),
    (["--utilization-window", "1e9"], "--utilization-window"),
    (["--graceful-timeout", "inf"], "--graceful-timeout"),
    (["--graceful-timeout", "nan"], "--graceful-timeout"),
    (["--stuck-margin", "0.01"], "--stuck-margin"),
    (["--stuck-margin", "inf"], "--stuck-margin"),
    (["--cluster-max-workers", "2", "--cluster-lease-ttl", "1e12"], "--cluster-lease-ttl"),
    (["--max-queue-wait", "inf"], "--max-queue-wait"),
    (["--scale-down-delay", "inf"], "--scale-down-delay"),
]


@pytest.mark.parametrize("args,names", HOSTILE_NUMBERS, ids=[" ".join(a) for a, _ in HOSTILE_NUMBERS])
def test_hostile_numbers_are_refused_in_one_line(redis_url, redis, args, names):
    result = run_cli("worker-pool", "--url", redis_url, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0], result.stderr
    assert Worker.all(connection=redis) == []


def test_the_worker_bound_says_how_to_raise_it_and_the_variable_does(redis_url):
    refused = run_cli("worker-pool", "--url", redis_url, "--num-workers", "3",
                      env={"RQ_ORCHESTRATOR_MAX_WORKERS": "2"})
    assert refused.returncode == 2
    assert "at most 2 (set by RQ_ORCHESTRATOR_MAX_WORKERS)" in refused.stderr
    assert "RQ_ORCHESTRATOR_MAX_WORKERS=3" in refused.stderr
    together = run_cli("worker-pool", "--url", redis_url, "--queue", "a:2", "--queue", "b:1-2",
                       env={"RQ_ORCHESTRATOR_MAX_WORKERS": "3"})
    assert together.returncode == 2 and "cap them with --max-workers-total" in together.stderr
    bad = run_cli("worker-pool", "--url", redis_url, "-n", "1", env={"RQ_ORCHESTRATOR_MAX_WORKERS": "lots"})
    assert bad.returncode == 2 and "RQ_ORCHESTRATOR_MAX_WORKERS" in bad.stderr
    raised = run_cli("worker-pool", "--url", redis_url, "--num-workers", "3", "--burst", "--no-prewarm",
                     "--without-scheduler", "--name", "raised", env={"RQ_ORCHESTRATOR_MAX_WORKERS": "3"})
    assert raised.returncode == 0, raised.stderr  # burst on empty queues: three workers came and went


def test_the_worker_bound_comes_from_the_machine(monkeypatch):
    from rq_orchestrator.cli.limits import MAX_WORKERS_ENV, WORKER_CEILING, worker_bound

    monkeypatch.delenv(MAX_WORKERS_ENV, raising=False)
    bound, source = worker_bound()
    assert 1 <= bound <= WORKER_CEILING and source
    monkeypatch.setenv(MAX_WORKERS_ENV, "5000")
    assert worker_bound() == (5000, f"set by {MAX_WORKERS_ENV}")


@pytest.mark.parametrize("args,names", [
    (["--num-workers", "100000"], "--num-workers"),
    (["--queue", "short:99999999"], "--queue short:99999999"),
    (["--scaling-period", "0.0001"], "--scaling-period"),
    (["--utilization-window", "1e9"], "--utilization-window"),
])
def test_bench_worker_pool_refuses_the_same_numbers(args, names):
    from click.testing import CliRunner

    from rq_orchestrator.commands import worker_pool

    result = CliRunner().invoke(worker_pool, args)
    assert result.exit_code == 2
    assert names in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, bench_default, expected", [
    (None, True, True),  # rq-orchestrator worker-pool: with rq's scheduler
    (None, False, False),  # bench worker-pool: without, as Frappe's own workers
    (True, False, True),
    (False, True, False),
])
def test_rq_s_scheduler_runs_by_default_except_in_a_bench(flag, bench_default, expected):
    from click.testing import CliRunner

    from rq_orchestrator.cli.group_specs import GroupRequest
    from rq_orchestrator.cli.options import build_config, pool_options

    seen = {}
    command = click.command()(pool_options(lambda **opts: seen.update(opts)))
    args = [] if flag is None else ["--with-scheduler" if flag else "--without-scheduler"]
    assert CliRunner().invoke(command, args).exit_code == 0
    config = build_config([GroupRequest(("default",))], seen, default_with_scheduler=bench_default)
    assert config.with_scheduler is expected


def test_the_pool_logs_as_rq_s_worker_does_errors_to_stderr_the_rest_to_stdout():
    """Under supervisor the master's routine lines sit beside its workers' (stdout), its errors in the error log."""
    code = ("import logging; from rq_orchestrator.cli.options import setup_logging; setup_logging('INFO'); "
            "log = logging.getLogger('rq_orchestrator'); log.info('routine'); log.warning('odd'); log.error('bad')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert [line.split(" ", 2)[2] for line in done.stdout.splitlines()] == ["INFO routine", "WARNING odd"]
    assert [line.split(" ", 2)[2] for line in done.stderr.splitlines()] == ["ERROR bad"]
