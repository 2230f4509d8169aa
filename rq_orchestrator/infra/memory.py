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
    """Sum of PSS over processes; None when the kernel offers no smaps_rollup."""
    sizes = [proportional_set_size(pid) for pid in pids]
    known = [size for size in sizes if size is not None]
    return sum(known) if known else None


def resident_memory() -> int | None:
    """This process's resident set size in bytes (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
