"""Jobs the tests enqueue. Each records its run in Redis so tests can count runs."""

import os
import signal
import threading
import time

from rq import get_current_job


def _record(name: str) -> None:
    job = get_current_job()
    job.connection.hincrby("test:runs", job.id, 1)
    job.connection.rpush("test:order", f"{name}:{job.id}:{os.getpid()}")


def sleep(seconds: float = 0.1) -> str:
    time.sleep(seconds)
    _record("sleep")
    return "slept"


def noop() -> None:
    _record("noop")


MOST_RUNNING = ("if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
                "redis.call('SET', KEYS[1], ARGV[1]) end")


def count_running(seconds: float) -> None:
    """Sleep, counting the jobs that run at once (``test:running``); the most at any time is ``test:most_running``."""
    connection = get_current_job().connection
    connection.eval(MOST_RUNNING, 1, "test:most_running", connection.incr("test:running"))
    try:
        time.sleep(seconds)
    finally:
        connection.decr("test:running")
    _record("count_running")


def enqueue_after(seconds: float, queue: str) -> str:
    """Sleep, then enqueue a ``noop`` on ``queue``: its id."""
    from rq import Queue

    time.sleep(seconds)
    return Queue(queue, connection=get_current_job().connection).enqueue("jobs.noop").id


_held: list[bytes] = []


def hold_memory(megabytes: int) -> None:
    """Keep ``megabytes`` of written memory in the process that runs the job (the worker, with SimpleWorker)."""
    _held.append(b"\x01" * (megabytes * 2**20))
    _record("hold_memory")


def fail() -> None:
    raise ValueError("this job fails")


def die() -> None:
    """The job's own process dies (the worker survives and reports the job failed)."""
    os.kill(os.getpid(), 9)


def crash_worker() -> None:
    os.kill(os.getppid(), 9)
    time.sleep(5)


def kill_my_worker() -> None:
    """Kill the worker running this job (the job process's parent, or itself for SimpleWorker)."""
    _record("kill_my_worker")
    job = get_current_job()
    target = os.getppid() if job.connection.get("test:horse") == b"1" else os.getpid()
    os.kill(target, 9)
    time.sleep(30)


def record_failure(job, exc_type, exc_value, traceback) -> bool:  # noqa: ANN001
    """An exception handler (--exception-handler): notes the failed job and its exception, lets rq's run on."""
    job.connection.rpush("test:handled", f"{job.id} {exc_type.__name__}")
    return True


def thread_starting_callback(job, connection, *exc_info) -> None:  # noqa: ANN001, ANN002
    """A failure callback that starts a thread, as Frappe's default one does (site init: a Redis cache thread)."""
    threading.Thread(target=time.sleep, args=(3600,), daemon=True, name="callback-thread").start()
    connection.rpush("test:callback-pids", os.getpid())


def raising_callback(job, connection, *exc_info) -> None:  # noqa: ANN001, ANN002
    """A failure callback that fails (rq 1.15's registry clean-up passes its error on; 2.x/3.x log it)."""
    raise RuntimeError("the failure callback failed")


from rq import Worker  # noqa: E402


class BrokenWorker(Worker):
    """A worker class that imports fine but cannot start (as when Redis refuses it)."""

    def register_birth(self) -> None:
        raise RuntimeError("cannot register")


class UnbuildableWorker(Worker):
    """A worker class that imports fine but whose constructor raises."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        raise RuntimeError("this worker cannot be built")


class BuiltOnce(Worker):
    """A worker class whose constructor raises from its second call in a process on."""

    built = 0

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        BuiltOnce.built += 1
        if BuiltOnce.built > 1:
            raise RuntimeError("built once already")
        super().__init__(*args, **kwargs)


class BrokenPerformJob(Worker):
    """A worker class with a bug that raises before any job starts (with --no-fork: in the worker itself)."""

    def perform_job(self, *args, **kwargs) -> bool:  # noqa: ANN002, ANN003
        raise TypeError("perform_job() is broken")


class SlowSecondBirth(Worker):
    """The worker of slot 2 takes 2.5 s to register (a slow start-up); the others none."""

    def register_birth(self) -> None:
        if self.name.startswith("w2."):
            time.sleep(2.5)
        super().register_birth()


def wedge(seconds: float = 60) -> None:
    """A job rq cannot time out: it blocks the alarm signal rq's death penalty uses."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(seconds)


def first_time_in_a_pool_worker(worker: Worker, flag: str) -> bool:
    """True once per test (``flag`` set in Redis), and never in the master's rehearsal (rq_orchestrator.master.prewarm)."""
    return not worker.name.startswith("rehearsal-") and bool(worker.connection.set(flag, 1, nx=True))


class DiesAfterPop(Worker):
    """Dies (once) between popping a job and starting it: the job must not be lost."""

    def execute_job(self, job, queue):  # noqa: ANN001
        # The rehearsal runs in the master itself: this simulates a pool worker's crash.
        if first_time_in_a_pool_worker(self, "test:died-after-pop"):
            os.kill(os.getpid(), 9)
        return super().execute_job(job, queue)


class ForkFailsOnce(Worker):
    """Cannot fork its work process (once), as when os.fork meets ENOMEM: rq's loop quits and the worker exits 0."""

    def fork_work_horse(self, job, queue):  # noqa: ANN001
        if first_time_in_a_pool_worker(self, "test:fork-failed"):
            raise OSError(12, "Cannot allocate memory")
        return super().fork_work_horse(job, queue)


class ColdStopAfterPop(Worker):
    """Gets the master's cold stop (QUIT), once, right after popping a job and before reporting it."""

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):  # noqa: ANN002, ANN003
        result = super().dequeue_job_and_maintain_ttl(*args, **kwargs)
        if result is not None and first_time_in_a_pool_worker(self, "test:cold-after-pop"):
            os.kill(os.getpid(), signal.SIGQUIT)
        return result


class DeafWorker(Worker):
    """Never acts on TERM or QUIT, the master's warm and cold stops (as a worker wedged outside any job would not)."""

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if not self.name.startswith("rehearsal-"):
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGQUIT})  # pending for good


class Lingering:
    """An object whose finalizer takes ``seconds``, after it marks ``mark``: a signal handler that raises in it raises
    into a finalizer, where Python prints the exception and goes on."""

    def __init__(self, mark: str, seconds: float) -> None:
        self.mark, self.seconds = mark, seconds

    def __del__(self) -> None:
        open(self.mark, "w").close()
        time.sleep(self.seconds)


class StopInFinalizer(Worker):
    """Runs a 10 s finalizer before its first wait for a job, marking ``mark_path("finalizer", its master's pid)`` as it begins."""

    _finalized = False

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):  # noqa: ANN002, ANN003
        if not self._finalized and not self.name.startswith("rehearsal-"):
            self._finalized = True
            Lingering(mark_path("finalizer", os.getppid()), 10)  # dropped at once: its finalizer runs here
        return super().dequeue_job_and_maintain_ttl(*args, **kwargs)


class SlowRehearsal(Worker):
    """Takes 3 s to register in the master's pre-fork rehearsal (rq_orchestrator.master.prewarm), and says when it starts."""

    def register_birth(self) -> None:
        mark = mark_path("rehearsal", os.getpid())
        if self.name.startswith("rehearsal-") and not os.path.exists(mark):  # the first round only
            open(mark, "w").close()
            time.sleep(3)
        super().register_birth()


def mark_path(kind: str, master_pid: int) -> str:
    """A file a worker class of these tests creates to tell the test where it is (one per kind and pool)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"rq-orchestrator-test-{kind}-{master_pid}")
