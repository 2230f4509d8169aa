"""Pool worker names: slot and pid first, read back by the pool itself when it clears a killed run."""

from __future__ import annotations

import os
import subprocess
import sys

from rq import Queue, Worker

from rq_orchestrator.master.dead_workers import clear_previous_run
from rq_orchestrator.master.worker_names import WorkerName, of_pool, parse_worker_name, worker_name


def test_the_distinguishing_part_comes_first_and_reads_back():
    name = worker_name("vm", "short-default-long", 2, 12360)
    assert name == "w2.12360.vm.short-default-long"
    assert name[:8] == "w2.12360"  # what a list column cut after a few characters still shows
    assert parse_worker_name(name) == WorkerName(2, 12360, "vm.short-default-long")
    assert parse_worker_name(worker_name("vm", "pool.long-default", 11, 7)) == WorkerName(11, 7, "vm.pool.long-default")


def test_other_names_are_not_ours():
    for name in ("3f2a9c0e4b5d4e6f8a7b9c0d1e2f3a4b", "vm.pool.w1.4711", "w1.vm.pool", "wx.1.vm.pool", "w1.2"):
        assert parse_worker_name(name) is None


def test_a_pool_recognises_its_workers_of_any_group_only():
    assert of_pool("w1.10.vm.pool", "vm", "pool")
    assert of_pool("w3.11.vm.pool.short-default", "vm", "pool")
    assert not of_pool("w1.12.vm.pool2", "vm", "pool")
    assert not of_pool("w1.13.other.pool", "vm", "pool")
    assert not of_pool("w1.14.vm.other", "vm", "pool")


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def register(redis, name: str) -> None:
    Worker([Queue("default", connection=redis)], connection=redis, name=name).register_birth()


def test_a_killed_runs_registrations_are_cleared_and_nothing_else(redis):
    gone = [worker_name("vm", "pool", 1, dead_pid()), worker_name("vm", "pool.long", 2, dead_pid())]
    kept = [
        worker_name("vm", "pool", 3, os.getpid()),  # still running: finishing its job
        worker_name("vm", "pool2", 1, dead_pid()),  # another pool
        worker_name("other", "pool", 1, dead_pid()),  # another host
        "3f2a9c0e4b5d4e6f8a7b9c0d1e2f3a4b",  # not ours at all
    ]
    for name in gone + kept:
        register(redis, name)
    assert clear_previous_run(redis, "vm", "pool", {}) == 2
    assert sorted(w.name for w in Worker.all(connection=redis)) == sorted(kept)
