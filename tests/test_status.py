"""`rq-orchestrator status` against real pools, the published state and its history."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from rq import Queue
from rq.suspension import suspend

from conftest import child_env, wait_until
from rq_orchestrator.cli import status as status_module
from rq_orchestrator.commands.status import worker_pool_status
from rq_orchestrator.infra import processes
from rq_orchestrator.infra.config import hostname
from rq_orchestrator.infra.keys import POOL_PREFIX, POOLS, pool_key
from rq_orchestrator.master.state import (PID_NAMESPACE, HISTORY_SECONDS, StatePublisher, history_length, read_history,
                                          read_pools)
from test_pool import FAST


def run_status(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rq_orchestrator", "status", "--url", url, *args],
                          capture_output=True, text=True, timeout=30, env=child_env())


def status_json(url: str) -> tuple[int, dict]:
    result = run_status(url, "--json")
    return result.returncode, json.loads(result.stdout)


def test_table_and_json_show_every_running_pool(start_pool, redis, redis_url):
    busy = start_pool("high", "low", "--num-workers", "1", "--name", "busy", *FAST)
    quiet = start_pool("other", "--min-workers", "1", "--max-workers", "3", "--name", "quiet", *FAST)
    for pool in (busy, quiet):
        pool.wait_until(lambda p=pool: p.ready_pids(), 20, "a ready worker")
    Queue("high", connection=redis).enqueue("jobs.sleep", 30)
    waiting = Queue("low", connection=redis).enqueue("jobs.sleep", 0)
    busy.wait_until(lambda: busy.state()["groups"][0]["oldest_wait_s"], 10, "the waiting job to be measured")

    table = run_status(redis_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("2 pools on redis://") and "stale" not in lines[0]
    header, rows = lines[2], {line.split()[0]: line for line in lines[3:]}
    assert header.split()[:4] == ["POOL", "HOST", "PID", "QUEUES"]
    assert f" {busy.pid} " in rows["busy"] and "high,low" in rows["busy"] and " 1/1/1 " in rows["busy"]
    assert " 1/1/3 " in rows["quiet"] and rows["quiet"].endswith("ok")
    assert "ago: " in rows["quiet"]  # the last decision, its age and reason

    code, document = status_json(redis_url)
    assert code == 0 and document["status"] == 0
    pools = {p["name"]: p for p in document["pools"]}
    group = pools["busy"]["groups"][0]
    assert group["queued"] == 1 and group["busy"] == 1 and group["oldest_wait_s"] > 0
    assert group["last_decision"]["action"] == "hold" and group["last_decision"]["at"] <= time.time()
    worker = pools["busy"]["workers"][0]
    assert worker["state"] == "busy" and worker["job"] and worker["memory_bytes"] > 1e6 and worker["pid"]
    assert pools["busy"]["memory_bytes"] > 1e6  # the master's and the worker's (PSS)
    # A quiet pool publishes every 10 s (KEEPALIVE_SECONDS): its age says so, and it is not stale for it.
    assert not pools["quiet"]["stale"] and 0 <= pools["quiet"]["age_s"] <= pools["busy"]["age_s"] + 10
    assert waiting.get_status(refresh=True) == "queued"
    assert document["suspended"] is False and "suspended" not in table.stdout

    suspend(redis)
    assert status_json(redis_url)[1]["suspended"] is True
    assert run_status(redis_url).stdout.splitlines()[-1].startswith("rq workers are suspended (rq suspend)")


def test_a_pool_in_its_warm_stop_says_so_for_as_long_as_it_lasts(start_pool, redis, redis_url):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.sleep", 24)  # outlasts the 12 s below and a slow `status` start
    pool.wait_until(lambda: job.get_status(refresh=True) == "started", 10, "the job to start")
    assert pool.state()["stopping"] is None
    pool.send(signal.SIGTERM)  # the job finishes first
    pool.wait_until(lambda: pool.state()["stopping"] == "warm", 5, "the stop to be published")
    time.sleep(12)  # longer than a quiet pool goes without publishing before it counts as stale (10.4 s here)
    table = run_status(redis_url)
    assert table.returncode == 0 and " stopping (warm)" in table.stdout, table.stdout
    assert pool.wait(30) == 0 and job.get_status(refresh=True) == "finished"


def test_a_killed_pool_stays_listed_by_name_until_forgotten(start_pool, redis, redis_url):
    pool = start_pool("--num-workers", "1", "--name", "killed", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 20, "a ready worker")
    assert run_status(redis_url).returncode == 0
    os.killpg(pool.pid, signal.SIGKILL)  # nobody removes its state
    pool.proc.wait()
    code, document = status_json(redis_url)
    (row,) = document["pools"]
    assert code == 1 and row["stale_reason"] == f"its master (pid {pool.pid}) is gone" and row["name"] == "killed"
    assert redis.ttl(row["key"]) > 800  # its name, groups and last figures stay for 15 minutes, not its 15 s of staleness
    table = run_status(redis_url, "--forget-stale")
    assert table.returncode == 1 and f" {pool.pid} " in table.stdout and "killed" in table.stdout
    result = run_status(redis_url)
    assert result.returncode == 3 and result.stdout.startswith("no pool has published on redis://")


def test_another_pool_s_start_leaves_a_killed_pool_listed(start_pool, redis, redis_url):
    killed = start_pool("--num-workers", "1", "--name", "first", *FAST)
    killed.wait_until(lambda: killed.ready_pids(), 20, "a ready worker")
    os.killpg(killed.pid, signal.SIGKILL)
    killed.proc.wait()
    other = start_pool("--num-workers", "1", "--name", "second", *FAST)
    other.wait_until(lambda: other.ready_pids(), 20, "the other pool's worker")
    code, document = status_json(redis_url)
    rows = {row["name"]: row for row in document["pools"]}
    assert code == 1 and rows.keys() == {"first", "second"} and rows["first"]["gone"], document


def test_status_shows_the_jobs_waiting_now_not_at_the_last_tick(start_pool, redis, redis_url):
    pool = start_pool("--num-workers", "1", "--scaling-period", "60", "--utilization-window", "60")
    pool.wait_until(lambda: pool.ready_pids(), 20, "a ready worker")
    queue = Queue(connection=redis)
    queue.enqueue("jobs.sleep", 10)
    pool.wait_until(lambda: queue.count == 0, 10, "the worker to take the first job")
    queue.enqueue("jobs.noop")
    queue.enqueue("jobs.noop")

    def waiting() -> dict | None:
        group = status_json(redis_url)[1]["pools"][0]["groups"][0]
        return group["queued"] == 2 and group["oldest_wait_s"] > 0 and group

    wait_until(waiting, 6, "status to show the two waiting jobs (the next tick is a minute away)")


def test_forget_stale_drops_a_pool_that_stopped_publishing_elsewhere(redis, redis_url):
    state = {"name": "p", "host": "otherhost", "pid": 1, "ttl": 900, "stale_after": 30.0, "groups": [], "workers": []}
    redis.set(f"{POOL_PREFIX}otherhost:1", json.dumps(state), ex=800)  # last published 100 s ago
    redis.zadd(POOLS, {f"{POOL_PREFIX}otherhost:1": 1})
    assert run_status(redis_url, "--forget-stale").returncode == 1
    assert run_status(redis_url).returncode == 3


def test_read_pools_judges_staleness_by_redis_s_clock(redis):
    state = {"name": "p", "host": "h", "pid": 1, "ttl": 100, "stale_after": 3.0, "groups": [], "workers": []}
    redis.set(f"{POOL_PREFIX}h:1", json.dumps(state), ex=100)  # just published
    redis.set(f"{POOL_PREFIX}h:2", json.dumps({**state, "pid": 2}), ex=90)  # published 10 s ago
    redis.zadd(POOLS, {f"{POOL_PREFIX}h:1": 1, f"{POOL_PREFIX}h:2": 2, f"{POOL_PREFIX}h:3": 3})  # h:3 expired
    fresh, late, gone = read_pools(redis)
    assert not fresh["stale"] and fresh["age_s"] < 1
    assert late["stale"] and 9 < late["age_s"] < 11 and late["stale_reason"].startswith("no update for 10")
    assert gone == {"key": f"{POOL_PREFIX}h:3", "stale": True, "stale_reason": "its state expired", "last_seen": 3}
    assert status_module.health([fresh]) == 0 and status_module.health([fresh, late]) == 1
    assert status_module.health([]) == 3


def a_dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_gone_master_is_judged_only_where_its_pids_mean_the_same(redis):
    """Same host name is not enough: a container on the host network, or another machine, has pids of its own."""
    dead = a_dead_pid()
    state = {"name": "p", "host": hostname(), "pid": dead, "ttl": 100, "stale_after": 30.0, "groups": [], "workers": []}
    for key, namespace in (("here", PID_NAMESPACE), ("elsewhere", "another-boot/pid:[1]")):
        redis.set(f"{POOL_PREFIX}{key}:{dead}", json.dumps({**state, "pid_namespace": namespace}), ex=100)
        redis.zadd(POOLS, {f"{POOL_PREFIX}{key}:{dead}": 1})
    elsewhere, here = read_pools(redis)  # the index orders equal scores by key
    assert here["stale"] and here["gone"] and here["stale_reason"] == f"its master (pid {dead}) is gone"
    assert not elsewhere["stale"] and "gone" not in elsewhere


def test_a_process_hidden_by_proc_s_hidepid_still_counts_as_running(monkeypatch):
    def hidden(path, *args, **kwargs):
        raise FileNotFoundError(path)  # what /proc mounted with hidepid=2 answers for another user's process

    monkeypatch.setattr(processes, "open", hidden, raising=False)
    assert processes.running(os.getpid())  # the kernel still has it
    assert not processes.running(a_dead_pid())


def test_a_starting_pool_drops_the_entries_of_its_own_killed_runs_on_its_host_only(redis):
    dead, ours = a_dead_pid(), os.getpid()
    gone_state = {"name": "p", "host": hostname(), "pid": dead, "pid_namespace": PID_NAMESPACE, "ttl": 100,
                  "stale_after": 30.0, "groups": [], "workers": []}
    entries = {
        pool_key(hostname(), dead): gone_state,  # a killed run of this pool: replaced
        pool_key("otherhost", dead): None,  # expired, another host: kept
        pool_key(hostname(), dead + 1_000_000): None,  # expired, this host, pid gone: whose? kept
        pool_key(hostname(), dead + 2_000_000): {**gone_state, "pid": dead + 2_000_000, "name": "another"},  # kept
        pool_key(hostname(), ours): {**gone_state, "pid": ours, "name": "other"},  # alive: kept
        # Killed a minute ago (stale by age, and gone): replaced.
        pool_key(hostname(), dead + 3_000_000): {**gone_state, "pid": dead + 3_000_000, "ttl": 160},
        # A run of this pool's name here before a reboot (its pids not ours to judge), a minute silent: replaced.
        pool_key(hostname(), 5): {**gone_state, "pid": 5, "pid_namespace": "another-boot/pid:[1]", "ttl": 160},
    }
    for key, content in entries.items():
        if content is not None:
            redis.set(key, json.dumps(content), ex=100)
        redis.zadd(POOLS, {key: 1})
    pool = type("Pool", (), {"host": hostname(), "pid": 4_000_000, "stopping": None, "groups": [],
                             "config": type("Config", (), {"pool_name": "p", "scaling_period": 1.0})})
    StatePublisher(pool, redis).replace_predecessors()
    replaced = {pool_key(hostname(), dead), pool_key(hostname(), dead + 3_000_000), pool_key(hostname(), 5)}
    assert sorted(p["key"] for p in read_pools(redis)) == sorted(key for key in entries if key not in replaced)


def test_the_history_keeps_a_sample_per_tick_and_every_scaling(start_pool, redis):
    pool = start_pool("--min-workers", "1", "--max-workers", "2", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 20, "a ready worker")
    key = pool.state()["key"]
    jobs = [Queue(connection=redis).enqueue("jobs.sleep", 0.2) for _ in range(15)]

    def scaled_up_and_down() -> list[dict]:
        history = read_history(redis, key)
        actions = [s["action"] for s in history if s["kind"] == "decision"]
        return "up" in actions and "down" in actions and history

    pool.wait_until(lambda: all(j.get_status(refresh=True) == "finished" for j in jobs), 30, "the jobs to finish")
    history = pool.wait_until(scaled_up_and_down, 30, "a scale-up and a scale-down in the history")
    assert [s["t"] for s in history] == sorted(s["t"] for s in history)
    ticks = [s for s in history if s["kind"] == "tick"]
    assert len(ticks) >= 5 and {"t", "group", "workers", "target", "busy", "utilization", "queued",
                                "oldest_wait_s", "action", "reason"} <= set(ticks[-1])
    assert all(s["action"] in ("up", "down", "hold") and s["reason"] for s in ticks)
    group = pool.state()["groups"][0]
    decisions = [s["action"] for s in history if s["kind"] == "decision"]
    assert (group["scale_ups"], group["scale_downs"]) == (decisions.count("up"), decisions.count("down"))
    assert group["last_change"]["action"] == "down"
    # A decision's sample shows what it was taken on: a scale-down from 2 to 1 says 2 workers, as its log line does.
    down = next(s for s in history if s["kind"] == "decision" and s["action"] == "down")
    assert (down["target"], down["workers"]) == (1, 2)
    down_ticks = [s for s in ticks if s["action"] == "down" and s["reason"] == down["reason"]]
    assert down_ticks and all((s["target"], s["workers"], s["utilization"]) == (1, 2, down["utilization"])
                              for s in down_ticks)  # the tick's sample too: its figures are its reason's
    recent = read_history(redis, key, limit=2)
    assert len(recent) == 2 and recent[0]["t"] <= recent[1]["t"]
    assert pool.state()["ttl"] < redis.ttl(f"{key}:history") <= HISTORY_SECONDS  # outlives quiet times
    assert history_length(5, 1) == 720 and history_length(0.2, 1) == 3600 and history_length(5, 2) == 1440
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert not redis.exists(key, f"{key}:history") and redis.zcard(POOLS) == 0


def test_watch_refreshes_in_place_on_a_terminal(redis, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    sleeps = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_module.time, "sleep", sleep)
    out = Terminal()
    code = status_module.show_status(redis, as_json=False, watch=True, interval=0.5, forget_stale=False, out=out)
    assert code == 3 and sleeps == [0.5, 0.5, 0.5]
    assert out.getvalue().count(status_module.CLEAR_SCREEN + "no pool has published") == 3


def test_watch_prints_one_json_document_per_refresh(start_pool, redis_url):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: pool.ready_pids(), 20, "a ready worker")
    watcher = subprocess.Popen([sys.executable, "-m", "rq_orchestrator", "status", "--url", redis_url, "--json",
                                "--watch", "--interval", "0.2"], stdout=subprocess.PIPE, text=True, env=child_env())
    assert watcher.stdout is not None
    lines = [watcher.stdout.readline() for _ in range(3)]  # as they come (a loaded machine starts Python slowly)
    watcher.send_signal(signal.SIGINT)
    out, _ = watcher.communicate(timeout=10)
    documents = [json.loads(line) for line in [*lines, *out.splitlines()]]
    assert watcher.returncode == 0 and len(documents) >= 3
    assert all(d["pools"][0]["pid"] == pool.pid for d in documents)


def test_interval_without_watch_is_refused_before_any_connection():
    for command, args in ((status_module.status, ["--url", "redis://127.0.0.1:1/0"]), (worker_pool_status, [])):
        result = CliRunner().invoke(command, [*args, "--interval", "5"])
        assert result.exit_code == 2 and "--interval" in result.output and "--watch" in result.output
        assert len(result.output.strip().splitlines()) == 1


def test_the_bench_command_shares_the_options_and_needs_a_bench():
    result = CliRunner().invoke(worker_pool_status, ["--help"])
    assert result.exit_code == 0
    for option in ("--json", "--watch", "--interval", "--forget-stale"):
        assert option in result.output
    try:
        import frappe  # noqa: F401
    except ImportError:
        result = CliRunner().invoke(worker_pool_status, [])
        assert result.exit_code == 2 and "inside a Frappe bench" in result.output
    else:
        pytest.skip("frappe is installed here")


def test_importing_the_bench_command_does_not_import_frappe():
    code = "import sys, rq_orchestrator.commands.status; assert 'frappe' not in sys.modules; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


def test_an_unreachable_redis_is_one_line_with_status_2():
    result = run_status("redis://127.0.0.1:1/0")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "--url" in result.stderr
