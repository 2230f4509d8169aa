"""A Redis user built from Frappe's own rules for its bench's rq user, on the tests' private redis-server.

Frappe's ``bench create-rq-users`` (``frappe/utils/redis_queue.py``,
``RedisQueue.get_new_user_settings``, the same on v15 and develop) calls
``acl_setuser`` with these settings: keys ``rq:[^q]*``, ``rq:queues`` and
``rq:queue:<bench_id>:*``, commands ``+@all -@admin``, and no channel rule,
so on Redis 7 (``acl-pubsub-default resetchannels``) the user may neither
publish nor subscribe. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis import Redis

from rq_orchestrator.infra.embedded_redis import RedisServer

BENCH_ID = "benchx"
USER = BENCH_ID  # Frappe names the user after the bench id (get_bench_id())
PASSWORD = "frappe-rq-secret"


def frappe_key_rules(bench_id: str = BENCH_ID) -> list[str]:
    """``RedisQueue.get_acl_key_rules()``: patterns without the ``~`` (redis-py adds it)."""
    return ["rq:[^q]*", "rq:queues", f"rq:queue:{bench_id}:*"]


def frappe_user_settings(username: str, password: str, bench_id: str = BENCH_ID) -> dict[str, Any]:
    """``RedisQueue.get_new_user_settings()``, as Frappe passes it to ``acl_setuser``."""
    return {"username": username, "passwords": "+" + password, "reset_keys": True, "enabled": True,
            "keys": frappe_key_rules(bench_id), "commands": ["+@all", "-@admin"]}


def user_url(server: RedisServer, username: str, password: str) -> str:
    """The server's URL with ``username:password@`` in it."""
    parts = urlsplit(server.url)
    return parts._replace(netloc=f"{username}:{password}@{parts.netloc}").geturl()


@pytest.fixture
def make_user(redis_server: RedisServer) -> Callable[..., str]:
    """Make (or remake) a user on the private server and return its URL.

    ``make_user()`` is Frappe's bench user; ``make_user(name, **changes)``
    the same settings with some changed, for a stricter site's user.
    """

    def make(username: str = USER, **changes: Any) -> str:
        settings = {**frappe_user_settings(username, PASSWORD), **changes}
        redis_server.client().acl_setuser(**settings)
        return user_url(redis_server, username, PASSWORD)

    return make


@pytest.fixture
def frappe_url(redis_url: str, make_user: Callable[..., str]) -> str:
    """The URL of Frappe's bench rq user, on a flushed private server."""
    return make_user()


@pytest.fixture
def frappe_redis(frappe_url: str) -> Redis:
    """A client logged in as Frappe's bench rq user."""
    return Redis.from_url(frappe_url)
