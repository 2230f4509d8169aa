"""`rq-orchestrator demo` end to end: a short run, its summary, plot and JSON, and what it leaves behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from rq_orchestrator.cli.demo_report import DemoSettings, JobStats, Sample, draw, summarize, summary_lines
from rq_orchestrator.infra.embedded_redis import RedisServer

pytest.importorskip("matplotlib")

FAST_POOL = ["--interval", "0.1", "--job-seconds", "0.2", "--scaling-period", "0.3", "--utilization-window", "1.2"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEED = DemoSettings(duration=10, idle=10, interval=0.5, job_seconds=1, min_workers=2, max_workers=8,
                    scaling_period=5, utilization_threshold=0.5, utilization_window=30)


def run_demo(cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rq_orchestrator", "demo", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def processes_mentioning(*needles: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(needle in cmdline for needle in needles):
            found.append(f"{proc.info['pid']}: {cmdline}")
    return found


def test_demo_scales_up_and_back_and_cleans_up(tmp_path: Path) -> None:
    png, report = tmp_path / "d.png", tmp_path / "d.json"
    result = run_demo(tmp_path, "--duration", "4", "--idle", "4", *FAST_POOL, "--plot", str(png), "--json", str(report))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for label in ("max workers:", "time to scale up:", "time back to min:", "jobs:", "job wait:", "plot:"):
        assert label in out, out
    jobs = re.search(r"jobs: +(\d+) enqueued, (\d+) finished, (\d+) failed", out)
    assert jobs, out
    enqueued, finished, failed = map(int, jobs.groups())
    assert enqueued == 40 and finished == enqueued and failed == 0, out

    data = json.loads(report.read_text())
    summary = data["summary"]
    assert summary["max_workers"] > 2, out
    assert summary["jobs_finished"] == summary["jobs_enqueued"] == enqueued
    assert summary["wait_p50"] is not None and summary["wait_p95"] >= summary["wait_p50"]
    assert len(data["samples"]) >= 8 and {s["phase"] for s in data["samples"]} == {"load", "idle"}
    assert png.stat().st_size > 0 and png.read_bytes().startswith(PNG_SIGNATURE)

    redis = re.search(r"redis://(127\.0\.0\.1:\d+)/", out)
    assert redis, out
    assert processes_mentioning(data["queue"], redis.group(1)) == []


def test_demo_on_a_named_redis_deletes_its_keys(tmp_path: Path) -> None:
    with RedisServer() as server:
        client = server.client(decode_responses=True)
        client.set("users:key", "kept")
        result = run_demo(tmp_path, "--url", server.url, "--duration", "2", "--idle", "1", *FAST_POOL, "--no-plot",
                          "--json", "d.json")
        assert result.returncode == 0, result.stdout + result.stderr
        queue = json.loads((tmp_path / "d.json").read_text())["queue"]
        assert processes_mentioning(queue) == []
        assert client.get("users:key") == "kept"
        left = {key: client.ttl(key) for key in client.keys("*") if key != "users:key"}
        # What rq keeps of dead workers and of its locks expires by itself; nothing else may stay.
        assert all(ttl > 0 for ttl in left.values()), left
        assert not [key for key in left if key.startswith(("rq:job:", "rq:results:", "rq:queue:"))], left
        assert [p.name for p in tmp_path.iterdir()] == ["d.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--duration", "0"], "--duration must be greater than 0"),
        (["--min-workers", "5", "--max-workers", "2"], "--min-workers (5) is greater than --max-workers (2)"),
        (["--scaling-period", "5", "--utilization-window", "1"], "--utilization-window (1.0) must be at least"),
        (["--plot", "out.txt"], "--plot: out.txt must end in"),
        (["--interval", "soon"], "'soon' is not a valid float"),
        (["--scaling-period", "0.05"], "--scaling-period must be from 0.1"),  # the pool's own limits, checked first
        (["--max-workers", "100000"], "more than this machine can hold"),
        (["--plot", "out.png", "--no-plot"], "--plot and --no-plot: give one of them"),
        (["--duration", "inf"], "--duration must be a finite number of seconds"),  # a traceback, after starting
        (["--job-seconds", "inf"], "--job-seconds must be a finite number of seconds"),
    ],
)
def test_demo_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_demo(tmp_path, *args, timeout=30)
    assert result.returncode == 2
    assert "demo queue" not in result.stdout  # nothing started
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def sample(t: float, workers: int) -> Sample:
    return Sample(t=t, phase="load", workers=workers, busy=0, queued=0, utilization=0.0, decision=None)


def test_summary_times_are_measured_from_the_load_start_and_end() -> None:
    counts = [2, 2, 3, 3, 4, 4, 5, 5, 5, 5, 5, 5, 5, 4, 3, 2, 2]
    jobs = JobStats(enqueued=20, finished=19, failed=1, waits=[0.1 * i for i in range(1, 21)])
    summary = summarize([sample(t, n) for t, n in enumerate(counts)], jobs, SEED)
    assert (summary.max_workers, summary.seconds_to_max, summary.seconds_to_reference) == (5, 6, 4)
    assert summary.seconds_back_to_min == 5
    assert summary.wait_p50 == pytest.approx(1.0) and summary.wait_p95 == pytest.approx(1.9)
    lines = "\n".join(summary_lines(summary, SEED))
    assert "6.0 s to 5 workers (the run's max), 4.0 s to 4 workers" in lines
    assert "20 enqueued, 19 finished, 1 failed" in lines

    stuck = summarize([sample(t, n) for t, n in enumerate([2, 3, 3, 3])], jobs, replace(SEED, duration=2))
    assert stuck.seconds_back_to_min is None and stuck.seconds_to_reference is None
    assert "not back at min (3 workers at the end)" in "\n".join(summary_lines(stuck, SEED))


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.ticker"):  # also when another test imported them
        monkeypatch.setitem(sys.modules, name, None)
    draw([sample(0, 2)], SEED, tmp_path / "d.png")
    assert capsys.readouterr().out.startswith("plot skipped: matplotlib is not installed")
    assert not (tmp_path / "d.png").exists()


def test_a_plot_asked_for_without_matplotlib_is_refused_before_the_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """It ran the whole demo (4 minutes by default), then said "plot skipped" and exited 0."""
    from click.testing import CliRunner

    from rq_orchestrator.cli.demo import demo
    from rq_orchestrator.cli.simulate import simulate

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.chdir(tmp_path)
    trace = Path(__file__).resolve().parent.parent / "benchmarks" / "traces" / "seed.csv"
    for command, args in ((demo, ["--plot", "run.png"]), (simulate, ["--trace", str(trace), "--plot", "sim.png"])):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 2 and "--plot needs matplotlib" in result.output, result.output
        assert "demo queue" not in result.output


def test_a_term_to_the_demo_s_process_group_stops_it_cleanly(tmp_path: Path) -> None:
    """`timeout` and terminals signal the whole group: the private Redis died with the demo's TERM while the
    pool still ran on it, and the workers printed hundreds of lines of tracebacks."""
    import os
    import signal

    proc = subprocess.Popen([sys.executable, "-m", "rq_orchestrator", "demo", "--no-plot", *FAST_POOL],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    while "load  workers" not in proc.stdout.readline():  # the load has begun
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: the pool and the private Redis stopped" in err
    assert "Traceback" not in err + out and "Error" not in err, err
