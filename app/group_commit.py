"""Group commit on the event loop: concurrent submissions leave in one flush.

The HTTP front answers a heartbeat request only once the broker holds its heartbeats, and one
broker message per request would put the fleet at the broker's per-message ceiling, so
requests that arrive together share a message. The first submission of a group (its leader)
waits at most `linger` seconds for company, or until the group holds `max_items`, then runs
the flush (blocking I/O: a query and a send) on a worker thread, once for the whole group;
every member is answered when it returns, with its error if it raised.

On the event loop rather than on threads: a request waiting for its group is a suspended
coroutine, not a parked thread, and the only thread hop is the flush's, one per group. With
a thread per request (the first version) the hops and wake-ups of a list of 100 heartbeats cost
the API process more than checking them.

The flush runs as a task of its own and is awaited shielded, so a member's cancellation (a
client gone) neither stops the send nor leaves the rest of its group waiting for ever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

E = TypeVar("E")


@dataclass
class _Group(Generic[E]):
    done: asyncio.Future[None]
    entries: list[E] = field(default_factory=list)
    size: int = 0
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class GroupCommit(Generic[E]):
    """Coalesce concurrent `submit`s into one `flush(entries)` (see the module docstring)."""

    def __init__(self, flush: Callable[[list[E]], None], linger_seconds: float, max_items: int) -> None:
        self._flush = flush
        self.linger = linger_seconds
        self.max_items = max_items
        self._open: _Group[E] | None = None
        self._leading: set[asyncio.Task[None]] = set()

    async def submit(self, entry: E, size: int) -> None:
        """Return once the flush holding `entry` (`size` items) has run; raise its error."""
        group = self._open
        if group is None:
            group = self._open = _Group(asyncio.get_running_loop().create_future())
            # The group's own task, not its first member's: a member cancelled while it waits
            # (its client gone) must not take the group's send with it.
            lead = asyncio.ensure_future(self._lead(group))
            self._leading.add(lead)
            lead.add_done_callback(self._leading.discard)
        group.entries.append(entry)
        group.size += size
        if group.size >= self.max_items:
            self._close(group)
        await asyncio.shield(group.done)

    async def _lead(self, group: _Group[E]) -> None:
        """Wait for company (at most `linger`), close the group, flush it, answer its members."""
        if self.linger > 0:
            timer = asyncio.get_running_loop().call_later(self.linger, self._close, group)
            await group.closed.wait()
            timer.cancel()
        self._close(group)
        try:
            await run_in_threadpool(self._flush, group.entries)
        except Exception as exc:
            group.done.set_exception(exc)
            group.done.exception()  # read here, so no member left to read it is no warning
        else:
            group.done.set_result(None)
        finally:
            group.done.cancel()  # only when the loop itself is stopping: nothing was answered

    def _close(self, group: _Group[E]) -> None:
        """No one joins `group` any more."""
        if self._open is group:
            self._open = None
        group.closed.set()


__all__ = ["GroupCommit"]
