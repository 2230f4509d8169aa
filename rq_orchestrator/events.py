"""The one-way channel from workers to their master.

Every worker writes short lines to a pipe the master reads. Each line is far
below PIPE_BUF, so writes from many workers never interleave. Timestamps are
CLOCK_MONOTONIC, which every process on the host shares, so the master's
busy-time ledger is exact to the job, not to a polling interval.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

READY = "ready"  # registered in Redis, about to take jobs
BUSY = "busy"  # took a job
IDLE = "idle"  # finished it
RECYCLE = "recycle"  # will exit after this job (max jobs or memory reached): start a replacement now
MAX_LINE = 4000  # < PIPE_BUF (4096 on Linux): one write() is atomic


@dataclass(frozen=True)
class Event:
    pid: int
    kind: str
    at: float
    job_id: str | None = None


def encode(event: Event) -> bytes:
    line = json.dumps([event.pid, event.kind, event.at, event.job_id], separators=(",", ":"))
    if len(line) >= MAX_LINE:
        line = json.dumps([event.pid, event.kind, event.at, (event.job_id or "")[:200]], separators=(",", ":"))
    return line.encode() + b"\n"


class EventWriter:
    """The worker's end: fire-and-forget lines to the master."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, job_id: str | None = None) -> None:
        try:
            os.write(self.fd, encode(Event(os.getpid(), kind, time.monotonic(), job_id)))
        except OSError:
            pass  # the master is gone: the parent-death check stops us soon enough


class EventReader:
    """The master's end: reassembles lines from a non-blocking pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""

    def read(self) -> list[Event]:
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = self._buffer + b"".join(chunks)
        *lines, self._buffer = data.split(b"\n")
        events = []
        for line in lines:
            try:
                pid, kind, at, job_id = json.loads(line)
            except ValueError:
                continue
            events.append(Event(int(pid), str(kind), float(at), job_id))
        return events
