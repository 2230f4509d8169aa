"""Memory of a process tree, as the kernel accounts it (Linux /proc)."""

from __future__ import annotations

import os
from collections.abc import Iterable


def proportional_set_size(pid: int) -> int | None:
    """PSS in bytes: private pages plus a fair share of pages shared with other processes."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def total_pss(pids: Iterable[int]) -> int | None:
    """Sum of PSS over processes and their children (a worker's job process); None without smaps_rollup."""
    sizes = [proportional_set_size(pid) for pid in with_children(pids)]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def with_children(pids: Iterable[int]) -> list[int]:
    """``pids`` and their direct children (``/proc/PID/task/PID/children``; none where the kernel does not list them)."""
    found: list[int] = []
    for pid in pids:
        found.append(pid)
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as children:
                found += [int(child) for child in children.read().split()]
        except (OSError, ValueError):
            pass
    return list(dict.fromkeys(found))


def resident_memory() -> int | None:
    """This process's resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
