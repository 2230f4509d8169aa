"""An rq settings module (`rq worker -c MODULE`) and Sentry (`--sentry-dsn`), turned into the pool's inputs.

rq reads the module's upper-case names: the connection (REDIS_URL, or
REDIS_HOST/PORT/DB/PASSWORD/SSL, or SENTINEL), QUEUES, NAME (here: the
pool's name, which every worker name carries), DICT_CONFIG (logging) and,
up to rq 1.x, SENTRY_DSN. Command-line options win over the module, as in
`rq worker`. Importing the module runs it in the master, before any fork, so
whatever else it sets up (``sentry_sdk.init``, Django's settings) every
worker shares.
"""

from __future__ import annotations

import logging.config
from typing import Any
from urllib.parse import quote

from ..infra.errors import BadInput, import_given

CONNECTION_NAMES = ("REDIS_HOST", "REDIS_PORT", "REDIS_DB", "REDIS_PASSWORD", "REDIS_SSL")
TRUE, FALSE = ("y", "yes", "t", "true"), ("n", "no", "f", "false", "")


def read_settings(module: str) -> dict[str, Any]:
    """The module's upper-case names, as rq's ``read_config_file`` reads them."""
    settings = import_given(module, "--config")
    return {name: value for name, value in vars(settings).items() if name.isupper()}


def settings_url(settings: dict[str, Any]) -> str | None:
    """The Redis URL the settings describe (None: they describe none)."""
    if settings.get("REDIS_URL") is not None:
        return str(settings["REDIS_URL"])
    if settings.get("SENTINEL") is not None:
        raise BadInput("--config: SENTINEL settings are not taken: give the master's address with --url")
    unsupported = sorted(name for name in settings if name.startswith("REDIS_SSL_"))
    if unsupported:
        raise BadInput(f"--config: {', '.join(unsupported)} not taken: give them in a rediss:// --url "
                       "(query parameters, e.g. ?ssl_ca_certs=/path)")
    if not any(name in settings for name in CONNECTION_NAMES):
        return None
    password = settings.get("REDIS_PASSWORD")
    secret = f":{quote(str(password), safe='')}@" if password else ""
    scheme = "rediss" if ssl_setting(settings.get("REDIS_SSL", False)) else "redis"
    host, port = settings.get("REDIS_HOST", "localhost"), settings.get("REDIS_PORT", 6379)
    return f"{scheme}://{secret}{host}:{port}/{settings.get('REDIS_DB', 0)}"


def ssl_setting(value: Any) -> bool:
    """REDIS_SSL as rq reads it: a bool, or one of rq's yes/no words."""
    if not isinstance(value, str):
        return bool(value)
    if value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise BadInput(f"--config: REDIS_SSL must be True or False, got {value!r}")


def apply_logging(settings: dict[str, Any]) -> None:
    """DICT_CONFIG, as `rq worker` applies it (the pool's own handlers are added only where it set none)."""
    config = settings.get("DICT_CONFIG")
    if not config:
        return
    try:
        logging.config.dictConfig(config)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise BadInput(f"--config: DICT_CONFIG: {exc}") from None
    if "rq_orchestrator" not in config.get("loggers", {}):  # not silenced by disable_existing_loggers
        logging.getLogger("rq_orchestrator").disabled = False


def log_files() -> set[int]:
    """The descriptors logging's handlers write to (a file, syslog's socket): a log is meant to be shared."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    handlers = [h for lg in loggers for h in getattr(lg, "handlers", ())]  # a PlaceHolder has none
    found = set()
    for channel in [getattr(h, name, None) for h in handlers for name in ("stream", "socket")]:
        try:
            found.add(channel.fileno())
        except (AttributeError, OSError, ValueError):  # none (a FileHandler with delay), or closed
            continue
    return found


def start_sentry(dsn: str) -> None:
    """Report failed jobs to Sentry, as rq 1.x's ``--sentry-dsn`` did (sentry-sdk's rq integration)."""
    try:
        import sentry_sdk
        from sentry_sdk.integrations.rq import RqIntegration
    except ImportError:
        raise BadInput("--sentry-dsn needs sentry-sdk: pip install sentry-sdk") from None
    try:
        sentry_sdk.init(dsn, integrations=[RqIntegration()])
    except Exception as exc:  # noqa: BLE001 - sentry-sdk rejects a malformed DSN with its own error
        raise BadInput(f"--sentry-dsn: {type(exc).__name__}: {exc}") from None
