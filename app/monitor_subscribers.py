"""One live-monitor subscriber: its bounded buffer, its place in the stream, how items reach it.

Its own module because it is the fan-out's per-client half: the hub (`app.monitor`) offers
it items and never waits for it, and each stream's endpoint (`app.http.monitor_ws`,
`app.http.monitor_sse`) sends it its catch-up and its items with `pump`. An `Item` is one
message encoded once for every subscriber. The buffer is bounded (`monitor_ws_buffer_size`):
a subscriber that falls behind is marked overflowed, dropped from the fan-out and closed by
its connection with the resume code (WebSocket 4408, SSE a `resume` event).

A live WebSocket subscriber with nothing buffered is sent to by the hub itself, as it offers
the event: the server's send is started there and almost always completes at once (the
connection's write buffer has room), so a delivery costs no buffer, wake-up or task switch.
A send that has to wait (a client reading slowly) is handed to the subscriber's own task,
which finishes it, sends what was buffered meanwhile in order, and hands back (`pump`).

A buffered item is sent only while it is new (`Subscriber.is_new`): after the position the
catch-up reached, and not history for a subscription that started now (its `Snapshot` saw
the event's transaction committed).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.auth import Caller
from app.live_events import LiveEvent, Position, Snapshot
from app.monitor_filter import MonitorFilter

if TYPE_CHECKING:
    from app.monitor import Hub


@dataclass(frozen=True, slots=True)
class Item:
    """One message for clients, encoded once: an event (with its position) or a live notice.

    `message` is the ASGI message that sends it over a WebSocket, built once too: every
    subscriber's server connection is handed the same one (the server only reads it).
    """

    position: Position | None
    event_id: int | None
    type: str
    text: str
    message: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", {"type": "websocket.send", "text": self.text})


# Sends one item's ASGI message on a subscriber's connection (the server's own `send`): a
# coroutine function, since a send is started by hand (`Subscriber._send_now`).
DirectSend = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


def event_item(event: LiveEvent) -> Item:
    return Item(event.position, event.id, event.type, json.dumps(event.message(), separators=(",", ":")))


@dataclass(eq=False)
class Subscriber:
    """One client: who it is, what it wants, its bounded buffer and where it is in the stream."""

    caller: Caller
    filter: MonitorFilter
    limit: int
    position: Position | None = None
    last_id: int | None = None
    # A subscription without `after` starts now: events committed before it are history.
    since: Snapshot | None = None
    # With `after`: the hub's position when it registered; its catch-up reads at least that far.
    catch_up_to: Position | None = None
    buffer: deque[Item] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)
    # While set, the hub sends this subscriber's items itself as it dispatches them (`offer`),
    # with no buffer, no wake-up and no task switch; its pump sets it once it has nothing left
    # to send, and it is cleared the moment a send cannot complete at once.
    direct: DirectSend | None = None
    # A send started in the dispatch that could not complete at once (the connection's write
    # buffer is full: the client reads slowly), for the pump to finish; or how sending failed.
    pending: tuple[Coroutine[Any, Any, None], Any, Item] | None = None
    failure: BaseException | None = None

    def accepts(self, owner_id: str, type_: str, contract_id: uuid.UUID, status: str | None) -> bool:
        return self.caller.may_access(owner_id) and self.filter.matches(type_, contract_id, status)

    def offer(self, item: Item) -> None:
        """Never blocks: a full buffer marks the subscriber overflowed (its connection closes)."""
        if self.overflowed.is_set():
            return
        if self.direct is not None:
            self._send_now(self.direct, item)
            return
        if len(self.buffer) >= self.limit:
            self.overflowed.set()
            self.wake.set()
            return
        self.buffer.append(item)
        self.wake.set()

    def _send_now(self, direct: DirectSend, item: Item) -> None:
        """Send in the caller's stack: a connection whose write buffer has room sends at once.

        The server's send is started by hand (what an asyncio task would do first) and almost
        always completes then. When it suspends instead (flow control: the client reads
        slowly), the started send goes to the pump, which finishes it and sends whatever
        arrives meanwhile from the buffer, in order; direct sending stops until then.
        """
        if not self.is_new(item):
            return
        coro = direct(item.message)
        try:
            waiting = coro.send(None)
        except StopIteration:
            self.sent(item)
            return
        except Exception as exc:  # the connection is gone: its pump ends with this
            self.direct, self.failure = None, exc
            self.wake.set()
            return
        self.direct, self.pending = None, (coro, waiting, item)
        self.wake.set()

    def is_new(self, item: Item) -> bool:
        """Whether a buffered item is still to be sent: not sent by the catch-up, not history."""
        if item.position is None:
            return True
        if self.since is not None:
            if self.since.committed(item.position):
                return False
            if self.since.xmax == 0 or item.position.xid >= self.since.xmax:
                self.since = None  # in stream order every later event is newer still
        return self.position is None or item.position > self.position

    def sent(self, item: Item) -> None:
        """Record an item as sent (only once the send returned: a cancelled send did not happen)."""
        if item.position is not None:
            self.position = item.position
            self.last_id = item.event_id

    def sent_event(self, event: LiveEvent) -> None:
        self.position = event.position
        self.last_id = event.id


async def pump(
    sub: Subscriber, hub: Hub, send: Callable[[str], Any], direct: DirectSend | None = None
) -> None:
    """Send a subscriber its catch-up and then its live items, until it overflows or is cancelled.

    With `direct` (the WebSocket server's own send), once the catch-up and the buffer are
    sent the hub sends each new item itself as it dispatches it (`Subscriber.offer`); the
    pump then only waits, to finish a send that could not complete at once and send what
    was buffered meanwhile, or to raise how a send failed.
    """
    try:
        await hub.catch_up(sub, send)
        while not sub.overflowed.is_set():
            if sub.failure is not None:
                raise sub.failure
            if sub.pending is not None:
                coro, waiting, item = sub.pending
                await _finish(coro, waiting)
                sub.pending = None
                sub.sent(item)
            while sub.buffer:
                item = sub.buffer.popleft()
                if sub.is_new(item):
                    if direct is None:
                        await send(item.text)
                    else:
                        await direct(item.message)
                    sub.sent(item)
            if sub.overflowed.is_set():
                return
            sub.wake.clear()
            if sub.buffer:
                continue
            sub.direct = direct
            await sub.wake.wait()
    finally:
        sub.direct = None
        if sub.pending is not None:
            sub.pending[0].close()
            sub.pending = None


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Run to its end a coroutine started by hand (`coro.send(None)`) that then suspended.

    What an asyncio task does with a coroutine: wait for the future it yielded (a bare
    `yield` asks for one turn of the loop), then resume it; the future's result or error
    reaches the coroutine when it resumes. Cancelled meanwhile, the coroutine is closed (the
    message is not sent; the connection is ending).
    """
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                # Taken over as a task takes over what its coroutine yields: a future the
                # coroutine is blocked on says so in this flag, and awaiting it again needs it
                # cleared (`asyncio.Future.__await__`).
                waiting._asyncio_future_blocking = False
                await waiting
        except asyncio.CancelledError:
            coro.close()
            raise
        except Exception:
            pass  # the coroutine sees it when it resumes
        try:
            waiting = coro.send(None)
        except StopIteration:
            return


__all__ = ["DirectSend", "Item", "Subscriber", "event_item", "pump"]
