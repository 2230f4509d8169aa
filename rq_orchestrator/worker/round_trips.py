"""Fewer of rq's round trips a job: its end in one script, and rq 2/3's execution transaction sent with the prepare one.

**The end.** When a job ends, rq (1.15 to 3.x) watches the job's dependents
set, reads it, and writes the job's end in a transaction that the watch
guards (a dependent added after the read would be left waiting): WATCH,
SMEMBERS and MULTI/EXEC, three round trips, for a set that is almost always
empty.

``OneTripMixin`` makes that pipeline optimistic: the WATCH is not sent, the
read of the watched set answers "empty" without asking, and at ``execute``
the queued commands run in one script (``WATCHED_ABSENT``) that first checks
the watched keys do not exist, which is what the answer assumed. If one
does, the script writes nothing and the pipeline raises ``WatchError``, the
error a changed watched key raises: rq's own loop runs again, and this time
the pipeline sends WATCH and SMEMBERS for real. Any other command while
"watching" sends the WATCH first, so every other use is rq's. Before that
second pass, the worker's and the job's attributes are put back as they were
before the first (``undo``): rq 2.x changes some in a pass (the execution it
deletes, the repeats left) and does not restore them on a ``WatchError``,
which in rq comes only from a dependent added at that very moment, and here
from every job that has one.

As with MULTI/EXEC, the script runs the commands in order with nothing
between them, goes on past a command that fails as it runs (a wrong type),
and the first failure is raised (as redis-py does). What MULTI refuses before
it runs anything (a key the ACL user may not touch; a write on Redis 6 over
its maxmemory) the script meets command by command, and writes the others:
rq's keys are all under Frappe's rq user's ``rq:[^q]*``, and Redis 7 runs the
script whole over maxmemory. A connection lost while it runs is a
``WatchError`` (what redis-py raises for a transaction under WATCH), so it is
never sent twice. A server that refuses the script (an ACL without
scripting, scripts disabled) gets rq's transaction from then on. The
replies are Redis's own, without redis-py's conversions (rq reads none).

**The start, without a fork.** rq 2/3 record a job's execution in a
transaction of its own, in the worker, and the work process prepares the
job in a second one. Where the job runs in the worker itself (``--no-fork``)
nothing happens between the two but Python, so the first is held
(``HoldMixin``) and its commands go at the head of the second
(``CarryMixin``): one MULTI/EXEC with both, as atomic as each was. Held
commands are for one job: the next job's prepare drops what a job that never
got to its own left.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from redis.exceptions import NoPermissionError, NoScriptError, ResponseError, WatchError

from .mixins import with_mixin

WATCHED_ABSENT = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then return false end
end
local replies, i = {}, 1
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  replies[#replies + 1] = redis.pcall(unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
return replies
"""
NOT_IN_A_SCRIPT = ("EVAL", "FCALL")  # scripts and functions: a script may not call them (nor MULTI/WATCH, never queued)
WATCHED_ABSENT_SHA = hashlib.sha1(WATCHED_ABSENT.encode()).hexdigest()  # as Redis names it


refused: weakref.WeakSet[Any] = weakref.WeakSet()  # connection pools whose server refused the script


class OneTripMixin:
    """A pipeline whose WATCH of an empty set, its read and its transaction go to Redis as one script."""

    _one_trip_keys: tuple[Any, ...] = ()  # watched here, not yet on the server
    _one_trip_tried = False  # one attempt a pipeline: after a WatchError, rq's loop gets the real thing
    undo: Callable[[], None] | None = None  # what rq's pass changed in Python, put back when the script wrote nothing

    def watch(self, *names: Any) -> Any:
        busy = self.watching or self.explicit_transaction  # type: ignore[attr-defined]
        if self._one_trip_tried or busy or self.connection_pool in refused:  # type: ignore[attr-defined]
            return super().watch(*names)  # type: ignore[misc]
        self._one_trip_keys, self.watching = names, True
        return True

    def reset(self) -> None:
        self._one_trip_keys = ()
        super().reset()  # type: ignore[misc]

    def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        keys = self._one_trip_keys
        if keys and args[0] == "SMEMBERS" and args[1:] == keys:  # the one watched set
            return set()  # what the script checks before it writes anything
        if keys:
            self._one_trip_keys, self.watching = (), False
            super().immediate_execute_command("WATCH", *keys)  # type: ignore[misc]
        return super().immediate_execute_command(*args, **options)  # type: ignore[misc]

    def execute(self, raise_on_error: bool = True) -> Any:
        keys = self._one_trip_keys
        if not keys:
            return super().execute(raise_on_error)  # type: ignore[misc]
        self._one_trip_keys, self._one_trip_tried = (), True
        stack = self.command_stack  # type: ignore[attr-defined]
        scripted = any(str(args[0]).upper().startswith(NOT_IN_A_SCRIPT) for args, _ in stack)
        if scripted or self.scripts:  # type: ignore[attr-defined]
            return self._watch_late(keys, raise_on_error)
        argv: list[Any] = []
        for args, _options in stack:
            argv += [len(args), *args]
        try:
            replies = self._one_trip_run(keys, argv)
        finally:
            self.watching = False  # nothing is watched on the server: no UNWATCH
            self.reset()  # type: ignore[attr-defined]
        if replies is None:
            self._refused("a watched key exists")
        failures = [reply for reply in replies if isinstance(reply, ResponseError)]
        if failures and raise_on_error:
            raise failures[0]
        return replies

    def _watch_late(self, keys: tuple[Any, ...], raise_on_error: bool) -> Any:
        """rq's transaction, for commands a script may not run: WATCH now, and the read answered "empty" checked."""
        self.watching = False
        super().immediate_execute_command("WATCH", *keys)  # type: ignore[misc]
        if super().immediate_execute_command("EXISTS", *keys):  # type: ignore[misc]
            self.reset()  # type: ignore[attr-defined]
            self._refused("a watched key exists")
        return super().execute(raise_on_error)  # type: ignore[misc]

    def _refused(self, why: str) -> NoReturn:
        """Nothing was written: undo the pass in Python too, and have rq's loop run it again."""
        if self.undo is not None:
            self.undo()
        raise WatchError(why)

    def _one_trip_run(self, keys: tuple[Any, ...], argv: list[Any]) -> Any:
        """The script's replies (None: a watched key exists); rq's transaction next if the server refuses it."""
        run = self.immediate_execute_command  # type: ignore[attr-defined]
        try:
            try:
                return run("EVALSHA", WATCHED_ABSENT_SHA, len(keys), *keys, *argv)
            except NoScriptError:
                return run("EVAL", WATCHED_ABSENT, len(keys), *keys, *argv)
        except ResponseError as exc:  # the script's own commands' failures are among its replies, not raised
            if isinstance(exc, NoPermissionError) or "unknown command" in str(exc):
                refused.add(self.connection_pool)  # type: ignore[attr-defined]
                self._refused(f"the server refused the script: {exc}")
            raise


class Held:
    """A transaction's commands held back in this process for the next one, and the job they are for."""

    def __init__(self) -> None:
        self.job_id: Any = None
        self.commands: list[Any] = []

    def take(self, job_id: Any) -> list[Any]:
        """The commands held for ``job_id`` (none if held for another job, which are dropped)."""
        commands = self.commands if job_id == self.job_id else []
        self.job_id, self.commands = None, []
        return commands


held = Held()  # one per process


class HoldMixin:
    """A transaction that sends nothing: its commands wait in ``held`` for the job's next transaction."""

    held_for: Any = None  # the job's id

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands = list(self.command_stack)  # type: ignore[attr-defined]
        if held.job_id != self.held_for:
            held.job_id, held.commands = self.held_for, []
        held.commands += commands
        self.reset()  # type: ignore[attr-defined]
        return [None] * len(commands)


class CarryMixin:
    """A transaction that sends the commands held for its job first, in the same MULTI/EXEC."""

    held_for: Any = None

    def execute(self, raise_on_error: bool = True) -> Any:
        self.command_stack[:0] = held.take(self.held_for)  # type: ignore[attr-defined]
        return super().execute(raise_on_error)  # type: ignore[misc]


def undo_of(*objects: Any) -> Callable[[], None]:
    """A function that gives ``objects`` back the attributes they have now (values, not their contents)."""
    saved = [(item, dict(vars(item))) for item in objects]

    def undo() -> None:
        for item, attributes in saved:
            vars(item).update(attributes)

    return undo


@contextmanager
def pipelines_of(client: Any, mixin: type, **attributes: Any) -> Iterator[None]:
    """Within the block, the pipelines ``client`` makes have ``mixin`` in front of their class (and ``attributes``)."""
    make, outer = client.pipeline, vars(client).get("pipeline")  # outer: an enclosing block's

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        made = make(*args, **kwargs)
        made.__class__ = with_mixin(mixin, type(made))
        made.__dict__.update(attributes)
        return made

    client.pipeline = pipeline
    try:
        yield
    finally:
        if outer is None:
            del client.pipeline
        else:
            client.pipeline = outer
