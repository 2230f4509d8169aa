"""Turn a Frappe bench into the generic pool's inputs. The only module that imports frappe.

It prepares the master the way Frappe prepares its own pool, by calling
Frappe's own functions: Sentry, the queue connection from the bench config
(with Redis ACL credentials), bench-prefixed queue names in Frappe's priority
order, niceness, and the modules Frappe's pool preloads. What it adds is fork
safety: no thread is left running in the master, and workers run neither
rq's pubsub thread nor Frappe's scheduler thread, so nothing holds a lock at
the moment a worker forks the process that runs a job. Where Frappe's worker
class would run its scheduler (newer lines), the pool runs it once, in a
service child of its own.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from .cli.group_specs import GroupRequest, check_known
from .infra.config import ServiceSpec
from .infra.errors import BadInput
from .worker.job_module import module_part, rq_job_module

# The modules Frappe's own `start_worker_pool` imports before forking (v15 and
# develop), plus the logger that every job's `frappe.connect()` would import.
PRELOAD = (
    "frappe.database.query",
    "frappe.query_builder",
    "frappe.utils",
    "frappe.utils.safe_exec",
    "frappe.utils.scheduler",
    "frappe.utils.typing_validations",
    "frappe.website.path_resolver",
    "frappe.utils.logger",
    "frappe.utils.background_jobs",
)
# The controllers of doctypes nearly every Frappe job loads: loading any doctype's
# metadata imports the first five; `User` (and its roles, `Has Role`) owns every document a job
# writes and the subject of its permission checks. Imported in the master, they
# are shared by every job process instead of imported (and compiled) in each.
JOB_CONTROLLERS = ("DocField", "DocPerm", "DocType Link", "DocType Action", "DocType State", "User", "Has Role")
JOB_HOOKS = ("before_job", "after_job")  # the apps' functions Frappe's execute_job calls around every job
NOFORK_SWITCH = "FRAPPE_BACKGROUND_WORKERS_NOFORK"
SCHEDULER_SERVICE = "frappe-scheduler"
SCHEDULER_LOCK_RETRY = 60.0  # seconds between looks at a scheduler lock another process holds

log = logging.getLogger("rq_orchestrator")


@dataclass(frozen=True)
class BenchInputs:
    connection: Any
    groups: list[GroupRequest]
    worker_class: type
    services: tuple[ServiceSpec, ...] = ()
    no_fork: bool = False  # --no-fork, or FRAPPE_BACKGROUND_WORKERS_NOFORK set


def prepare_bench(requests: Sequence[GroupRequest], rq_username: str | None, rq_password: str | None,
                  no_fork: bool = False) -> BenchInputs:
    """Everything the pool needs from the bench in the current directory (`sites/`)."""
    try:
        import frappe
        from frappe.utils import background_jobs
    except ImportError:
        raise BadInput("frappe is not importable: run `bench worker-pool` inside a Frappe bench") from None

    _call_if_present(background_jobs, "_start_sentry")
    _preload()
    with frappe.init_site():
        _import_quietly(job_modules(frappe))
        connection = _connect(background_jobs, rq_username, rq_password)
        groups = _bench_groups(background_jobs, requests)
        # Inside the site context: outside it, get_conf() would init Frappe
        # again and, on newer lines, start another cache thread.
        _call_if_present(background_jobs, "set_niceness")
    _stop_master_threads(frappe)
    no_fork = no_fork or nofork_switched()
    pool_worker_class = worker_class(background_jobs, no_fork)
    return BenchInputs(connection, groups, pool_worker_class, scheduler_services(pool_worker_class), no_fork)


def bench_connection() -> Any:
    """The bench's queue connection, as Frappe makes it (ACL credentials from the site config)."""
    try:
        import frappe
        from frappe.utils import background_jobs
    except ImportError:
        raise BadInput("frappe is not importable: run this command inside a Frappe bench") from None
    with frappe.init_site():
        try:
            return background_jobs.get_redis_conn()
        except Exception as exc:  # noqa: BLE001 - Frappe raises plain Exception for config problems
            raise BadInput(f"cannot connect to the bench's Redis queue: {type(exc).__name__}: {exc}") from None


def queue_timeouts() -> dict[str, int]:
    """The bench's queues (short names, Frappe's and those of common_site_config's `workers`) and their job timeouts."""
    import frappe
    from frappe.utils import background_jobs

    with frappe.init_site():
        return dict(background_jobs.get_queues_timeout())


def nofork_switched() -> bool:
    """Frappe's switch for no-fork workers (develop's pool reads it; here it means --no-fork on every line)."""
    from frappe.utils import sbool

    return bool(sbool(os.environ.get(NOFORK_SWITCH, False)))


def worker_class(background_jobs: Any, no_fork: bool = False) -> type:
    """The class Frappe's own pool uses, minus the Frappe scheduler thread.

    Frappe's pool runs ``FrappeWorker`` (v15 and newer; v15's `bench worker`
    runs plain ``rq.Worker``), which starts Frappe's scheduler in a thread of
    every worker; here it never runs in a worker (``scheduler_services`` runs
    it once). Newer lines also have a no-fork variant, used for ``no_fork``
    (v15 has none: the pool runs FrappeWorker's jobs in the worker,
    ``worker.no_fork``). A Frappe without FrappeWorker gets ``rq.Worker``.
    """
    base = getattr(background_jobs, "FrappeWorkerNoFork", None) if no_fork else None
    base = base or getattr(background_jobs, "FrappeWorker", None)
    if base is None:
        from rq import Worker

        return Worker
    return type(base.__name__, (base,), {"start_frappe_scheduler": _no_scheduler_thread, "__module__": __name__})


def _no_scheduler_thread(self: Any) -> None:
    """Frappe's scheduler is not started inside pool workers (see `scheduler_services`)."""


def scheduler_services(pool_worker_class: type) -> tuple[ServiceSpec, ...]:
    """Frappe's scheduler as the pool's service child, where Frappe's worker class would start it in every worker.

    Told by the class, not the version: FrappeWorker (v15's pool and newer
    lines) has ``start_frappe_scheduler``; plain ``rq.Worker`` starts no
    scheduler and gets no service (``bench schedule`` schedules).
    """
    if not hasattr(pool_worker_class, "start_frappe_scheduler"):
        return ()
    return (ServiceSpec(SCHEDULER_SERVICE, run_frappe_scheduler),)


def run_frappe_scheduler() -> NoReturn:
    """Frappe's own ``start_scheduler``, as FrappeWorker's thread runs it, in the pool's service child.

    It takes the bench's scheduler lock (``config/scheduler_process``) without
    waiting and ticks for as long as the process lives. While another process
    holds the lock (``bench schedule``, another pool) it would return at once:
    the lock is looked at again every SCHEDULER_LOCK_RETRY seconds, as Frappe's
    workers try again from their maintenance tasks, so the duty passes here
    when its holder stops. The look comes first so that ``start_scheduler``
    (which raises the niceness on every call) runs only when the lock is free.
    """
    from frappe.utils import scheduler

    lock_held = getattr(scheduler, "is_schduler_process_running", lambda: False)  # sic: Frappe's spelling
    said = False
    while True:
        if not lock_held():
            scheduler.start_scheduler()  # returns only if another process took the lock first
        elif not said:
            log.info("Frappe's scheduler runs in another process (it holds config/scheduler_process); "
                     "waiting for its lock")
            said = True
        time.sleep(SCHEDULER_LOCK_RETRY)


def job_modules(frappe: Any) -> list[str]:
    """What every Frappe job process would import cold: the modules of the apps' job hooks, and JOB_CONTROLLERS."""
    hooks = [importlib.import_module(f"{app}.hooks") for app in frappe.get_all_apps(with_internal_apps=True)]
    functions = [f for module in hooks for name in JOB_HOOKS for f in getattr(module, name, ())]
    controllers = [f"frappe.core.doctype.{frappe.scrub(d)}.{frappe.scrub(d)}" for d in JOB_CONTROLLERS]
    return [f.rpartition(".")[0] for f in functions if isinstance(f, str)] + controllers


def frappe_job_module(job: Any) -> str | None:
    """The module of the method a Frappe job runs (Frappe enqueues ``execute_job(method="app.module.function")``).

    The master imports it without a site (``--learn-job-modules``): ``init``
    would start a thread in the master on newer lines. A module that needs a
    site to import is then not learned, and its jobs import it as before.
    """
    if str(job.func_name).endswith(".execute_job"):
        return module_part(job.kwargs.get("method"))
    return rq_job_module(job)


def _import_quietly(names: Sequence[str]) -> None:
    """Import each module that imports; one that does not is left for the job to fail on, as it would."""
    for name in names:
        if name:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - an app module may need a site to import: the job imports it
                continue


def _preload() -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            continue  # a module this Frappe version does not have


def _connect(background_jobs: Any, username: str | None, password: str | None) -> Any:
    try:
        return background_jobs.get_redis_conn(username=username, password=password)
    except Exception as exc:  # noqa: BLE001 - Frappe raises plain Exception for config problems
        raise BadInput(f"cannot connect to the bench's Redis queue: {type(exc).__name__}: {exc}") from None


def _bench_groups(background_jobs: Any, requests: Sequence[GroupRequest]) -> list[GroupRequest]:
    """Plain queue names (``short``) to the bench's (``<bench_id>:short``), in Frappe's priority order by default."""
    if not requests:
        return [GroupRequest(tuple(background_jobs.get_queue_list(None, build_queue_name=True)))]
    check_known(requests, list(background_jobs.get_queues_timeout()))
    return [
        GroupRequest(tuple(background_jobs.get_queue_list(list(g.queues), build_queue_name=True)), g.bounds)
        for g in requests
    ]


def _stop_master_threads(frappe: Any) -> None:
    """Stop the client-side-cache invalidation thread newer Frappe starts in `init`.

    Forking while it runs could leave its lock held forever in a child, and the
    children would inherit a cache nobody invalidates. Dropping the cache
    objects makes every job process build its own, as a fresh process would.
    """
    client_cache = getattr(frappe, "client_cache", None)
    thread = getattr(client_cache, "invalidator_thread", None)
    if thread is not None:
        thread.stop()
        watcher = getattr(client_cache, "_watcher", None)
        connection = getattr(watcher, "connection", None)
        if connection is not None:
            connection.disconnect()  # wakes the thread from its blocking read
        thread.join(timeout=10)
    if client_cache is not None:
        frappe.client_cache = None
        frappe.cache = None


def _call_if_present(module: Any, name: str) -> None:
    func = getattr(module, name, None)
    if func is not None:
        func()


# -- the desk: what the RQ Worker Pool doctype's controller needs of Frappe --------------------
def document_class() -> type:
    """Frappe's ``Document``, the base class of a doctype controller."""
    from frappe.model.document import Document

    return Document


def desk_connection() -> Any:
    """The queue connection of the bench serving the current request (or test)."""
    from frappe.utils.background_jobs import get_redis_conn

    return get_redis_conn()


def require_role(role: str) -> None:
    """Refuse the current request unless its user has ``role`` (Frappe's own check and message)."""
    import frappe

    frappe.only_for(role)


def not_found(doctype: str, name: str) -> Exception:
    """The error Frappe answers with 404 for a document that does not exist."""
    import frappe

    return frappe.DoesNotExistError(f"{doctype} {name} not found")


def refuse_request(message: str) -> NoReturn:
    """Refuse a request the desk cannot serve as asked, with a message it shows the user (``frappe.throw``:
    a bare ValidationError reaches the desk as a 417 with no message, and the list hangs on "Refreshing...")."""
    import frappe

    frappe.throw(message, frappe.ValidationError)
    raise AssertionError("frappe.throw returned")  # it raises; this tells type checkers so


def date_range(operator: str, value: str) -> list[str] | None:
    """Frappe's own reading of a ``timespan``/``previous``/``next`` filter ("this week", "1 month") as
    [first day, last day], as its list queries read it; None for a value it does not know."""
    from frappe.model.db_query import get_date_range

    found = get_date_range(operator, value)
    return [str(found[0]), str(found[1])] if found else None


def attribute_dict(row: dict[str, Any]) -> Any:
    """A row as Frappe's lists return them (``frappe._dict``: ``row.name`` as well as ``row["name"]``)."""
    import frappe

    return frappe._dict(row)


def system_time(epoch: float | None) -> Any:
    """A Unix time as the naive datetime, in the site's time zone, that Frappe shows everywhere."""
    if epoch is None:
        return None
    from datetime import datetime, timezone

    from frappe.utils import convert_utc_to_system_timezone

    return convert_utc_to_system_timezone(datetime.fromtimestamp(epoch, timezone.utc)).replace(tzinfo=None)
