"""The `bench worker-pool` command without a bench: options, help and the option mapping.

What needs a real bench (Frappe's connection, queues and worker class) is
checked inside a bench; see the README's "Frappe" section.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from rq_orchestrator import commands as bench_commands
from rq_orchestrator.commands import commands, worker_pool, worker_pool_setup, worker_pool_supervisor
from rq_orchestrator.commands.supervisor import program_block

FRAPPE_OPTIONS = ("--queue", "--num-workers", "--quiet", "--burst", "--rq-username", "--rq-password", "--strategy")
POOL_OPTIONS = ("--min-workers", "--max-workers", "--scaling-period", "--utilization-threshold",
                "--utilization-window", "--max-jobs-per-worker", "--graceful-timeout")


def test_the_app_exports_a_worker_pool_command():
    assert "worker-pool" in [c.name for c in commands]
    assert worker_pool.name == "worker-pool"


def test_importing_the_commands_does_not_import_frappe():
    code = "import sys, rq_orchestrator.commands; assert 'frappe' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_help_lists_frappe_s_options_and_ours():
    result = CliRunner().invoke(worker_pool, ["--help"])
    assert result.exit_code == 0
    for option in FRAPPE_OPTIONS + POOL_OPTIONS:
        assert option in result.output
    assert "-u, --rq-username" in result.output and "-p, --rq-password" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-workers", "2", "--min-workers", "1"], "--num-workers"),
        (["--min-workers", "4", "--max-workers", "2"], "--min-workers"),
        (["--utilization-threshold", "2"], "--utilization-threshold"),
        (["--num-workers", "x"], "--num-workers"),
        (["--strategy", "random", "--dequeue-strategy", "round_robin"], "disagree"),
        (["--strategy", "random", "--dequeue-strategy", "default"], "disagree"),
        (["--strategy", "fifo"], "--strategy"),
    ],
)
def test_bad_numbers_are_rejected_before_touching_the_bench(args, message):
    result = CliRunner().invoke(worker_pool, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_outside_a_bench_the_error_says_so():
    try:
        import frappe  # noqa: F401
    except ImportError:
        result = CliRunner().invoke(worker_pool, ["--num-workers", "2"])
        assert result.exit_code == 2
        assert "inside a Frappe bench" in result.output
    else:
        pytest.skip("frappe is installed here")


def test_supervisor_block_waits_for_the_longest_job():
    block = program_block("b-frappe-worker-pool", ["/b/env/bin/bench", "worker-pool", "--min-workers", "2"],
                          directory="/b", stdout_logfile="/b/logs/worker.log",
                          stderr_logfile="/b/logs/worker.error.log", longest_stop=1500)
    assert block.startswith("[program:b-frappe-worker-pool]\n")
    assert "command=/b/env/bin/bench worker-pool --min-workers 2\n" in block
    assert "stopwaitsecs=1560\n" in block
    assert "stopsignal=TERM\n" in block and "directory=/b\n" in block


def fake_bench(tmp_path):
    """A bench directory with bench's worker programs; returns its sites/ folder (where bench runs app commands)."""
    (tmp_path / "sites").mkdir()
    (tmp_path / "config").mkdir()
    (tmp_path / "config/supervisor.conf").write_text(
        "[program:b-frappe-short-worker]\ncommand=/b/env/bin/bench worker --queue short,default\n"
        "[group:b-workers]\nprograms=b-frappe-short-worker\n")
    (tmp_path / "Procfile").write_text("worker: bench worker 1>> logs/worker.log\n")
    return tmp_path / "sites"


def test_the_app_exports_the_setup_command():
    assert "worker-pool-setup" in [c.name for c in commands]
    result = CliRunner().invoke(worker_pool_setup, ["--help"])
    assert result.exit_code == 0 and "--dry-run" in result.output and "--program-name" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--min-workers", "4", "--max-workers", "2"], "--min-workers"),
        (["--no-such-option"], "--no-such-option"),
        (["--queue", "short:0-0"], "--queue"),
        (["--cluster-lease-ttl", "30"], "--cluster-lease-ttl needs --cluster-max-workers"),
        (["--strategy", "random", "--dequeue-strategy", "round_robin"], "disagree"),
        (["--queue", "short:3", "--cluster-max-workers", "2"], "--cluster-max-workers (2) is below this pool's minimum"),
    ],
)
def test_setup_rejects_what_the_pool_would_reject_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(fake_bench(tmp_path))
    before = (tmp_path / "config/supervisor.conf").read_text(), (tmp_path / "Procfile").read_text()
    result = CliRunner().invoke(worker_pool_setup, args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert ((tmp_path / "config/supervisor.conf").read_text(), (tmp_path / "Procfile").read_text()) == before
    assert not list(tmp_path.rglob("*.bak"))


def test_setup_outside_a_bench_says_so_and_writes_nothing(tmp_path, monkeypatch):
    try:
        import frappe  # noqa: F401
    except ImportError:
        monkeypatch.chdir(fake_bench(tmp_path))
        result = CliRunner().invoke(worker_pool_setup, ["--min-workers", "2"])
        assert result.exit_code == 2 and "inside a Frappe bench" in result.output
        assert not list(tmp_path.rglob("*.bak"))
    else:
        pytest.skip("frappe is installed here")


BENCH_QUEUES = {"short": 300, "default": 300, "long": 1500}


@pytest.mark.parametrize("command", [worker_pool_setup, worker_pool_supervisor], ids=["setup", "supervisor"])
def test_a_queue_the_bench_does_not_have_is_refused_before_anything_is_written(tmp_path, monkeypatch, command):
    """`bench worker-pool --queue nosuch` exits 2 at every start: a program that runs it is never written."""
    monkeypatch.chdir(fake_bench(tmp_path))
    monkeypatch.setattr(bench_commands, "bench_queues", lambda: dict(BENCH_QUEUES))
    before = (tmp_path / "config/supervisor.conf").read_text(), (tmp_path / "Procfile").read_text()
    result = CliRunner().invoke(command, ["--queue", "short,nosuch:1-2"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --queue: unknown queue nosuch (this bench has short, default, long)"
    assert ((tmp_path / "config/supervisor.conf").read_text(), (tmp_path / "Procfile").read_text()) == before


@pytest.mark.parametrize("args,wait", [
    ([], 1560),  # the longest queue timeout (long: 1500 s) and the margin
    (["--graceful-timeout", "5000"], 5060),  # the stop the operator asked to wait for
    (["--graceful-timeout", "30"], 1560),  # a shorter one ends the stop sooner: the longer wait stands
])
@pytest.mark.parametrize("command", [worker_pool_setup, worker_pool_supervisor], ids=["setup", "supervisor"])
def test_stopwaitsecs_covers_the_graceful_timeout_too(tmp_path, monkeypatch, command, args, wait):
    monkeypatch.chdir(fake_bench(tmp_path))
    monkeypatch.setattr(bench_commands, "bench_queues", lambda: dict(BENCH_QUEUES))
    result = CliRunner().invoke(command, [*(["--dry-run"] if command is worker_pool_setup else []), *args])
    assert result.exit_code == 0, result.output
    assert f"stopwaitsecs={wait}\n" in result.output


def test_an_empty_queue_is_every_queue_of_the_bench_as_in_frappe_s_pool(tmp_path, monkeypatch):
    """Frappe's `worker-pool --queue ""` consumes all queues (its `if queue:`); it was refused here."""
    monkeypatch.chdir(fake_bench(tmp_path))
    monkeypatch.setattr(bench_commands, "bench_queues", lambda: dict(BENCH_QUEUES))
    result = CliRunner().invoke(worker_pool_setup, ["--dry-run", "--queue", ""])
    assert result.exit_code == 0, result.output
    assert "warning: no --queue names" not in result.output  # the replaced short,default worker's queues: served
    assert bench_commands.bench_groups(("",)) == [] and bench_commands.bench_groups((" ",)) == []
    result = CliRunner().invoke(worker_pool_setup, ["--dry-run", "--queue", "", "--queue", "short"])
    assert result.exit_code == 2 and "--queue" in result.output  # beside a group, an empty one is a mistake


@pytest.mark.parametrize("args,warned", [
    ([], "--strategy round_robin, and the pool serves its queues in the order given"),
    (["--strategy", "random"], "--strategy round_robin, and the pool dequeues random"),
    (["--strategy", "round_robin"], None),
])
def test_setup_says_when_the_replaced_workers_dequeued_with_another_strategy(tmp_path, monkeypatch, args, warned):
    sites = fake_bench(tmp_path)
    conf = tmp_path / "config/supervisor.conf"
    conf.write_text(conf.read_text().replace("--queue short,default", "--queue short,default --strategy round_robin"))
    monkeypatch.chdir(sites)
    monkeypatch.setattr(bench_commands, "bench_queues", lambda: dict(BENCH_QUEUES))
    result = CliRunner().invoke(worker_pool_setup, ["--dry-run", *args])  # output: stdout and stderr
    assert result.exit_code == 0, result.output
    assert "+command=/b/env/bin/bench worker-pool" in result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: the replaced workers")]
    assert warnings == ([f"warning: the replaced workers ran with {warned}"] if warned else [])
