"""Errands (rq_orchestrator.master.errand): code run in a throwaway fork that reports as it goes."""

from __future__ import annotations

import os
import time

from rq_orchestrator.master.errand import FAILED, LATE, STOPPING, run_errand


def test_an_errand_says_what_it_did_and_its_fork_is_gone():
    said, why = run_errand(lambda say: say(str(os.getpid()).encode()), "rq-orchestrator: test errand", 5, lambda: False)
    assert why == "" and int(said) != os.getpid()


def test_what_an_errand_said_before_it_was_cut_short_is_kept():
    def task(say) -> None:
        say(b"first ")
        time.sleep(30)

    assert run_errand(task, "rq-orchestrator: test errand", 0.5, lambda: False) == (b"first ", LATE)
    stop_at = time.monotonic() + 0.5  # a TERM that comes while it runs
    assert run_errand(task, "rq-orchestrator: test errand", 30, lambda: time.monotonic() > stop_at) == (
        b"first ", STOPPING)


def test_an_errand_that_raises_failed_and_what_it_said_stays():
    def task(say) -> None:
        say(b"x")
        raise RuntimeError("the errand fails")

    assert run_errand(task, "rq-orchestrator: test errand", 5, lambda: False) == (b"x", FAILED)


def test_a_process_the_errand_left_holding_its_pipe_does_not_hold_the_master():
    def task(say) -> None:
        say(b"done")
        if os.fork() == 0:  # e.g. a pool an import started: it keeps the pipe's write end
            time.sleep(5)
            os._exit(0)

    started = time.monotonic()
    assert run_errand(task, "rq-orchestrator: test errand", 10, lambda: False) == (b"done", "")
    assert time.monotonic() - started < 3
