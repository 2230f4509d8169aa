"""What the master does to its memory before forking (rq_orchestrator.master.sharing), on real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import child_env
from rq_orchestrator.master.sharing import free_slot_fillers, glibc_off_reason, pymalloc_off_reason, size_classes

# The head of `sys._debugmallocstats()`'s table (CPython 3.11), as it reads it.
STATS = """\
Small block threshold = 512, in 32 size classes.

class   size   num pools   blocks in use  avail blocks
-----   ----   ---------   -------------  ------------
    0     16           2             803           213
    1     32          21           10651           101
   31    512          40             275             5

# arenas allocated total           =                   31
"""


def test_the_blocks_of_each_size_class_are_read_from_the_allocator_statistics():
    assert size_classes(STATS) == {16: (803, 213), 32: (10651, 101), 512: (275, 5)}
    assert size_classes("no table here\n# arenas = 3\n") == {}


@pytest.mark.parametrize("size", range(16, 513, 16))
def test_each_filler_takes_a_block_of_the_size_it_is_made_for(size):
    fillers = free_slot_fillers({size: 3})
    assert len(fillers) == 3
    for filler in fillers:
        assert (sys.getsizeof(filler) + 15) // 16 * 16 == size


IN_USE = textwrap.dedent("""
    import json
    from rq_orchestrator.master.sharing import debug_malloc_stats, free_slot_fillers, free_slots_by_size, size_classes

    def in_use():
        return {size: used for size, (used, _) in size_classes(debug_malloc_stats()).items()}

    slots = free_slots_by_size()
    before = in_use()
    fillers = free_slot_fillers(slots)
    after = in_use()
    print(json.dumps({"slots": slots, "grown": {size: after[size] - before[size] for size in slots}}))
""")


def test_the_fillers_take_the_free_blocks_the_allocator_reported():
    result = subprocess.run([sys.executable, "-c", IN_USE], capture_output=True, text=True, env=child_env(), check=True)
    figures = json.loads(result.stdout)
    slots = {int(k): v for k, v in figures["slots"].items()}
    grown = {int(k): v for k, v in figures["grown"].items()}
    assert sum(slots.values()) > 100  # an interpreter that imported the package has partly used pools
    for size, free in slots.items():  # (a temporary freed meanwhile may give a block back)
        assert grown[size] >= free - 2, (size, free, grown[size])


TRIM = textwrap.dedent("""
    import json
    from rq_orchestrator.infra.memory import resident_memory
    from rq_orchestrator.master.sharing import trim_malloc_heap

    blocks = [bytes(2000) for _ in range(20000)]  # 40 MB from the C heap (over the small-object limit)
    pinned = bytes(2000)  # allocated last: the freed blocks below it stay inside the heap
    before = resident_memory()
    del blocks
    freed = resident_memory()
    trimmed = trim_malloc_heap()
    print(json.dumps({"before": before, "freed": freed, "trimmed": trimmed, "after": resident_memory()}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_free_memory_of_the_c_heap_goes_back_to_the_system():
    result = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, env=child_env(), check=True)
    figures = json.loads(result.stdout)
    assert figures["freed"] > figures["before"] - 8 * 2**20, figures  # freeing alone kept most of it resident
    assert figures["trimmed"] >= 30 * 2**20, figures
    assert figures["after"] <= figures["freed"] - 30 * 2**20, figures


TAKE = textwrap.dedent("""
    import json
    from rq_orchestrator.master.sharing import take_free_heap_chunks

    blocks = [bytes(2000) for _ in range(5000)]  # 10 MB from the C heap (over the small-object limit)
    pinned = bytes(2000)  # allocated last: the blocks freed below it leave free chunks inside the heap
    freed = [id(b) for b in blocks]
    del blocks
    reused = bytes(2000)  # without taking: malloc reuses a freed chunk
    taken = take_free_heap_chunks()
    fresh = bytes(2000)  # with the chunks taken: from the top of the heap, past everything freed
    print(json.dumps({"taken": taken, "reused_below_pin": id(reused) < id(pinned),
                      "fresh_above_freed": id(fresh) > max(freed), "fresh_above_pin": id(fresh) > id(pinned)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_after_the_free_heap_chunks_are_taken_new_memory_comes_from_the_top_of_the_heap():
    result = subprocess.run([sys.executable, "-c", TAKE], capture_output=True, text=True, env=child_env(), check=True)
    figures = json.loads(result.stdout)
    assert figures["reused_below_pin"], figures
    assert figures["taken"] >= 9 * 2**20, figures
    assert figures["fresh_above_freed"] and figures["fresh_above_pin"], figures


FRESH = textwrap.dedent("""
    import json
    from rq_orchestrator.infra.memory import resident_memory
    from rq_orchestrator.master import sharing

    libc = sharing._glibc()
    before, mapped = resident_memory(), libc.mallinfo2().hblks
    sharing.take_free_heap_chunks()
    print(json.dumps({"grown": resident_memory() - before, "chunks": len(sharing._TAKEN_CHUNKS),
                      "mapped": libc.mallinfo2().hblks - mapped}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_taking_the_free_chunks_never_maps_new_memory():
    # A fresh interpreter keeps glibc's default mmap threshold (128 KiB): an allocation
    # that size gets new memory, not a free chunk, and must not be kept (nor retried).
    result = subprocess.run([sys.executable, "-c", FRESH], capture_output=True, text=True, env=child_env(), check=True)
    figures = json.loads(result.stdout)
    assert figures["mapped"] == 0, figures
    assert figures["grown"] < 2 * 2**20, figures
    assert figures["chunks"] < 5000, figures


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.skipif("PYTHONMALLOC" in __import__("os").environ or sys.flags.dev_mode,
                    reason="the suite runs with another allocator set up (PYTHONMALLOC or -X dev)")
def test_every_allocator_step_is_on_for_this_python():
    # CPython 3.10-3.13 with pymalloc and glibc: the statistics parse and glibc answers.
    assert pymalloc_off_reason() is None
    assert glibc_off_reason() is None


@pytest.mark.parametrize(("setting", "why"), [("malloc", "PYTHONMALLOC=malloc"), ("pymalloc_debug", "debug hooks")])
def test_the_master_says_at_start_that_the_slots_are_not_filled_and_why(start_pool, monkeypatch, setting, why):
    monkeypatch.setenv("PYTHONMALLOC", setting)
    pool = start_pool("--num-workers", "1", "--no-prewarm")
    pool.wait_until(lambda: "started: pid" in pool.output(), 30, "the pool to start")
    head = pool.output().split("started: pid")[0]
    assert "memory sharing: filling the small-object allocator's free slots is off" in head
    assert why in head
    assert "C heap" not in head  # glibc's steps still run
