"""Where a forked worker's private memory comes from, word by word.

A forked worker shares every page with its master until one of them writes
to it; Linux then copies that page for the writer (copy-on-write). This script
finds the pages a worker copied and which Python objects the changed bytes
belong to:

1. It plays the master: imports the application, then prepares to fork as our
   pool does, by running its ``Pool._setup``: the pre-fork rehearsal of a
   worker (``rq_orchestrator.master.prewarm``, on by default as in the pool; skipped
   with ``--pool ours-no-prewarm``), then ``gc.collect()``, ``gc.freeze()`` and
   the release of the start-up's file pages (``rq_orchestrator.master.sharing``);
   or as rq's ``WorkerPool`` does (``--pool rq``).
2. It forks a *twin* that stops itself at once, so its pages keep the contents
   they had at the fork, and an *indexer* that records the address, extent
   and type of every object it can reach (``gc.get_objects()`` and what they
   refer to) into a file, so the master's own heap is left as it was.
3. It starts one worker (our pool's fork path, ``Pool._spawn``, which builds the
   worker's Redis client before the fork; or rq's ``WorkerPool``), lets it
   sit idle or run jobs, then compares the worker's pages with the twin's
   (``/proc/PID/pagemap`` frame numbers, ``/proc/PID/mem`` contents).
4. Each changed 8-byte word is attributed to the object it lies in (its
   reference count, its GC header, a code object's specialized bytecode, other
   fields) or to memory that held no indexed object at the fork (dict and list
   storage, free blocks that new objects took, allocator and interpreter
   state). A copied page is shared equally among the causes found on it.

Linux only, needs root (or ptrace rights over its own children).

    PYTHONPATH=. python benchmarks/cow_report.py --pool ours --jobs 0
    PYTHONPATH=. python benchmarks/cow_report.py --pool ours-no-prewarm --jobs 250
    PYTHONPATH=. python benchmarks/cow_report.py --pool rq
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import faulthandler
import gc
import importlib
import json
import os
import reprlib
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    RESULTS,
    descendants,
    enqueue_noops,
    finished_jobs,
    machine_facts,
    private_mb,
    redis_server,
    wait_for,
    write_json,
)

PAGE = os.sysconf("SC_PAGE_SIZE")
WORD = 8
PRESENT = 1 << 63
PFN_MASK = (1 << 55) - 1
MANAGED_DICT = 1 << 4  # Py_TPFLAGS_MANAGED_DICT (3.11+): two more words before the GC header
GC_HEADER = 16
CODE_BYTECODE_AT = type((lambda: 0).__code__).__basicsize__  # co_code_adaptive starts here (3.11+)
SEPARATE_STORAGE = (dict, list, set, frozenset, bytearray)  # their sizeof counts storage allocated elsewhere
DICT_KEYS, LIST_STORAGE, SET_TABLE = "dict keys table", "list storage", "set table"
UNINDEXED = "no indexed object (new objects in free blocks, other storage)"
ANON = "anonymous (pymalloc arenas, large allocations)"
POOL_SIZE, POOL_HEADER = 16 * 1024, 48  # pymalloc pools of CPython 3.10+ on 64-bit, and their header


# -- the object index (built in a forked copy of the master) ----------------
@dataclass
class ObjectIndex:
    starts: np.ndarray  # first byte, headers included
    addrs: np.ndarray  # id(obj)
    ends: np.ndarray
    types: np.ndarray  # index into type_names
    owners: np.ndarray  # id() of the object (for storage: of the dict, list or set it belongs to)
    type_names: list[str]

    def locate(self, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each address, the index of the object holding it, and whether one does."""
        at = np.searchsorted(self.starts, words, side="right") - 1
        inside = (at >= 0) & (words < self.ends[np.maximum(at, 0)])
        return at, inside

    def save(self, path: Path) -> None:
        np.savez(path, starts=self.starts, addrs=self.addrs, ends=self.ends, types=self.types, owners=self.owners,
                 type_names=np.array(self.type_names))

    @classmethod
    def load(cls, path: Path) -> ObjectIndex:
        data = np.load(path)
        return cls(data["starts"], data["addrs"], data["ends"], data["types"], data["owners"],
                   [str(t) for t in data["type_names"]])


def reachable_objects() -> Iterator[Any]:
    """Every GC-tracked object, plus the untracked ones they refer to (strings, numbers, code, types...)."""
    tracked = gc.get_objects()
    seen: set[int] = set()
    pending: list[Any] = []
    for obj in tracked:
        yield obj
        for ref in (*gc.get_referents(obj), type(obj)):
            if not gc.is_tracked(ref) and id(ref) not in seen:
                seen.add(id(ref))
                pending.append(ref)
    while pending:
        obj = pending.pop()
        yield obj
        for ref in gc.get_referents(obj):
            if not gc.is_tracked(ref) and id(ref) not in seen:
                seen.add(id(ref))
                pending.append(ref)


def extent(obj: Any) -> tuple[int, int, int]:
    """(first byte, id, end) of an object, its headers included."""
    kind = type(obj)
    try:
        size = kind.__basicsize__ if isinstance(obj, SEPARATE_STORAGE) else object.__sizeof__(obj)
    except TypeError:
        size = kind.__basicsize__
    head = 0
    if gc.is_tracked(obj) or isinstance(obj, type):
        head = GC_HEADER + (2 * WORD if kind.__flags__ & MANAGED_DICT else 0)
    return id(obj) - head, id(obj), id(obj) + max(size, WORD)


def storage(obj: Any) -> tuple[str, int, int] | None:
    """(kind, address, size) of the separately allocated storage of a dict, list or set (CPython 3.11 layouts)."""
    addr = id(obj)
    if type(obj) is dict:
        keys = ctypes.c_void_p.from_address(addr + 32).value  # ma_keys
        if not keys:
            return None
        log2_size, log2_index_bytes, kind = (ctypes.c_uint8.from_address(keys + i).value for i in (8, 9, 10))
        entry = 24 if kind == 0 else 16  # DICT_KEYS_GENERAL: hash, key, value; else key, value
        return DICT_KEYS, keys, 32 + (1 << log2_index_bytes) + (2 << log2_size) // 3 * entry
    if type(obj) is list:
        items = ctypes.c_void_p.from_address(addr + 24).value  # ob_item
        allocated = ctypes.c_ssize_t.from_address(addr + 32).value
        return (LIST_STORAGE, items, allocated * WORD) if items and allocated else None
    if type(obj) in (set, frozenset):
        mask = ctypes.c_ssize_t.from_address(addr + 32).value
        table = ctypes.c_void_p.from_address(addr + 40).value
        inline = addr + type(obj).__basicsize__ - 8 * 16  # smalltable: the last 8 entries of the object
        return (SET_TABLE, table, (mask + 1) * 16) if table and table != inline else None
    return None


def build_index(keep: list[Any]) -> ObjectIndex:
    """Index every reachable object; ``keep`` holds them, so the addresses stay valid in this process."""
    gc.unfreeze()  # get_objects() does not list the permanent generation
    names: dict[Any, int] = {}
    rows: list[tuple[int, int, int, int, int]] = []
    for obj in reachable_objects():
        keep.append(obj)
        start, addr, end = extent(obj)
        rows.append((start, addr, end, names.setdefault(type(obj), len(names)), addr))
        extra = storage(obj)
        if extra is not None:
            kind, where, size = extra
            rows.append((where, where, where + size, names.setdefault(kind, len(names)), addr))
    table = np.array(rows, dtype=np.uint64)
    _, first = np.unique(table[:, 0], return_index=True)  # sorted by start; keys shared by many dicts once
    starts, addrs, ends, types, owners = (table[first, i] for i in range(5))
    type_names = [t if isinstance(t, str) else _type_name(t) for t in names]
    return ObjectIndex(starts, addrs, ends, types.astype(np.int32), owners, type_names)


def _type_name(kind: type) -> str:
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


# -- pages -----------------------------------------------------------------
def writable_private_ranges(pid: int) -> list[tuple[int, int, str]]:
    ranges = []
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split()
            if "w" in fields[1] and "p" in fields[1]:
                low, high = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((low, high, fields[5] if len(fields) > 5 else ""))
    return ranges


def map_count(frame: int) -> int:
    """How many page tables map this physical page (/proc/kpagecount)."""
    with open("/proc/kpagecount", "rb", buffering=0) as counts:
        return int.from_bytes(os.pread(counts.fileno(), 8, frame * 8), "little")


def frame_numbers(pid: int, low: int, high: int) -> np.ndarray:
    """Page frame numbers of [low, high) in pid, 0 where a page is not present."""
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
        raw = os.pread(pagemap.fileno(), (high - low) // PAGE * 8, low // PAGE * 8)
    entries = np.frombuffer(raw, dtype=np.uint64)
    present = (entries & np.uint64(PRESENT)) != 0
    return np.where(present, entries & np.uint64(PFN_MASK), 0)


@dataclass
class PageDiff:
    copied: list[int]  # pages present in both with different frames: the worker copied them
    copied_in: list[str]  # the mapping of each copied page
    new: int  # pages present in the worker only
    copied_by_mapping: Counter[str]
    new_by_mapping: Counter[str]


def mapping_kind(name: str, size: int) -> str:
    if name in ("[heap]", "[stack]"):
        return name
    if name:
        return Path(name).name
    return ANON


def diff_pages(worker: int, twin: int) -> PageDiff:
    """Compare the worker's pages with the twin's (fork time) and this process's (the master, now)."""
    copied: list[int] = []
    copied_in: list[str] = []
    new = 0
    copied_by, new_by = Counter[str](), Counter[str]()
    for low, high, name in writable_private_ranges(worker):
        mine = frame_numbers(worker, low, high)
        theirs = frame_numbers(twin, low, high)  # unmapped pages read as not present
        kind = mapping_kind(name, high - low)
        # Copied by the worker: a frame of its own (mapped once), not the one the twin kept from the fork.
        # (A master that rewrites its pages after the forks, as rq's does when its collector runs, leaves
        # the worker and the twin on different frames that are still shared: those are not the worker's.)
        candidates = np.nonzero((mine != 0) & (theirs != 0) & (mine != theirs))[0]
        changed = [i for i in candidates if map_count(int(mine[i])) == 1]
        fresh = int(np.count_nonzero((mine != 0) & (theirs == 0)))
        copied.extend(low + int(i) * PAGE for i in changed)
        copied_in.extend([kind] * len(changed))
        new += fresh
        copied_by[kind] += len(changed)
        new_by[kind] += fresh
    return PageDiff(copied, copied_in, new, copied_by, new_by)


def changed_words(worker: int, twin: int, pages: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    with open(f"/proc/{worker}/mem", "rb", buffering=0) as mine, open(f"/proc/{twin}/mem", "rb", buffering=0) as theirs:
        for page in pages:
            a = np.frombuffer(os.pread(mine.fileno(), PAGE, page), dtype=np.uint64)
            b = np.frombuffer(os.pread(theirs.fileno(), PAGE, page), dtype=np.uint64)
            yield page, page + np.nonzero(a != b)[0].astype(np.uint64) * WORD


def word_causes(index: ObjectIndex, words: np.ndarray, examples: dict[str, set[int]] | None = None) -> list[str]:
    at, inside = index.locate(words)
    causes = []
    for word, i, ok in zip(words, at, inside):
        if not ok:
            causes.append(UNINDEXED)
            continue
        cause = _cause_of(index, int(word), int(i))
        if examples is not None:
            examples.setdefault(cause, set()).add(int(index.owners[i]))
        causes.append(cause)
    return causes


def _cause_of(index: ObjectIndex, word: int, i: int) -> str:
    name = index.type_names[index.types[i]]
    offset = word - int(index.addrs[i])
    if name == DICT_KEYS:
        return "dict keys: refcount (keys shared by instances)" if offset < WORD else \
            "dict keys: header (version, usable)" if offset < 32 else "dict keys: table"
    if name in (LIST_STORAGE, SET_TABLE):
        return f"storage: {name}"
    if offset < 0:
        return "GC header"
    if offset < WORD:
        return f"refcount: {name}"
    if name == "code":
        return "code: specialized bytecode" if offset >= CODE_BYTECODE_AT else "code: other fields"
    return f"fields: {name}"


@dataclass
class Attribution:
    kib_by_cause: Counter[str]
    sole_kib_by_cause: Counter[str]  # pages where this was the only cause
    restored_kib_by_type: Counter[str]  # copied pages whose words all came back (refcount up, then down)
    examples: dict[str, set[int]]  # addresses of objects behind each cause


def attribute(index: ObjectIndex, worker: int, twin: int, pages: PageDiff) -> Attribution:
    shares, sole, restored = Counter[str](), Counter[str](), Counter[str]()
    examples: dict[str, set[int]] = {}
    kib = PAGE / 1024
    for (page, words), mapping in zip(changed_words(worker, twin, pages.copied), pages.copied_in):
        causes = Counter(unindexed_cause(mapping, int(w)) if c == UNINDEXED else c
                         for c, w in zip(word_causes(index, words, examples), words))
        if not causes:
            restored.update({k: kib * v for k, v in page_contents(index, page).items()})
            continue
        groups = Counter(_group(c) for c in causes.elements())
        for cause in groups:
            shares[cause] += kib / len(groups)
        if len(groups) == 1:
            sole[next(iter(groups))] += kib
        for cause in causes:
            shares[f"  {cause}"] += kib * causes[cause] / sum(causes.values())
    return Attribution(shares, sole, restored, examples)


def page_contents(index: ObjectIndex, page: int) -> dict[str, float]:
    """Which types fill a page, as fractions of it (the rest: no indexed object)."""
    low = max(int(np.searchsorted(index.starts, page, side="right")) - 1, 0)
    high = int(np.searchsorted(index.starts, page + PAGE, side="left"))
    share: Counter[str] = Counter()
    for i in range(low, high):
        overlap = min(int(index.ends[i]), page + PAGE) - max(int(index.starts[i]), page)
        if overlap > 0:
            share[index.type_names[index.types[i]]] += overlap / PAGE
    covered = sum(share.values())
    if covered < 1:
        share[UNINDEXED] += 1 - covered
    return share


def unindexed_cause(mapping: str, word: int) -> str:
    """What a changed word outside every indexed object probably is, from where it lies."""
    if mapping.startswith("libpython"):
        return "interpreter: static state in libpython (small ints, static strings and types, caches)"
    if mapping.startswith(ANON) and word % POOL_SIZE < POOL_HEADER:
        return "allocator: pymalloc pool header (block counts, free list)"
    if mapping.startswith(ANON) or mapping == "[heap]":
        return f"{UNINDEXED}: {'pymalloc arenas' if mapping.startswith(ANON) else 'malloc heap'}"
    return f"{UNINDEXED}: {mapping}"


def _group(cause: str) -> str:
    return cause.split(":")[0] if ":" in cause else cause


# -- the scenarios -----------------------------------------------------------
def fork_twin() -> int:
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    os.waitpid(pid, os.WUNTRACED)
    return pid


@dataclass
class Indexer:
    """A copy of the master at the fork that indexes its objects, then describes the ones asked about."""

    pid: int
    go: int  # write end of a pipe: one byte when requests.json is ready (the workers inherit it too: no EOF)
    directory: Path

    @classmethod
    def fork(cls, directory: Path) -> Indexer:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(write_end)
                faulthandler.enable()
                keep: list[Any] = []
                build_index(keep).save(directory / "partial.npz")
                os.rename(directory / "partial.npz", directory / "index.npz")
                os.read(read_end, 1)
                asked = json.loads((directory / "requests.json").read_text())
                answers = {cause: describe_objects(addrs) for cause, addrs in asked.items()}
                (directory / "examples.json").write_text(json.dumps(answers))
                status = 0
            except BaseException:  # noqa: BLE001 - a forked copy: report, then _exit below
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(read_end)
        return cls(pid, write_end, directory)

    def index(self) -> ObjectIndex:
        wait_for(lambda: (self.directory / "index.npz").exists(), 300, "the object index", interval=0.2)
        return ObjectIndex.load(self.directory / "index.npz")

    def describe(self, examples: dict[str, list[int]]) -> dict[str, list[str]]:
        (self.directory / "requests.json").write_text(json.dumps(examples))
        os.write(self.go, b"!")
        os.waitpid(self.pid, 0)
        return json.loads((self.directory / "examples.json").read_text())


def prepare_ours(url: str, queue: str, prewarm: bool) -> tuple[Callable[[], int], Callable[[], None]]:
    """Prepare as our master does (`Pool._setup`: prewarm unless off, GC freeze, file pages released).

    Returns (fork one worker through `Pool._spawn`, drain its events).
    """
    from rq_orchestrator.infra.config import GroupSpec, PoolConfig
    from rq_orchestrator.infra.connection import from_url
    from rq_orchestrator.master.pool import Pool

    config = PoolConfig(groups=(GroupSpec((queue,), 1, 1),), with_scheduler=False, prewarm=prewarm)
    pool = Pool(config, from_url(url))
    pool._setup()

    def spawn() -> int:
        pool._spawn(pool.groups[0])
        return next(iter(pool._owner))

    return spawn, pool._read_events


def prepare_rq(url: str, queue: str) -> tuple[Callable[[], int], Callable[[], None]]:
    """Prepare as rq's WorkerPool does (no GC freeze); its worker is forked by its ForkProcess."""
    from redis import Redis
    from rq.logutils import setup_loghandlers
    from rq.worker_pool import WorkerPool

    pool = WorkerPool([queue], connection=Redis.from_url(url), num_workers=1)
    setup_loghandlers("INFO", name="rq.worker_pool")

    def spawn() -> int:
        pool.start_worker(burst=False, logging_level="INFO")
        return next(iter(pool.worker_dict.values())).pid

    return spawn, lambda: None


def run(args: argparse.Namespace) -> dict[str, Any]:
    importlib.import_module(args.app)
    with redis_server() as server, tempfile.TemporaryDirectory() as tmp:
        client = server.client()
        queue = "cow"
        if args.pool == "rq":
            spawn, drain = prepare_rq(server.url, queue)
        else:
            spawn, drain = prepare_ours(server.url, queue, prewarm=args.pool == "ours")
        twin = fork_twin()
        indexer = Indexer.fork(Path(tmp))
        worker = spawn()
        try:
            wait_for(lambda: drain() or client.scard("rq:workers") >= 1, 30, "the worker to register")
            if args.jobs:
                enqueue_noops(client, queue, args.jobs)
                wait_for(lambda: drain() or finished_jobs(client, queue) >= args.jobs, 300, "the jobs")
            time.sleep(args.settle)
            drain()
            index = indexer.index()
            pages = diff_pages(worker, twin)
            attribution = attribute(index, worker, twin, pages)
            return {
                "pool": args.pool,
                "jobs": args.jobs,
                "worker_uss_mb": round(private_mb(worker), 2),
                "copied_pages_kib": len(pages.copied) * PAGE // 1024,
                "new_pages_kib": pages.new * PAGE // 1024,
                "copied_kib_by_mapping": {k: v * PAGE // 1024 for k, v in pages.copied_by_mapping.most_common()},
                "new_kib_by_mapping": {k: v * PAGE // 1024 for k, v in pages.new_by_mapping.most_common()},
                "copied_kib_by_cause": _rounded(attribution.kib_by_cause),
                "copied_kib_sole_cause": _rounded(attribution.sole_kib_by_cause),
                "restored_kib_by_type": _rounded(attribution.restored_kib_by_type),
                "indexed_objects": len(index.starts),
                "examples": indexer.describe({cause: _spread(sorted(addrs), args.examples)
                                              for cause, addrs in attribution.examples.items()}),
                "objects_by_cause": {cause: len(addrs) for cause, addrs in attribution.examples.items()},
            }
        finally:
            for pid in descendants([worker]) + [twin, indexer.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _spread(items: list[int], count: int) -> list[int]:
    return items[:: max(len(items) // count, 1)][:count] if count else []


def describe_objects(addresses: list[int]) -> list[str]:
    """Short descriptions of the objects at ``addresses`` (alive in the indexer, as at the fork)."""
    return [_describe(ctypes.cast(a, ctypes.py_object).value) for a in addresses]


def _describe(obj: Any) -> str:
    if hasattr(obj, "co_qualname"):
        return f"code {obj.co_qualname} ({Path(obj.co_filename).name}:{obj.co_firstlineno})"
    if hasattr(obj, "__qualname__") and hasattr(obj, "__module__"):
        return f"{type(obj).__name__} {obj.__module__}.{obj.__qualname__}"
    return f"{type(obj).__name__} {reprlib.repr(obj)}"


def _rounded(counter: Counter[str]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))}


def print_report(result: dict[str, Any], top: int) -> None:
    print(f"worker USS {result['worker_uss_mb']} MB: copied pages {result['copied_pages_kib']} KiB, "
          f"new pages {result['new_pages_kib']} KiB")
    for what in ("copied", "new"):
        by_mapping = ", ".join(f"{k} {v}" for k, v in result[f"{what}_kib_by_mapping"].items() if v)
        print(f"{what} KiB, by mapping: {by_mapping}")
    print(f"{'cause of the copies':<70} {'KiB':>8} {'sole':>8}")
    causes = result["copied_kib_by_cause"]
    for cause, kib in [(c, k) for c, k in causes.items() if not c.startswith("  ")][:top]:
        print(f"{cause:<70} {kib:>8.0f} {result['copied_kib_sole_cause'].get(cause, 0):>8.0f}")
    print("  detail (KiB, weighted by changed words):")
    for cause, kib in [(c, k) for c, k in causes.items() if c.startswith("  ")][:top]:
        print(f"  {cause.strip():<68} {kib:>8.1f}")
    restored = result["restored_kib_by_type"]
    print(f"copied pages whose words all came back (written, then restored): {sum(restored.values()):.0f} KiB; "
          "what fills them (KiB):")
    for name, kib in list(restored.items())[:top]:
        print(f"  {name:<68} {kib:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=("ours", "ours-no-prewarm", "rq"), default="ours",
                        help="our pool as it starts by default (with prewarm), our pool with prewarm off "
                             "(--no-prewarm), or rq's WorkerPool")
    parser.add_argument("--jobs", type=int, default=0, help="no-op jobs the worker runs before the comparison")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds idle before the comparison")
    parser.add_argument("--app", default="benchmarks.heavy_app")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--examples", type=int, default=0, help="describe this many objects per cause (JSON)")
    parser.add_argument("--json", type=Path, default=None, help=f"write here (default {RESULTS}/cow-*.json)")
    args = parser.parse_args()
    result = run(args)
    result["machine"] = machine_facts()
    print_report(result, args.top)
    name = f"cow-{args.pool}-{args.jobs}jobs.json"
    write_json(args.json or RESULTS / name, result)


if __name__ == "__main__":
    sys.exit(main())
