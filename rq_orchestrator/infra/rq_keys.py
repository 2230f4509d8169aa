"""rq's own Redis key names, as the installed rq spells them (rq 3 takes their prefix from ``RQ_KEY_PREFIX``).

The master reads and repairs a few of rq's keys itself (queue heads, worker
registrations, intermediate lists). Taking the names from rq's classes keeps
those reads on the keys rq writes, on rq 1.15 (always ``rq:``) as on rq 3
with ``RQ_KEY_PREFIX`` set in the environment before rq is imported.
"""

from __future__ import annotations

from rq import worker_registration
from rq.job import Job
from rq.queue import Queue
from rq.worker import Worker

WORKERS_KEY = worker_registration.REDIS_WORKER_KEYS  # set of every registered worker's key


def queue_key(queue: str) -> str:
    return f"{Queue.redis_queue_namespace_prefix}{queue}"


def intermediate_key(queue: str) -> str:
    """Where rq (1.15 and later) moves a job id it pops, until the job starts."""
    return intermediate_of(queue_key(queue))


def intermediate_of(key: str) -> str:
    """The intermediate list of the queue whose key is ``key``."""
    return f"{key}:intermediate"


def job_key(job_id: str) -> str:
    return f"{Job.redis_job_namespace_prefix}{job_id}"


def worker_key(name: str) -> str:
    return f"{Worker.redis_worker_namespace_prefix}{name}"


def workers_by_queue_key(queue: str) -> str:
    return worker_registration.WORKERS_BY_QUEUE_KEY % queue
