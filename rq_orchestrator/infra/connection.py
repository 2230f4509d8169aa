"""Redis connections: from a URL, safe to print, and fresh for each child."""

from __future__ import annotations

import functools
import inspect
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import RedisError

from .errors import BadInput

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_URL = "redis://localhost:6379/0"


class BadRedisURL(ValueError):
    pass


def redact(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def from_url(url: str, **kwargs: object) -> Redis:
    """A client for ``url``; malformed URLs raise BadRedisURL with the password redacted."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError as exc:
        raise BadRedisURL(f"malformed Redis URL {redact(url)}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise BadRedisURL(f"malformed Redis URL {redact(url)}: scheme must be one of {', '.join(SCHEMES)}")
    if parts.scheme != "unix" and not parts.hostname:
        raise BadRedisURL(f"malformed Redis URL {redact(url)}: no host")
    try:
        return Redis.from_url(url, **kwargs)
    except ValueError as exc:
        raise BadRedisURL(f"malformed Redis URL {redact(url)}: {exc}") from None


def connect(url: str) -> Any:
    """A Redis client for URL that answered PING, or BadInput naming the URL (password hidden)."""
    try:
        connection = fresh_copy(from_url(url), socket_connect_timeout=5)
        connection.ping()
    except BadRedisURL as exc:
        raise BadInput(f"--url: {exc}") from None
    except RedisError as exc:
        raise BadInput(f"--url: cannot reach Redis at {redact(url)}: {exc}") from None
    return connection


def describe(connection: Redis) -> str:
    """host:port/db (or the socket path) of a client, never its password."""
    kwargs = connection.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if "ssl" in connection.connection_pool.connection_class.__name__.lower() else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def fresh_copy(connection: Redis, **overrides: Any) -> Redis:
    """A new client with the same settings (but ``overrides``) and its own connection pool.

    Forked workers must never share the master's sockets; redis-py would
    notice the new pid and reconnect, but a separate pool makes it explicit.
    """
    pool = connection.connection_pool
    kwargs = {**with_driver_info(pool.connection_kwargs), **overrides}
    if not _takes_connect_timeout(pool.connection_class):
        kwargs.pop("socket_connect_timeout", None)
    new_pool = type(pool)(connection_class=pool.connection_class, **kwargs)
    return type(connection)(connection_pool=new_pool)


@functools.cache
def _takes_connect_timeout(connection_class: type) -> bool:
    """Whether a connection class takes ``socket_connect_timeout`` (redis-py 4.x's unix-socket class does not).

    Followed through the classes whose ``__init__`` passes ``**kwargs`` on to the next one's.
    """
    for cls in connection_class.__mro__:
        if "__init__" not in vars(cls):
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        if any(p.name == "socket_connect_timeout" for p in parameters):
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return False
    return False


def with_driver_info(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection settings with redis-py's client name and version resolved once.

    redis-py 7+ (``redis.driver_info``) otherwise looks its own version up in
    the installed package's metadata, scanning ``sys.path`` and parsing files,
    for every connection it creates: in every job process rq forks (2.7 ms of
    CPU a job here), and in every worker, copying the pages of all that code.
    """
    if {"driver_info", "lib_name", "lib_version"} & kwargs.keys():
        return dict(kwargs)
    driver_info = _driver_info()
    return {**kwargs, "driver_info": driver_info} if driver_info is not None else dict(kwargs)


@functools.cache
def _driver_info() -> Any:
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py < 7: the version is read once, at import
        return None
    return DriverInfo()


# Where rq caches a connection's server version (rq.utils.get_version), 1.15 to 3.x.
RQ_VERSION_CACHE = "__rq_redis_server_version"


def server_version(connection: Redis) -> tuple[int, ...] | None:
    """The Redis server's version as rq reads it (INFO, cached on the client); None if unreachable."""
    from rq.utils import get_version

    try:
        return tuple(get_version(connection))
    except RedisError:
        return None


def share_server_version(connection: Redis, version: tuple[int, ...] | None) -> None:
    """Tell a new client the server version, so that rq does not ask the server again (an INFO per worker)."""
    if version is not None:
        setattr(connection, RQ_VERSION_CACHE, version)
