"""What must hold before `makima run` starts its children, and the wait until they are up.

A run takes a lock on its data directory (two runs never share one SQLite file and one Redis
socket), checks that its HTTP port is free (uvicorn's own error comes late), gives SQLite the
directory it will not make itself, and after starting the children waits until `/healthz`
answers and each child that has a ready line has printed it. What goes wrong is a `RunError`,
phrased so the user can act on it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from app.child_processes import Child


class RunError(Exception):
    """A reason `makima run` cannot start, phrased so the user can act on it."""


def ensure_sqlite_directory(url: str) -> None:
    """Alembic opens its own connection, and SQLite does not create a missing directory."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


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


__all__ = ["RunError", "check_port_free", "data_dir_lock", "ensure_sqlite_directory", "wait_until_ready"]
