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

READY = "ready"  # registered in Redis, its signal handlers in: about to take jobs, a TERM now stops it warm
BUSY = "busy"  # took a job
IDLE = "idle"  # finished it
STRANDED = "stranded"  # a stop or a lost connection cut a BLMOVE short: a job may wait in rq's intermediate list
RECYCLE = "recycle"  # will exit after this job (max jobs or memory reached): start a replacement now
FAILED = "failed"  # the job that just ended did not finish (sent just before its IDLE)
STOPPED = "stopped"  # the job that just ended was stopped on request (rq's stop-job; sent just before its IDLE)
MODULE = "module"  # sent by a job's process after the job: it had to import the job's module (in job_id: its name)
MAX_LINE = 4000  # < PIPE_BUF (4096 on Linux): one write() is atomic


@dataclass(frozen=True)
class Event:
    pid: int
    kind: str
    at: float
    job_id: str | None = None  # BUSY/IDLE: the job; RECYCLE: the reason
    timeout: float | None = None  # BUSY: the job's timeout in seconds (None: none known, -1: unlimited)


def encode(event: Event) -> bytes:
    fields = [event.pid, event.kind, event.at, event.job_id, event.timeout]
    line = json.dumps(fields, separators=(",", ":"))
    if len(line) >= MAX_LINE:
        fields[3] = (event.job_id or "")[:200]
        line = json.dumps(fields, separators=(",", ":"))
    return line.encode() + b"\n"


class EventWriter:
    """The worker's end: fire-and-forget lines to the master."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pid = os.getpid()  # the worker's, also when its job's process writes (it is a fork of the worker)

    def send(self, kind: str, job_id: str | None = None, timeout: float | None = None) -> None:
        try:
            os.write(self.fd, encode(Event(self.pid, kind, time.monotonic(), job_id, timeout)))
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
                pid, kind, at, job_id, timeout = json.loads(line)
            except ValueError:
                continue
            events.append(Event(int(pid), str(kind), float(at), job_id, timeout))
        return events


def drain(fd: int) -> None:
    """Read and drop whatever a non-blocking pipe holds."""
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
