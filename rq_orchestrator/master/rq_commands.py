"""rq's worker commands (stop-job, kill-horse, shutdown), heard by the master and relayed to its workers.

rq sends them over Redis pub/sub (``rq.command.send_stop_job_command`` and
friends; Frappe's RQ Job form has a Stop button that calls it) on the
channel ``rq:pubsub:<worker name>``, and rq's own worker listens in a thread.
Pool workers run no thread (that is what keeps their forks safe), so the
master listens instead: one pattern subscription, whose socket sits in the
master's selector, and each command for one of its workers goes to that
worker by a signal (``worker.mailbox``). Commands for other workers are
ignored. A lost connection (Redis restarted) is subscribed again with
back-off; a Redis user that may not subscribe (Frappe's rq ACL user has no
channel permissions) is said once, loudly, at start.
"""

from __future__ import annotations

import json
import logging
import selectors
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoPermissionError, RedisError

from ..infra.connection import fresh_copy
from .access import redis_user

log = logging.getLogger("rq_orchestrator")

RETRY_MAX_SECONDS = 10.0


def channel_prefix() -> str:
    from rq.command import PUBSUB_CHANNEL_TEMPLATE

    return PUBSUB_CHANNEL_TEMPLATE % ""


class CommandRelay:
    """The master's subscription to rq's command channels; ``on_command(worker name, payload)`` for each."""

    def __init__(self, connection: Any, on_command: Callable[[str, dict[str, Any]], None]) -> None:
        self._client = fresh_copy(connection)
        self._on_command = on_command
        self._prefix = channel_prefix()
        self._pubsub: Any = None
        self._selector: selectors.BaseSelector | None = None
        self._fd = -1
        self._retry_at: float | None = None
        self._retry_delay = 1.0
        self.refused: str | None = None  # why this Redis user may not subscribe, once known

    @property
    def fd(self) -> int:
        """The subscription's socket (-1 while there is none): a forked worker closes it."""
        return self._fd

    @property
    def lost(self) -> bool:
        """The subscription dropped and is not back yet: most likely Redis is away."""
        return self._retry_at is not None

    def start(self, selector: selectors.BaseSelector, now: float) -> None:
        self._selector = selector
        self._subscribe(now)

    def _subscribe(self, now: float) -> None:
        pubsub = self._client.pubsub()
        try:
            pubsub.psubscribe(self._prefix + "*")
            reply = pubsub.get_message(timeout=2.0)  # the subscription's confirmation, or the refusal
            if reply is None or reply.get("type") != "psubscribe":
                raise RedisError(f"no confirmation of the subscription (got {reply!r})")
        except NoPermissionError as exc:
            pubsub.close()
            self.refused = str(exc)
            log.warning("rq's worker commands (stop-job, kill-horse, shutdown: the desk's Stop button) cannot reach "
                      "this pool's workers: the Redis user %r may not subscribe to %s* (%s); grant it that channel "
                      "pattern (ACL SETUSER ... &%s*) to enable them", redis_user(self._client), self._prefix,
                      exc, self._prefix)
            return
        except RedisError as exc:
            pubsub.close()
            self._retry_later(now, exc)
            return
        self._pubsub = pubsub
        self._fd = pubsub.connection._sock.fileno()
        assert self._selector is not None
        self._selector.register(self._fd, selectors.EVENT_READ)
        if self._retry_at is not None:
            log.info("rq's worker commands: subscribed again")
        self._retry_at, self._retry_delay = None, 1.0

    def _retry_later(self, now: float, exc: Exception) -> None:
        if self._retry_at is None:
            log.warning("rq's worker commands: lost the subscription (%s); subscribing again", exc)
        self._retry_at = now + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_SECONDS)

    def handle_ready(self, now: float) -> None:
        """Relay every command that arrived; subscribe again when it is time."""
        if self._pubsub is None:
            if self._retry_at is not None and now >= self._retry_at:
                self._subscribe(now)
            return
        try:
            while (message := self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0)) is not None:
                self._relay(message)
        except RedisError as exc:
            self._drop()
            self._retry_later(now, exc)

    def _relay(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        channel = channel.decode() if isinstance(channel, bytes) else str(channel)
        try:
            payload = json.loads(message["data"])
        except (TypeError, ValueError):
            return
        if isinstance(payload, dict) and channel.startswith(self._prefix):
            self._on_command(channel[len(self._prefix):], payload)

    def _drop(self) -> None:
        if self._selector is not None and self._fd >= 0:
            self._selector.unregister(self._fd)
        self._fd = -1
        if self._pubsub is not None:
            try:
                self._pubsub.close()
            except RedisError:
                pass
        self._pubsub = None

    def close(self) -> None:
        self._drop()
        self._client.close()
