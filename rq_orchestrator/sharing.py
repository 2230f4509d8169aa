"""Make the master's memory cheap to share with the workers it forks.

Two things happen once the application is imported, before the first fork:

* the garbage collector is run and frozen: the objects imported so far move
  to a generation the collector never visits, so no collection in a worker
  writes to (and so copies) the pages holding them;
* the free slots left in CPython's small-object pools are filled: a new
  object in a worker (or in the master after a fork) would otherwise land in
  a slot on a page the workers share, and copy that page; with the slots
  taken, new objects go to fresh pools. On a Frappe v15 bench this saved
  0.3 MB of private memory per idle worker (benchmarks/README.md);
* the free pages of the C heap go back to the system (``malloc_trim``): what
  the start-up allocated and freed stays resident otherwise, counted in the
  master's memory (1.5 MB on a Frappe v15 bench);
* the master lets go of the shared-library pages the start-up read: an
  application's extension modules (numpy's, pandas', a database driver's)
  run their initialisation code once, at import, and those pages would stay
  resident in the master for the pool's lifetime, counted in its memory and
  in no one else's. ``madvise(MADV_PAGEOUT)`` gives them back to the kernel;
  a page a worker or job needs later is read in again from the file, and
  then shared between the workers through the page cache. Only mappings that
  hold nothing but file pages are touched (no ``Anonymous`` pages: nothing
  that would go to swap), and only on Linux 5.4 or newer.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

from .memory import resident_memory

log = logging.getLogger("rq_orchestrator")

MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now


# Objects that fill the allocator's free slots, kept for the master's lifetime.
_FILLERS: list[object] = []


def settle_for_fork(release_pages: bool = True) -> None:
    """Collect, fill the free slots, freeze the collector; then (unless told not to) release the file pages."""
    gc.collect()
    if release_pages:
        for _ in range(2):  # the first round's own temporaries open new pools: fill those too
            _FILLERS.extend(free_slot_fillers(free_slots_by_size()))
    gc.freeze()
    if not release_pages:
        return
    trimmed = trim_malloc_heap()
    if trimmed:
        log.debug("returned %.1f MB of free malloc memory to the system", trimmed / 2**20)
    released = release_file_pages()
    if released:
        log.debug("released %.1f MB of file pages read at start-up", released / 2**20)


def trim_malloc_heap() -> int:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); the bytes the resident set shrank by."""
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return 0
    before = resident_memory() or 0
    malloc_trim(0)
    return max(before - (resident_memory() or before), 0)


def release_file_pages(smaps: str = "/proc/self/smaps") -> int:
    """Page out this process's file-only mappings; the bytes its resident set shrank by (0 where unsupported)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        before = resident_memory() or 0
        for start, end in file_only_mappings(smaps):
            if madvise(start, end - start, MADV_PAGEOUT) != 0:
                return 0  # EINVAL: a kernel older than 5.4; nothing was released
        return max(before - (resident_memory() or before), 0)
    except (OSError, AttributeError, ValueError):
        return 0


def file_only_mappings(smaps: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each mapping of a file whose resident pages are all file pages."""
    mapping: tuple[int, int] | None = None
    with open(smaps) as lines:
        for line in lines:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):  # a mapping's header line
                start, end = (int(bound, 16) for bound in fields[0].split("-"))
                mapping = (start, end) if len(fields) >= 6 and fields[5].startswith("/") else None
            elif fields[0] == "Anonymous:" and mapping is not None:
                if fields[1] == "0":
                    yield mapping
                mapping = None



def free_slots_by_size() -> dict[int, int]:
    """Free blocks in CPython's partly used small-object pools, by block size ({} where it cannot tell)."""
    debug_stats = getattr(sys, "_debugmallocstats", None)
    if debug_stats is None or sys.implementation.name != "cpython":
        return {}
    with tempfile.TemporaryFile() as out:  # it writes to the C-level stderr
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            debug_stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return parse_free_slots(out.read().decode(errors="replace"))


def parse_free_slots(stats: str) -> dict[int, int]:
    """{block size: available blocks} from ``sys._debugmallocstats()``'s table of size classes."""
    slots = {}
    for line in stats.splitlines():
        fields = line.split()  # class, size, pools, blocks in use, available blocks
        if len(fields) == 5 and all(f.isdigit() for f in fields):
            slots[int(fields[1])] = int(fields[4])
    return slots


def free_slot_fillers(slots: dict[int, int]) -> list[object]:
    """Objects that take those free blocks: bytes sized to each block (plain objects and floats for the smallest)."""
    header = sys.getsizeof(b"")  # a bytes object's size with no data (its trailing NUL included)
    fillers: list[object] = []
    for size, count in slots.items():
        if size == sys.getsizeof(object()):
            fillers.extend(object() for _ in range(count))
        elif size == 32:
            fillers.extend(float(i) + 0.5 for i in range(count))
        elif size - header >= 2:  # bytes of length 0 and 1 are shared singletons, not allocated
            fillers.extend(bytes(size - header) for _ in range(count))
    return fillers
