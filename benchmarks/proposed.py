"""The pool changes proposed in benchmarks/README.md, applied at run time so they can be measured first.

1. ``Pool._setup`` runs ``rq_orchestrator.prewarm.prewarm(pool)`` before it
   collects and freezes the garbage collector (and so before any fork).
2. ``Pool._spawn`` builds the worker's Redis client in the master, before the
   fork, instead of in the child: the client's objects (its table of ~250
   response callbacks, its connection pool) are then shared, not rebuilt and
   copied in every worker.

Once the package has them (``PoolConfig.prewarm`` exists), ``apply()`` does nothing.

    python -m benchmarks.proposed worker-pool QUEUE --url URL ...   # rq-orchestrator with the changes
"""

from __future__ import annotations

from typing import Any


def apply() -> None:
    from dataclasses import fields

    from rq_orchestrator import pool as pool_module
    from rq_orchestrator.config import PoolConfig
    from rq_orchestrator.prewarm import prewarm

    pool_class = pool_module.Pool
    if hasattr(pool_class, "prewarmed") or "prewarm" in {f.name for f in fields(PoolConfig)}:
        return
    setup, spawn = pool_class._setup, pool_class._spawn

    def _setup(self: Any) -> None:
        prewarm(self)
        setup(self)

    def _spawn(self: Any, group: Any) -> Any:
        client = pool_module.fresh_copy(self.connection)
        fresh_copy = pool_module.fresh_copy
        pool_module.fresh_copy = lambda connection: client  # what the forked child calls
        try:
            return spawn(self, group)
        finally:
            pool_module.fresh_copy = fresh_copy

    pool_class._setup, pool_class._spawn, pool_class.prewarmed = _setup, _spawn, True


def main() -> None:
    apply()
    from rq_orchestrator.cli import main as cli

    cli(prog_name="rq-orchestrator")


if __name__ == "__main__":
    main()
