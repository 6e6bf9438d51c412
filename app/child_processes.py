"""Child processes of `makima run`: started in their own process group, their output relayed
line by line, watched for their "ready" line, and stopped without leaving anything behind.

Each child leads its own process group so a terminal's Ctrl-C reaches only the parent, which
then stops the children in order: a Celery worker that received SIGINT from the terminal
*and* SIGTERM from us would treat the second signal as a cold shutdown and drop the task it
is running. On Linux each child also gets SIGTERM if the parent dies without cleaning up
(PR_SET_PDEATHSIG), so a SIGKILLed `makima run` leaves no API or worker.

Output goes through the parent (a pipe per child, one relay thread each) for two reasons:
every line is prefixed with the child's name, so interleaved logs stay readable, and the
parent sees each child's own "ready" line, so what it prints once everything is up comes
after the children's start-up banners instead of drowned among them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

Say = Callable[[str], None]
# Width of the name column in relayed output: the longest name ("heartbeat-worker") and a space.
NAME_WIDTH = 17


@dataclass
class Child:
    """One supervised process, the command that started it, and how it says it is ready."""

    name: str
    argv: list[str]
    # A line of the child's own output that means it is up (None: readiness is checked
    # another way, for example an HTTP probe).
    ready_pattern: re.Pattern[str] | None = None
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    relay: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exit_code(self) -> int | None:
        """None while running (or not started); the exit status once it has ended."""
        return None if self.process is None else self.process.poll()


class OutputSink:
    """Where relayed lines and the parent's own lines go, one whole line at a time."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self._lock = threading.Lock()

    def write_line(self, text: str) -> None:
        """Write and flush; a closed stdout (`makima run | head`) must not stop the relays."""
        with self._lock, contextlib.suppress(OSError, ValueError):
            print(text, file=self._out, flush=True)


def _relay(child: Child, stream: IO[bytes], sink: OutputSink) -> None:
    """Copy the child's lines to the sink, prefixed with its name; mark it ready on its line."""
    prefix = f"{child.name:<{NAME_WIDTH}}| "
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        sink.write_line(prefix + line)
        if child.ready_pattern is not None and not child.ready.is_set() and child.ready_pattern.search(line):
            child.ready.set()
    stream.close()


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: SIGTERM this child when the parent dies (Linux), even by SIGKILL."""

    def preexec() -> None:
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def start_child(child: Child, env: dict[str, str], sink: OutputSink) -> None:
    """Own process group, no stdin, stdout and stderr relayed through `sink`."""
    preexec = _die_with_parent(os.getpid()) if sys.platform.startswith("linux") else None
    child.process = subprocess.Popen(
        child.argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        process_group=0,
        preexec_fn=preexec,
    )
    assert child.process.stdout is not None
    child.relay = threading.Thread(
        target=_relay, args=(child, child.process.stdout, sink), name=f"relay-{child.name}", daemon=True
    )
    child.relay.start()


def _group_alive(pgid: int) -> bool:
    """Whether any process remains in a child's process group (its own children included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_children(children: Sequence[Child], timeout: float, say: Say) -> None:
    """SIGTERM every running child, wait up to `timeout` for all, then SIGKILL the stragglers.

    Each child leads its own process group, so the final sweep also catches what a child
    started itself (Celery's prefork pool) if the child could not take it down. The relays
    are drained last, so a child's final lines come before whatever the caller says next.
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
    for child in children:
        if child.relay is not None:
            child.relay.join(timeout=2.0)


__all__ = ["Child", "OutputSink", "start_child", "stop_children"]
