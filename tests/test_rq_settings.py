"""`rq worker -c MODULE` and `--sentry-dsn`, taken as rq takes them: the settings give what the command line does not."""

from __future__ import annotations

import gzip
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from rq import Queue
from rq.job import JobStatus

from test_cli import run_cli

FAST = ("--num-workers", "1", "--scaling-period", "0.2", "--utilization-window", "1")


def settings_module(tmp_path: Path, redis_url: str, **extra: object) -> tuple[str, ...]:
    """A settings module in tmp_path naming the test Redis by host, port and db (rq's REDIS_* names)."""
    parts = urlsplit(redis_url)
    names = {"REDIS_HOST": parts.hostname, "REDIS_PORT": parts.port, "REDIS_DB": int(parts.path.strip("/") or 0),
             "QUEUES": ["settings-high", "settings-low"], "NAME": "from-settings", **extra}
    (tmp_path / "pool_settings.py").write_text("".join(f"{k} = {v!r}\n" for k, v in names.items()))
    return ("--path", str(tmp_path), "--config", "pool_settings")


def finished(pool, job) -> None:
    pool.wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 20, f"job {job.id}")


@pytest.mark.parametrize("shared", [False, True], ids=["one-logger", "handler-on-root-too"])
def test_the_settings_give_the_connection_queues_name_and_logging(start_pool, redis, redis_url, tmp_path, shared):
    """``shared``: one handler on the root and on rq.worker, as Django's LOGGING gives ``console`` to two loggers."""
    logging_config = {"version": 1, "formatters": {"tagged": {"format": "SETTINGS-LOG %(message)s"}},
                      "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "tagged"}},
                      "loggers": {"rq.worker": {"handlers": ["out"], "level": "INFO", "propagate": not shared}}}
    if shared:
        logging_config["root"] = {"handlers": ["out"], "level": "INFO"}
    pool = start_pool(*FAST, *settings_module(tmp_path, redis_url, DICT_CONFIG=logging_config), url_option=False)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    state = pool.state()
    assert state["name"] == "from-settings" and state["groups"][0]["queues"] == ["settings-high", "settings-low"]
    finished(pool, Queue("settings-low", connection=redis).enqueue("jobs.noop"))
    output = pool.output()
    assert "SETTINGS-LOG Worker" in output  # rq's worker logs through DICT_CONFIG's handler
    assert "pool from-settings started" in output  # and the master's own log was not silenced by it


def test_the_command_line_wins_over_the_settings(start_pool, redis, redis_url, tmp_path):
    settings = settings_module(tmp_path, redis_url, REDIS_PORT=1)  # nothing listens there
    pool = start_pool(*FAST, *settings, "--name", "from-cli", "cli-queue")  # and --url, from start_pool
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    state = pool.state()
    assert state["name"] == "from-cli" and state["groups"][0]["queues"] == ["cli-queue"]
    finished(pool, Queue("cli-queue", connection=redis).enqueue("jobs.noop"))


def test_a_connection_the_preload_leaves_open_is_named_in_a_warning(start_pool):
    pool = start_pool(*FAST, "--preload", "opens_a_connection")  # a database client connected at import, say
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    assert "--config/--preload left open in the master, for every worker and job process to share: socket:[" \
        in pool.output()


def test_a_database_file_the_preload_leaves_open_is_named_and_its_log_file_is_not(start_pool):
    pool = start_pool(*FAST, "--preload", "opens_a_database")  # sqlite, as Django's ORM after a query at import
    pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")
    warning = next(line for line in pool.output().splitlines() if "--config/--preload left" in line)
    assert "to share: /" in warning and "app.sqlite3;" in warning
    assert "app.log" not in warning and "overwritten.log" not in warning and "appended.log" not in warning


@pytest.mark.parametrize("extra, message", [
    ({"SENTINEL": {"INSTANCES": [("localhost", 26379)]}}, "--config: SENTINEL settings are not taken"),
    ({"REDIS_SSL": "maybe"}, "--config: REDIS_SSL must be True or False, got 'maybe'"),
    ({"REDIS_SSL_CA_CERTS": "/ca.pem"}, "--config: REDIS_SSL_CA_CERTS not taken"),
    ({"DICT_CONFIG": {"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}}, "--config: DICT_CONFIG:"),
])
def test_settings_it_cannot_take_are_refused(redis_url, tmp_path, extra, message):
    result = run_cli("worker-pool", *settings_module(tmp_path, redis_url, **extra), "--burst")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr


def test_a_settings_module_that_does_not_import_is_refused(redis_url):
    result = run_cli("worker-pool", "--url", redis_url, "--config", "no_such_settings")
    assert result.returncode == 2 and "--config: cannot import no_such_settings: ModuleNotFoundError" in result.stderr
    ended = run_cli("worker-pool", "--url", redis_url, "--config", "exits_on_import")  # a sys.exit() in the module
    assert ended.returncode == 2 and ended.stderr.strip() == "Error: --config: cannot import exits_on_import: SystemExit: 3"


class SentrySink(http.server.BaseHTTPRequestHandler):
    """Sentry's ingest endpoint, reduced to keeping what it is sent."""

    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.received.append(gzip.decompress(body) if self.headers.get("content-encoding") == "gzip" else body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def sentry_sink() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), SentrySink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://key@127.0.0.1:{server.server_port}/1"
    server.shutdown()
    server.server_close()
    SentrySink.received.clear()


@pytest.mark.parametrize("mode", [(), ("--no-fork",)], ids=["fork", "no-fork"])
def test_a_failed_job_reaches_sentry(start_pool, redis, sentry_sink, mode):
    pool = start_pool(*FAST, *mode, "--sentry-dsn", sentry_sink)
    pool.wait_until(lambda: len(pool.ready_pids()) == 1, 15, "a ready worker")
    job = Queue(connection=redis).enqueue("jobs.fail")
    pool.wait_until(lambda: any(b"this job fails" in body for body in SentrySink.received), 20, "Sentry's event")
    assert job.get_status(refresh=True) == JobStatus.FAILED


def test_an_error_the_master_logs_is_not_sent_so_its_forks_go_on(start_pool, redis, sentry_sink):
    """sentry-sdk sends from a thread it starts at the first event: in the master, forks would stop."""
    pool = start_pool(*FAST, "--sentry-dsn", sentry_sink, "--worker-class", "rq.SimpleWorker", "--stuck-margin", "1")
    first = pool.wait_until(lambda: pool.ready_pids(), 15, "a ready worker")[0]
    Queue(connection=redis).enqueue("jobs.wedge", 60, job_timeout=1)
    pool.wait_until(lambda: "is stuck" in pool.output(), 20, "the master's ERROR line: the worker is stuck")
    pool.wait_until(lambda: (pids := pool.ready_pids()) and pids[0] != first, 15, "a replacement forked")
    assert "refusing to fork" not in pool.output() and pool.proc.poll() is None
    assert "the master's own are logged only" in pool.output()


def test_a_bad_sentry_dsn_is_refused(redis_url):
    result = run_cli("worker-pool", "--url", redis_url, "--sentry-dsn", "not a dsn")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--sentry-dsn: BadDsn:" in result.stderr
