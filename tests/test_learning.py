"""Fork mode: the master imports the modules of the jobs its workers take, and re-forks them to share it."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from rq import Queue
from rq.job import JobStatus

from rq_orchestrator.master.learning import PROBE_SECONDS, ModuleLearner, import_longest, probe

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")


def test_the_longest_importable_part_is_imported():
    assert import_longest("learned_jobs") == "learned_jobs"
    assert import_longest("json.decoder.JSONDecoder") == "json.decoder"  # a method's owner gives its module
    assert import_longest("no_such_package.tasks") is None


def test_each_module_is_tried_once_and_what_is_imported_already_never():
    sys.modules.pop("learned_jobs", None)  # imported by the test above
    learner = ModuleLearner()
    for name in ("os", "learned_jobs", "learned_jobs", "no_such_package.tasks"):
        learner.offer(name)
    assert learner.learn_pending(lambda: False) is True
    assert learner.learned == ["learned_jobs"] and "learned_jobs" in sys.modules
    learner.offer("no_such_package.tasks")
    assert learner.learn_pending(lambda: False) is False


def test_sighup_forgets_the_applications_modules_not_the_libraries_they_brought_in():
    for name in ("uses_a_library", "colorsys"):
        sys.modules.pop(name, None)
    learner = ModuleLearner()
    learner.offer("uses_a_library")
    assert learner.learn_pending(lambda: False) is True
    library = sys.modules["colorsys"]
    assert learner.forget() == ["uses_a_library"]
    assert "uses_a_library" not in sys.modules and sys.modules["colorsys"] is library  # numpy would not load twice


def test_a_module_that_starts_a_thread_is_never_imported_in_the_master(caplog):
    learner, threads = ModuleLearner(), set(threading.enumerate())  # an earlier test's may still be ending
    learner.offer("thread_on_import")
    with caplog.at_level(logging.INFO, "rq_orchestrator"):
        assert learner.learn_pending(lambda: False) is False  # nothing to re-fork for
    assert "job module thread_on_import is not imported in the master: importing it starts a thread" in caplog.text
    assert "thread_on_import" not in sys.modules and set(threading.enumerate()) <= threads


def test_a_module_that_leaves_a_connection_open_is_never_imported_in_the_master(caplog):
    sys.modules.pop("opens_a_connection", None)
    learner = ModuleLearner()
    learner.offer("opens_a_connection")
    with caplog.at_level(logging.INFO, "rq_orchestrator"):
        assert learner.learn_pending(lambda: False) is False
    assert "job module opens_a_connection is not imported in the master: importing it leaves files or " \
           "connections open" in caplog.text
    assert "opens_a_connection" not in sys.modules


def test_a_slow_import_is_not_learned_and_a_stop_ends_the_probe_at_once():
    started = time.monotonic()
    assert probe("slow_import", lambda: False) == (None, f"its import takes over {PROBE_SECONDS:g} s")
    assert time.monotonic() - started < PROBE_SECONDS + 1
    started = time.monotonic()
    assert probe("slow_import", lambda: True) == (None, "the pool is stopping")
    assert time.monotonic() - started < 0.5
    assert "slow_import" not in sys.modules


def run_jobs(pool, redis, count: int) -> list[int]:
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("learned_jobs.imported_by") for _ in range(count)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 30, "the jobs")
    return [j.return_value() for j in jobs]


def test_job_processes_find_the_learned_module_imported_by_the_master(start_pool, redis):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    first = pool.ready_pids()[0]
    assert run_jobs(pool, redis, 1) != [pool.pid]  # imported by its own job process
    pool.wait_until(lambda: "learned job module learned_jobs" in pool.output(), 10, "the master to learn it")
    pool.wait_until(lambda: pool.ready_pids() and first not in pool.ready_pids(), 15, "the worker re-forked")
    assert run_jobs(pool, redis, 3) == [pool.pid] * 3


def test_without_learning_or_without_forks_nothing_is_learned(start_pool, redis):
    for args in (("--no-learn-job-modules",), ("--no-fork",)):
        redis.flushall()
        pool = start_pool("--num-workers", "1", *FAST, *args)
        pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
        assert pool.pid not in run_jobs(pool, redis, 3)
        assert "learned job module" not in pool.output()


def test_a_busy_worker_is_replaced_after_its_job_not_beside_it(start_pool, redis):
    pool = start_pool("--num-workers", "2", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 2, 15, "two ready workers")
    queue = Queue(connection=redis)
    long_job = queue.enqueue("learned_jobs.hold", 4)
    pool.wait_until(lambda: long_job.get_status(refresh=True) == JobStatus.STARTED, 10, "the long job to start")
    long_job.refresh()
    busy = long_job.worker_name
    queue.enqueue("learned_jobs.imported_by")  # the other worker's job process names the module after it
    pool.wait_until(lambda: "learned job module learned_jobs" in pool.output(), 10, "the master to learn it")

    def replaced_idle_one() -> bool:
        workers = pool.workers()
        return len(workers) == 2 and busy in {w["name"] for w in workers}

    pool.wait_until(replaced_idle_one, 10, "the idle worker replaced, the busy one left alone")
    assert long_job.get_status(refresh=True) == JobStatus.STARTED
    pool.wait_until(lambda: long_job.get_status(refresh=True) == JobStatus.FINISHED, 15, "the long job to finish")
    pool.wait_until(lambda: len(pool.ready_pids()) == 2 and busy not in {w["name"] for w in pool.workers()},
                    15, "the busy worker replaced after its job")
    assert run_jobs(pool, redis, 2) == [pool.pid] * 2


def test_a_worker_that_took_its_next_job_as_the_module_was_learned_runs_it_alone(start_pool, redis, tmp_path):
    """-n 1 with jobs queued: the worker may take the next job before the master hears that it did,
    so its replacement waits until it has left, and no two jobs ever run at once."""
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("learned_jobs.hold_alone", 0.2, str(tmp_path / "lock")) for _ in range(8)]
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 30, "the jobs")
    assert "learned job module learned_jobs" in pool.output()
    assert [j.return_value() for j in jobs] == [True] * 8


def test_a_worker_still_starting_when_the_module_is_learned_is_replaced_once_up(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--worker-class", "jobs.SlowSecondBirth", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "the first worker")
    run_jobs(pool, redis, 1)
    pool.wait_until(lambda: "learned job module learned_jobs" in pool.output(), 10, "the master to learn it")
    slow = [w["pid"] for w in pool.workers() if w["state"] == "starting"]
    assert len(slow) == 1  # the second worker, forked before, is still starting
    pool.wait_until(lambda: len(pool.ready_pids()) == 2 and slow[0] not in pool.ready_pids(), 15,
                    "the second worker replaced once up")
    queue = Queue(connection=redis)
    jobs = [queue.enqueue("learned_jobs.hold", 1.0) for _ in range(2)]  # one for each idle worker
    pool.wait_until(lambda: all(j.get_status(refresh=True) == JobStatus.FINISHED for j in jobs), 15, "the jobs")
    assert [j.return_value() for j in jobs] == [pool.pid] * 2
    assert "exited unexpectedly" not in pool.output()  # its stop came once rq's handlers were in: warm


def test_a_worker_that_leaves_for_a_learned_module_while_its_hup_refork_starts_is_replaced_by_that_refork(
        start_pool, redis):
    pool = start_pool("--num-workers", "1", "--worker-class", "jobs.SlowSecondBirth", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "the first worker")
    first = pool.ready_pids()[0]
    pool.send(signal.SIGHUP)  # its re-fork takes slot 2: 2.5 s to come up
    pool.wait_until(lambda: len(pool.workers()) == 2, 5, "the re-fork")
    refork = next(w["pid"] for w in pool.workers() if w["pid"] != first)
    run_jobs(pool, redis, 1)  # the old worker runs it, the master learns its module: the old worker leaves first
    while (states := {w["pid"]: w["state"] for w in pool.workers()}).get(refork) == "starting":
        assert states.keys() <= {first, refork}, states  # -n 1: nothing forked beside the re-fork, which replaces it
        time.sleep(0.05)
    assert "learned job module learned_jobs" in pool.output() and first not in pool.ready_pids()
    pool.wait_until(lambda: len(pool.ready_pids()) == 1 and refork not in pool.ready_pids(), 10,
                    "the re-fork, forked before the module was learned, replaced in turn")


def test_hup_drops_the_learned_modules_so_deployed_job_code_runs(start_pool, redis, tmp_path):
    source = tmp_path / "deployed_version.py"
    source.write_text("def version():\n    return 1\n")
    pool = start_pool("--num-workers", "1", "--path", str(tmp_path), *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    queue = Queue(connection=redis)

    def run_version():
        job = queue.enqueue("deployed_version.version")
        pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 15, "the job")
        return job.return_value()

    assert run_version() == 1
    pool.wait_until(lambda: "learned job module deployed_version" in pool.output(), 10, "the master to learn it")
    source.write_text("def version():\n    return 'two'\n")  # a deploy (another size: no stale bytecode)
    first = pool.wait_until(lambda: pool.ready_pids(), 15, "the worker forked with the module")[0]
    pool.send(signal.SIGHUP)
    pool.wait_until(lambda: (pids := pool.ready_pids()) and first not in pids, 15, "the worker re-forked")
    assert run_version() == "two"
    assert "1 learned job module dropped from the master" in pool.output()


def test_a_warm_stop_is_not_turned_cold_by_learning(start_pool, redis):
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    job = Queue(connection=redis).enqueue("learned_jobs.hold", 3)
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.STARTED, 10, "the job to start")
    pool.send(signal.SIGTERM)  # warm: the job finishes, then its process names the module
    assert pool.wait(20) == 0
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert "learned job module" not in pool.output() and "cold shut down" not in pool.output()


def test_a_warm_stop_lets_a_worker_leaving_for_a_learned_module_finish_its_job(start_pool, redis):
    """A worker retired as the module was learned, busy with a job, gets no second TERM (a cold stop) from the pool's stop."""
    pool = start_pool("--num-workers", "1", *FAST)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    queue = Queue(connection=redis)
    first, second = queue.enqueue("learned_jobs.hold", 0.5), queue.enqueue("learned_jobs.hold", 4)
    pool.wait_until(lambda: "learned job module learned_jobs" in pool.output(), 15, "the master to learn it")
    pool.wait_until(lambda: second.get_status(refresh=True) == JobStatus.STARTED, 10, "the second job")
    time.sleep(1.5)  # a second TERM over a second after the first is a cold stop
    pool.send(signal.SIGTERM)
    assert pool.wait(20) == 0
    assert first.get_status(refresh=True) == second.get_status(refresh=True) == JobStatus.FINISHED
    assert "cold shut down" not in pool.output()
