"""How an idle pool worker waits for a job: one long blocking pop that a stop ends at once, with no job lost.

rq's worker waits in a blocking pop for ``dequeue_timeout`` seconds (about
400): BLMOVE into an intermediate list for a single queue on Redis 6.2+,
BLPOP otherwise. A pool worker waits just as long, and a stop (from the
master, or the parent-death signal when the master dies) ends the wait from
the signal handler, in the way that is safe for each pop:

* BLPOP: the worker also pops from a wake key of its own
  (``infra.keys.wake_key``), and the handler pushes a token onto it over a
  second, short-lived connection. Redis serves the pop atomically: a job (the
  worker runs it, then stops) or the token (it stops with nothing in hand).
* BLMOVE: the worker waits on a connection of its own, without redis-py's
  retries, and the handler shuts that socket down: the pop fails at once,
  wherever the signal landed. (An exception raised from the handler would be
  lost when the signal lands in a finalizer, ``__del__``, and the worker would
  wait on.) If Redis had already moved a job, the job sits in rq's
  intermediate list, and the master returns it to the front of its queue
  (``master.dead_workers``, stranded jobs).

A job popped from a list is in no other list until the worker reports it to
the master: a cold stop in between (``taking``) waits for that report, and the
master puts the job back.

So an idle worker sends Redis a handful of commands every ``dequeue_timeout``
instead of every second, and needs neither an ``@admin`` command (``CLIENT
UNBLOCK``) nor a channel: Frappe's rq ACL user may use the wake key. Nothing
is raised from a signal handler.

While jobs wait, a worker pops the next with a script that also reads the
job's hash: one round trip for rq's pop and fetch (``lean.prefetched``), LPOP
over the queues (``POP_AND_READ``) or, on one queue, LMOVE into rq's
intermediate list (``MOVE_AND_READ``, on the BLMOVE's own connection: a reply
lost to a failure is a cut-short pop, as the BLMOVE's). When the script finds
the queues empty the worker blocks in BLPOP or BLMOVE, and goes on blocking
while jobs come one at a time (each pop had to wait for its job); a pop
answered at once means jobs are queued, and the script goes first again. A
server that refuses scripts (NOPERM, scripting disabled) gets the blocking
pops alone from then on.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError, ResponseError, TimeoutError
from redis.retry import Retry
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue
from rq.utils import as_text

from ..infra.connection import fresh_copy
from ..infra.rq_keys import intermediate_of
from .lean import prefetched
from .mixins import with_mixin

WAKE_TOKEN = "wake"
WAKE_TTL_SECONDS = 60  # a token nobody popped (the worker took a job instead, then left) expires
LIST, MOVE = "list", "move"  # the two kinds of wait: BLPOP on the queues and the wake key, rq's BLMOVE
JOB_PREFIX = Job.redis_job_namespace_prefix
QUEUED_WITHIN = 0.005  # seconds: a BLPOP answered sooner found a job waiting (then the script goes first again)
# The job's hash is read with pcall: a read refused (an ACL without the job's key, a key of another
# type) must not fail the script after its pop, which Redis does not undo; rq's own fetch reads it.
READ_JOB = """
local function job(id)
  local fields = redis.pcall('HGETALL', ARGV[1] .. id)
  if fields.err then return {} end
  return fields
end
"""
POP_AND_READ = READ_JOB + """
for _, queue in ipairs(KEYS) do
  local id = redis.call('LPOP', queue)
  if id then return {queue, id, job(id)} end
end
return false
"""
MOVE_AND_READ = READ_JOB + """
local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
if id then return {KEYS[1], id, job(id)} end
return false
"""


class IdleWait:
    """This process's idle wait: the key that ends it, the kind of wait in progress, and whether to wait at all."""

    def __init__(self) -> None:
        self.key: str | None = None  # None: not a pool worker (the master's rehearsal): rq's own pops
        self.connection: Any = None  # the worker's client, copied for a wake
        self.blocking: Any = None  # BLMOVE's client: one connection, no retries (made at the first BLMOVE)
        self.waiting: str | None = None  # LIST or MOVE while in a blocking pop
        self.taking = False  # a job popped from a list (in no other list now), not yet reported to the master
        self.stopping = False
        self.cut_short: Callable[[], None] = lambda: None  # told when a BLMOVE was interrupted
        self.pop_and_read: Any = None  # the scripts; None once the server or its user refused them
        self.move_and_read: Any = None
        self.eager = True  # a job may be waiting: try the script before blocking

    def arm(self, key: str, connection: Any, cut_short: Callable[[], None]) -> None:
        """In a fresh worker: wait on ``key`` besides the queues (whatever the master's rehearsal left here)."""
        self.key, self.connection, self.cut_short = key, connection, cut_short
        self.waiting, self.stopping, self.eager, self.blocking, self.taking = None, False, True, None, False
        self.pop_and_read = connection.register_script(POP_AND_READ)
        self.move_and_read = connection.register_script(MOVE_AND_READ)

    def wake(self) -> None:
        """From a signal handler: no more waiting; end a wait in progress (the first stop only)."""
        first, self.stopping = not self.stopping, True
        if self.key is None or not first:
            return
        if self.waiting == MOVE:
            self._shut_blocking()
        if self.waiting == LIST:
            self._push_token()

    def _push_token(self) -> None:
        client = fresh_copy(self.connection)
        try:
            with client.pipeline(transaction=False) as pipe:
                pipe.rpush(self.key, WAKE_TOKEN)
                pipe.expire(self.key, WAKE_TTL_SECONDS)
                pipe.execute()
        except RedisError:
            pass  # Redis is down: the pop fails too, and the worker sees the stop when it retries
        finally:
            client.close()

    def _shut_blocking(self) -> None:
        """End BLMOVE's wait, or make it fail as it starts: its socket reads end-of-file, its writes fail."""
        sock = getattr(self.blocking.connection, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the pop has failed

    def pop_list(self, queue_keys: list[str], timeout: float, connection: Any) -> tuple[Any, Any] | None:
        """BLPOP on the queues and the wake key: (queue key, job id), None when woken; DequeueTimeout as rq's."""
        assert self.key is not None
        try:
            self.waiting = LIST  # before the check: a stop from here on pushes a token, or is seen below
            if self.stopping:
                return None
            result = self._pop_waiting(queue_keys, connection) if self.eager else None
            if result is None:
                began = time.monotonic()
                result = connection.blpop([*queue_keys, self.key], timeout)
                self.eager = time.monotonic() - began < QUEUED_WITHIN  # a job was there already: more may be
            self.taking = result is not None and as_text(result[0]) != self.key  # while still `waiting`: no gap
        finally:
            self.waiting = None
        if result is None:
            raise DequeueTimeout(timeout, queue_keys)
        if as_text(result[0]) == self.key:
            return None
        return result

    def _pop_waiting(self, queue_keys: list[str], connection: Any) -> tuple[Any, Any] | None:
        """A waiting job popped and its hash read in one round trip: (queue key, job id), or None."""
        if self.pop_and_read is None:
            return None
        return self._popped(self.pop_and_read, queue_keys, connection)

    def _move_waiting(self, queue_key: str, blocking: Any) -> tuple[Any, Any] | None:
        """A waiting job moved to rq's intermediate list and its hash read in one round trip, or None."""
        if self.move_and_read is None:
            return None
        try:
            return self._popped(self.move_and_read, [queue_key, intermediate_of(queue_key)], blocking)
        except (ConnectionError, TimeoutError):
            self.cut_short()  # Redis may have moved a job whose id never reached this worker
            raise

    def _popped(self, script: Any, keys: list[str], client: Any) -> tuple[Any, Any] | None:
        """Run a pop-and-read script: (queue key, job id) with the job's hash kept for rq's fetch, or None."""
        try:
            found = script(keys=keys, args=[JOB_PREFIX], client=client)
        except ResponseError:  # the server or this user may not run scripts: blocking pops alone from now on
            self.pop_and_read = self.move_and_read = None
            return None
        if not found:
            self.eager = False
            return None
        queue_key, job_id, fields = found
        prefetched.keep(JOB_PREFIX + as_text(job_id), dict(zip(fields[::2], fields[1::2])))
        return queue_key, job_id

    def pop_move(self, queue_key: str, rq_lmove: Callable[[Any], Any], connection: Any) -> Any:
        """A job moved to rq's intermediate list: (queue key, job id), or None when stopped.

        A waiting job is taken by the script; otherwise rq's own BLMOVE waits,
        on the client ``blocking``, which a stop ends.
        """
        try:
            blocking = self._blocking_client(connection)
            if self.eager and not self.stopping:
                found = self._move_waiting(queue_key, blocking)
                if found is not None:
                    return found
            self.waiting = MOVE  # after the connect: a stop from here on finds a socket to shut
            if self.stopping:
                return None
            began = time.monotonic()
            result = rq_lmove(blocking)
            self.eager = time.monotonic() - began < QUEUED_WITHIN  # a job was there already: more may be
            return result
        except DequeueTimeout:
            if self.stopping:
                return None
            raise
        except (ConnectionError, TimeoutError):
            if self.waiting == MOVE:  # shut by a stop, or Redis lost in the wait: a moved job's reply may be lost
                self.cut_short()
            if self.stopping:
                return None
            raise
        finally:
            self.waiting = None

    def _blocking_client(self, connection: Any) -> Any:
        """This worker's connected client for BLMOVE: a copy of ``connection`` that never retries a command.

        redis-py (6+) would otherwise answer the shut socket by reconnecting
        and sending the BLMOVE again, which waits its whole timeout.
        """
        if self.blocking is None:
            copy = fresh_copy(connection, retry=Retry(NoBackoff(), 0))  # replaces any retry_on_error/_timeout too
            self.blocking = copy.client()  # one connection of its own (single_connection_client)
        self.blocking.connection.connect()  # no-op while connected; after a failure, a new socket
        return self.blocking


idle_wait = IdleWait()  # one per process: each worker arms its own copy after the fork


class WakeableQueueMixin:
    """A queue class whose blocking pops go through ``idle_wait`` once a worker armed it."""

    @classmethod
    def lpop(cls, queue_keys: Any, timeout: Any, connection: Any = None) -> Any:
        if timeout is None or idle_wait.key is None:
            return super().lpop(queue_keys, timeout, connection=connection)  # type: ignore[misc]
        return idle_wait.pop_list(list(queue_keys), timeout, connection)

    @classmethod
    def lmove(cls, connection: Any, queue_key: str, timeout: Any) -> Any:
        rq_lmove = super().lmove  # type: ignore[misc]
        if timeout is None or idle_wait.key is None:
            return rq_lmove(connection, queue_key, timeout)
        return idle_wait.pop_move(queue_key, lambda blocking: rq_lmove(blocking, queue_key, timeout), connection)


def wakeable_queue_class(queue_class: type[Queue]) -> type[Queue]:
    """The subclass of ``queue_class`` whose idle pops can be woken (one per class, cached; made in the master)."""
    return with_mixin(WakeableQueueMixin, queue_class)
