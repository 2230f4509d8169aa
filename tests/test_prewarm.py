"""The master's pre-fork rehearsal (prewarm) and the release of start-up file pages, on real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

from rq import Queue, Worker

from conftest import child_env
from jobs import mark_path
from rq_orchestrator.master.sharing import file_only_mappings
from test_pool import FAST, finished


def test_the_master_rehearses_a_worker_before_forking(start_pool, redis):
    pool = start_pool("--num-workers", "2", *FAST)
    jobs = [Queue(connection=redis).enqueue("jobs.noop") for _ in range(4)]
    pool.wait_until(lambda: finished(jobs), 20, "the jobs")
    assert "prewarm: 10 rehearsal rounds of a worker in the master took" in pool.output()
    # The rehearsal ran against a private server: nothing of it is in the pool's Redis.
    assert all(not w.name.startswith("rehearsal-") for w in Worker.all(connection=redis))
    assert not [k for k in redis.keys("*") if b"rehearsal" in k]


def test_no_prewarm_starts_workers_without_a_rehearsal(start_pool, redis):
    pool = start_pool("--num-workers", "1", "--no-prewarm", *FAST)
    job = Queue(connection=redis).enqueue("jobs.noop")
    pool.wait_until(lambda: finished([job]), 20, "the job")
    assert "prewarm" not in pool.output()


def test_a_worker_class_that_fails_the_rehearsal_still_gets_a_pool(start_pool, redis):
    # BrokenWorker cannot register: the rehearsal fails, is logged, and the pool goes on
    # (and then stops, because its real workers cannot start either).
    pool = start_pool("--num-workers", "1", "--worker-class", "jobs.BrokenWorker", *FAST)
    assert pool.wait(30) == 1
    output = pool.output()
    assert "prewarm skipped, workers start cold: RuntimeError: cannot register" in output
    assert "workers fail at start-up" in output


def test_a_stop_during_the_rehearsal_is_not_lost(start_pool, redis):
    pool = start_pool("--num-workers", "2", "--worker-class", "jobs.SlowRehearsal", *FAST)
    mark = mark_path("rehearsal", pool.pid)
    try:
        pool.wait_until(lambda: os.path.exists(mark), 20, "the rehearsal to start")
        pool.send(signal.SIGTERM)  # the rehearsal's worker has its own handlers now
        assert pool.wait(30) == 0
    finally:
        if os.path.exists(mark):
            os.remove(mark)
    assert Worker.all(connection=redis) == []
    assert "started with PID" not in pool.output()  # no worker was forked
    assert "prewarm: stopped after 1 of 10 rehearsal rounds" in pool.output()  # not all ten: answered early


RELEASE = textwrap.dedent("""
    import json, mmap, sys
    from rq_orchestrator.master.sharing import release_file_pages

    path = sys.argv[1]

    def resident_kb():
        lines = open("/proc/self/smaps").read().splitlines()
        for i, line in enumerate(lines):
            if line.endswith(path):
                return next(int(l.split()[1]) for l in lines[i + 1:] if l.startswith("Rss:"))

    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        first = sum(m[i] for i in range(0, len(m), 4096))  # read every page
        before = resident_kb()
        released = release_file_pages()
        after = resident_kb()
        again = sum(m[i] for i in range(0, len(m), 4096))
    print(json.dumps({"before": before, "after": after, "released": released, "same": first == again}))
""")


def test_file_pages_read_at_start_up_are_released_and_read_again_when_needed(tmp_path):
    data = tmp_path / "library.bin"
    data.write_bytes(bytes(range(256)) * 4096 * 8)  # 8 MiB, as an extension module's pages would be
    result = subprocess.run([sys.executable, "-c", RELEASE, str(data)], capture_output=True, text=True,
                            env=child_env(), check=True)
    figures = json.loads(result.stdout)
    assert figures["before"] >= 8 * 1024 - 64
    assert figures["after"] <= 256, figures
    assert figures["released"] >= 7 * 2**20, figures
    assert figures["same"]


SMAPS = """\
00400000-00401000 r-xp 00000000 fe:00 123 /usr/lib/libcode.so
Rss:                   4 kB
Anonymous:             0 kB
00600000-00602000 r--p 00001000 fe:00 123 /usr/lib/libcode.so
Rss:                   8 kB
Anonymous:             8 kB
00700000-00800000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f0000000000-7f0000100000 r--p 00000000 fe:00 456 /data/app.db
Rss:                  12 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Anonymous:            16 kB
"""


def test_only_mappings_of_files_with_no_anonymous_pages_are_released(tmp_path):
    smaps = tmp_path / "smaps"
    smaps.write_text(SMAPS)
    # The relocated part of a library (anonymous copies, which could go to swap),
    # the heap and the stack are left alone.
    assert list(file_only_mappings(str(smaps))) == [(0x400000, 0x401000), (0x7F0000000000, 0x7F0000100000)]
