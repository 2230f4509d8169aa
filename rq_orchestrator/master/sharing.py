"""Make the master's memory cheap to share with the workers it forks.

Once the application is imported, before the first fork (in a burst run only
the first of these: it is over before the rest would pay off):

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
  master's memory (1.5 MB on a Frappe v15 bench); then the heap's remaining
  free chunks are taken, for the same reason as the free slots above (0.3 MB
  per idle worker there);
* the master lets go of the shared-library pages the start-up read: an
  application's extension modules (numpy's, pandas', a database driver's)
  run their initialisation code once, at import, and those pages would stay
  resident in the master for the pool's lifetime, counted in its memory and
  in no one else's. ``madvise(MADV_PAGEOUT)`` gives them back to the kernel;
  a page a worker or job needs later is read in again from the file, and
  then shared between the workers through the page cache. Only mappings that
  hold nothing but file pages are touched (no ``Anonymous`` pages: nothing
  that would go to swap), and only on Linux 5.4 or newer.

The allocator steps read CPython's own statistics and glibc's: each works on
CPython 3.10 to 3.13 with pymalloc and glibc 2.33+; where one cannot (another
interpreter or C library, ``PYTHONMALLOC``, ``-X dev``), the master says at
start, in one warning line, that it is off and why.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

from ..infra.memory import resident_memory

log = logging.getLogger("rq_orchestrator")

MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now


# What fills the allocators' free space, kept for the master's lifetime.
_FILLERS: list[object] = []
_TAKEN_CHUNKS: list[int] = []
MAX_CHUNKS = 100_000  # a bound on the free heap chunks taken (a Frappe master has about 5,000)


def settle_for_fork(thorough: bool = True) -> None:
    """Collect and freeze the garbage collector; unless told not to (a burst run), also everything else.

    A burst run is over before the memory the rest saves would matter, and the
    pages released would be read back as the master exits.
    """
    gc.collect()
    slots_off = pymalloc_off_reason() if thorough else None
    if thorough and slots_off is None:
        for _ in range(2):  # the first round's own temporaries open new pools: fill those too
            _FILLERS.extend(free_slot_fillers(free_slots_by_size()))
    gc.freeze()
    if not thorough:
        return
    for step, why in (("filling the small-object allocator's free slots", slots_off),
                      ("trimming the C heap and taking its free chunks", glibc_off_reason())):
        if why is not None:
            log.warning("memory sharing: %s is off: %s", step, why)
    trimmed = trim_malloc_heap()
    taken = take_free_heap_chunks()
    released = release_file_pages()
    log.debug("before forking: %.1f MB of the C heap returned to the system, %.1f MB of free chunks taken, "
              "%.1f MB of file pages released", trimmed / 2**20, taken / 2**20, released / 2**20)


# -- the C heap (glibc) ------------------------------------------------------
class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        libc.malloc_trim  # noqa: B018 - glibc has it; other C libraries may not
    except (OSError, AttributeError):  # not glibc (2.33+)
        return None
    return libc


def glibc_off_reason() -> str | None:
    """Why the C heap steps cannot run here, or None when they can."""
    if _glibc() is not None:
        return None
    return f"they need glibc 2.33 or newer (mallinfo2, malloc_trim), which this process ({sys.platform}) does not have"


def trim_malloc_heap() -> int:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); the bytes the resident set shrank by."""
    libc = _glibc()
    if libc is None:
        return 0
    before = resident_memory() or 0
    libc.malloc_trim(0)
    return max(before - (resident_memory() or before), 0)


def take_free_heap_chunks() -> int:
    """Allocate the C heap's free chunks (all but its top), and keep them; the bytes taken.

    Python objects over 512 bytes (large dicts' tables, lists, buffers) come
    from ``malloc``, which would place a worker's first ones in these chunks,
    on pages the workers share, copying them; with the chunks taken, they come
    from fresh memory at the top of the heap. Sizes are tried from 64 KiB
    (under glibc's least mmap threshold) down, halving; an allocation that
    came from anywhere but a free chunk is given back.
    """
    libc = _glibc()
    if libc is None:
        return 0
    first = libc.mallinfo2()
    size = 64 * 1024
    while size >= 16 and len(_TAKEN_CHUNKS) < MAX_CHUNKS:
        before = libc.mallinfo2()
        address = libc.malloc(size)
        after = libc.mallinfo2()
        if not address or after.keepcost < before.keepcost or after.arena != before.arena or after.hblks != before.hblks:
            libc.free(address)  # from the top of the heap, a new heap or mmap: not a free chunk
            size //= 2
            continue
        _TAKEN_CHUNKS.append(address)
    last = libc.mallinfo2()
    return max((first.fordblks - first.keepcost) - (last.fordblks - last.keepcost), 0)


# -- file pages --------------------------------------------------------------
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


def pymalloc_off_reason() -> str | None:
    """Why the free slots cannot be filled here, or None when they can."""
    if getattr(sys, "_debugmallocstats", None) is None or sys.implementation.name != "cpython":
        return f"it reads CPython's sys._debugmallocstats(), which {sys.implementation.name} does not have"
    setting = os.environ.get("PYTHONMALLOC", "")
    if "debug" in setting or sys.flags.dev_mode:
        return (f"the allocator's debug hooks are on ({f'PYTHONMALLOC={setting}' if setting else '-X dev'}): "
                "each block is larger than its object, so the fillers would not fit the slots")
    if not size_classes(debug_malloc_stats()):
        cause = f"PYTHONMALLOC={setting}" if setting else "a build without pymalloc, or a free-threaded one"
        return f"sys._debugmallocstats() shows no pymalloc size classes ({cause}): objects come from another allocator"
    return None


def free_slots_by_size() -> dict[int, int]:
    """Free blocks in CPython's partly used small-object pools, by block size ({} where it cannot tell)."""
    return {size: free for size, (_, free) in size_classes(debug_malloc_stats()).items()}


def debug_malloc_stats() -> str:
    """What ``sys._debugmallocstats()`` prints (to the C-level stderr), or "" where there is no such thing."""
    debug_stats = getattr(sys, "_debugmallocstats", None)
    if debug_stats is None or sys.implementation.name != "cpython":
        return ""
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            debug_stats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        return out.read().decode(errors="replace")


def size_classes(stats: str) -> dict[int, tuple[int, int]]:
    """{block size: (blocks in use, available blocks)} from ``sys._debugmallocstats()``'s table of size classes."""
    table = {}
    for line in stats.splitlines():
        fields = line.split()  # class, size, pools, blocks in use, available blocks
        if len(fields) == 5 and all(f.isdigit() for f in fields):
            table[int(fields[1])] = (int(fields[3]), int(fields[4]))
    return table


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
