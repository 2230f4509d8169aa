"""A shared page through which the master hands a worker an rq command (stop-job, kill-horse) that SIGUSR1 announces.

A signal carries no payload, and a worker may have moved on to another job
by the time it arrives, so the master writes the command and its job id into
the worker's slot of a shared anonymous mapping (made before the first fork,
so every worker sees the master's writes), then sends SIGUSR1; the worker's
handler reads and clears its slot and acts only if the job id is the job it
runs. No Redis and no lock is touched in the handler.
"""

from __future__ import annotations

import mmap
import signal

SIGNAL = signal.SIGUSR1
SLOT_BYTES = 256
STOP_JOB, KILL_HORSE = "stop-job", "kill-horse"
COMMANDS = (STOP_JOB, KILL_HORSE)


class Mailbox:
    """``slots`` slots of SLOT_BYTES in one shared mapping; the master hands them out, one per live worker."""

    def __init__(self, slots: int) -> None:
        self._map = mmap.mmap(-1, max(slots, 1) * SLOT_BYTES)  # MAP_SHARED | MAP_ANONYMOUS
        self._free = list(range(max(slots, 1) - 1, -1, -1))

    # -- the master's side ------------------------------------------------
    def take(self) -> int | None:
        """A free slot for a worker about to be forked, emptied; None when all are in use."""
        if not self._free:
            return None
        index = self._free.pop()
        self._write(index, b"")
        return index

    def give_back(self, index: int) -> None:
        self._free.append(index)

    def post(self, index: int, command: str, job_id: str = "") -> None:
        """Leave ``command`` (for ``job_id``) in a worker's slot; send SIGNAL to it next."""
        self._write(index, f"{command} {job_id}".encode()[: SLOT_BYTES - 1])

    # -- the worker's side ------------------------------------------------
    def read(self, index: int) -> tuple[str, str] | None:
        """Take the command left in slot ``index``: (command, job id), or None if none (or unreadable) is there."""
        start = index * SLOT_BYTES
        raw = self._map[start:start + SLOT_BYTES].split(b"\0", 1)[0]
        self._write(index, b"")
        command, _, job_id = raw.decode(errors="replace").partition(" ")
        return (command, job_id) if command in COMMANDS else None

    def _write(self, index: int, data: bytes) -> None:
        start = index * SLOT_BYTES
        self._map[start:start + SLOT_BYTES] = data.ljust(SLOT_BYTES, b"\0")
