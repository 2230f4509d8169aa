"""Job modules learned from the job processes and imported in the master, so that the next forks share them.

In fork mode every job runs in a fresh fork of its worker, and a worker is a
fork of the master: whatever the job's module imports, the job's process
imports again, on every job, and throws away (for a Frappe job that returns at
once from a module the master never imported, two thirds of its time). A job
process that found its job's module not imported names it to the master
after the job (``worker.job_module``, ``PoolWorkerMixin.perform_job``). The
master imports it, as ``--preload`` would have, and replaces the workers
forked before (each once it has left, busy ones after their job:
``Pool._refresh_if_old``), so later jobs find the module imported and
shared. Each module is imported first in a throwaway fork of the master
(``probe``): one that fails to import there, starts a thread while imported
(the master refuses to fork while a thread runs), leaves a file or a
connection open (a Django module that queries at import: every job process
would talk on the master's database socket), or takes longer than
PROBE_SECONDS is not imported in the master, and no module is tried twice.
At most LIMIT modules are learned.
"""

from __future__ import annotations

import importlib
import logging
import os
import site
import sys
import sysconfig
import threading
import time
from collections.abc import Callable

from ..infra.descriptors import open_descriptors
from .errand import LATE, STOPPING, run_errand

LIMIT = 200
PROBE_TITLE = "rq-orchestrator: probe import"  # the throwaway fork's title (an errand)
PROBE_SECONDS = 1.0  # a longer import would hold the master's loop (and a stop) too long: not learned

log = logging.getLogger("rq_orchestrator")
LIBRARY_DIRS = tuple({os.path.join(os.path.realpath(path), "") for path in (
    *(sysconfig.get_paths()[kind] for kind in ("stdlib", "platstdlib", "purelib", "platlib")),
    *site.getsitepackages(), site.getusersitepackages())})  # Debian's dist-packages, the user's site


def import_longest(name: str) -> str | None:
    """Import the longest leading part of ``name`` that is a module; return its name, or None."""
    while name:
        try:
            importlib.import_module(name)
            return name
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but needs something that does not
                return None
            name = name.rpartition(".")[0]
        except Exception:  # noqa: BLE001 - a module that fails to import: its jobs fail on it as they would
            return None
    return None


class ModuleLearner:
    """Imports the modules job processes name, once each; says whether workers should be replaced."""

    def __init__(self) -> None:
        self.learned: list[str] = []
        self._imported: set[str] = set()  # every module the learning brought into the master (forget)
        self._tried: set[str] = set()
        self._stopped = False
        self._pending: list[str] = []

    def offer(self, name: str) -> None:
        if not self._stopped and name not in self._tried and name not in sys.modules:
            self._tried.add(name)
            self._pending.append(name)

    def learn_pending(self, stop_asked: Callable[[], bool]) -> bool:
        """Import what was offered since the last call; True if anything new was imported."""
        names, self._pending = self._pending, []
        learned = False
        for name in names:
            if self._stopped or len(self.learned) >= LIMIT or stop_asked():
                break
            learned = self._learn(name, stop_asked) or learned
        return learned

    def _learn(self, name: str, stop_asked: Callable[[], bool]) -> bool:
        found, why = probe(name, stop_asked)
        if found is None:
            log.info("job module %s is not imported in the master: %s", name, why)
            return False
        threads, descriptors = threading.active_count(), open_descriptors()
        started, before = time.perf_counter(), set(sys.modules)
        import_longest(found)
        self._imported |= set(sys.modules) - before
        did = ("started a thread" if threading.active_count() > threads else
               "left files or connections open" if open_descriptors() - descriptors else "")
        if did:  # it did not in the probe: learn nothing more
            self._stopped = True
            log.warning("importing job module %s %s in the master: no more job modules are imported here "
                        "(use --no-learn-job-modules)", found, did)
            return False
        self.learned.append(found)
        log.info("learned job module %s (imported in the master in %.0f ms)", found,
                 (time.perf_counter() - started) * 1000)
        return True

    def forget(self) -> list[str]:
        """Drop from the master the application's modules the learning imported (SIGHUP), and learn afresh.

        Workers forked after this import the jobs' code from disk again, so a
        deploy reaches the jobs; the new code is learned once a job names it.
        Libraries the learning brought in stay: installed packages change with
        a restart, not a deploy of the jobs' code, and some (numpy) refuse to be
        loaded twice in one process.
        """
        for name in self._imported:
            if not is_library(sys.modules.get(name)):
                sys.modules.pop(name, None)
        importlib.invalidate_caches()
        forgotten, self.learned, self._imported = self.learned, [], set()
        self._tried.clear()
        return forgotten


def is_library(module: object) -> bool:
    """Whether a module is no application code: built in, compiled, or a source file of the stdlib or site-packages."""
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return True
    return os.path.realpath(path).startswith(LIBRARY_DIRS)


def probe(name: str, stop_asked: Callable[[], bool]) -> tuple[str | None, str]:
    """Import ``name`` in a throwaway fork: (the module that imports cleanly, "") or (None, why not).

    A stop asked for meanwhile ends the probe at once (the master answers it within its 2 s).
    """
    said, why = run_errand(lambda say: say(_import_alone(name).encode()), f"{PROBE_TITLE} {name}", PROBE_SECONDS,
                           stop_asked)
    if why:
        return None, {STOPPING: "the pool is stopping", LATE: f"its import takes over {PROBE_SECONDS:g} s"}.get(
            why, "it does not import (its jobs import it, as before)")
    verdict = said.decode()
    if verdict in REFUSALS:
        return None, REFUSALS[verdict]
    return (verdict, "") if verdict else (None, "it does not import (its jobs import it, as before)")


REFUSALS = {
    "thread": "importing it starts a thread",
    "files": "importing it leaves files or connections open (a database's, say), which every fork would share",
}


def _import_alone(name: str) -> str:
    """In the probe: the module imported, "" if none, or why not to import it in the master (REFUSALS)."""
    before = open_descriptors()
    found = import_longest(name)
    if threading.active_count() > 1:
        return "thread"
    return "files" if open_descriptors() - before else found or ""

