"""What the master reads about a group's queues: how many jobs wait, and for how long the oldest has.

Two pipelined round trips per observation, whatever the queue lengths: LLEN
and the head of each queue (the oldest job), then the heads' `enqueued_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..infra.rq_keys import job_key, queue_key


@dataclass(frozen=True)
class QueueStats:
    queued: int
    oldest_wait: float  # seconds; 0.0 when nothing waits


NOTHING_WAITS = QueueStats(0, 0.0)


def observe_queues(connection: Any, groups: dict[str, tuple[str, ...]]) -> dict[str, QueueStats]:
    """Per group name: jobs waiting and the oldest one's wait. Raises RedisError when Redis is away."""
    from rq.utils import utcparse

    queues = sorted({q for names in groups.values() for q in names})
    with connection.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue_key(queue))
            pipe.lindex(queue_key(queue), 0)
        replies = pipe.execute()
    lengths = dict(zip(queues, replies[0::2]))
    heads = {q: _text(h) for q, h in zip(queues, replies[1::2]) if h is not None}
    waits = dict.fromkeys(queues, 0.0)
    if heads:
        with connection.pipeline(transaction=False) as pipe:
            for job_id in heads.values():
                pipe.hget(job_key(job_id), "enqueued_at")
            stamps = pipe.execute()
        now = datetime.now(timezone.utc)
        for queue, stamp in zip(heads, stamps):
            if stamp:
                enqueued = utcparse(_text(stamp)).replace(tzinfo=timezone.utc)
                waits[queue] = max((now - enqueued).total_seconds(), 0.0)
    return {
        name: QueueStats(sum(lengths[q] for q in names), max((waits[q] for q in names), default=0.0))
        for name, names in groups.items()
    }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
