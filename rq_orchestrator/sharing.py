"""Make the master's memory cheap to share with the workers it forks.

Two things happen once the application is imported, before the first fork:

* the garbage collector is run and frozen: the objects imported so far move
  to a generation the collector never visits, so no collection in a worker
  writes to (and so copies) the pages holding them;
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
import sys
from collections.abc import Iterator

from .memory import resident_memory

log = logging.getLogger("rq_orchestrator")

MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now


def settle_for_fork(release_pages: bool = True) -> None:
    """Collect and freeze the garbage collector, then (unless told not to) release the start-up's file pages."""
    gc.collect()
    gc.freeze()
    if not release_pages:
        return
    released = release_file_pages()
    if released:
        log.debug("released %.1f MB of file pages read at start-up", released / 2**20)


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

