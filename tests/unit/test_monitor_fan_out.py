"""The live monitor's fan-out to one subscriber: sent in the dispatch while the connection takes
it at once, handed to the subscriber's pump when it does not, in order, bounded (app.monitor_subscribers)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from app.auth import Caller, Role
from app.live_events import Position
from app.monitor_filter import MonitorFilter
from app.monitor_subscribers import Item, Subscriber, pump


class Hub:
    """What `pump` asks of the hub: a catch-up (none here: the subscriber starts now)."""

    async def catch_up(self, sub: Subscriber, send: Any) -> int:
        return 0


class Connection:
    """A server's `send`: completes at once while `open` is set, else waits for it."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.sent: list[str] = []
        self.fails: BaseException | None = None
        self.abandoned = 0

    async def send(self, message: dict[str, Any]) -> None:
        try:
            await self.open.wait()
        except GeneratorExit:
            self.abandoned += 1
            raise
        if self.fails is not None:
            raise self.fails
        assert message["type"] == "websocket.send"
        self.sent.append(message["text"])


def item(n: int) -> Item:
    return Item(Position(1, n), n, "status_changed", f'{{"id":{n}}}')


def subscriber(limit: int = 100) -> Subscriber:
    return Subscriber(Caller(uuid.uuid4(), "owner", Role.USER), MonitorFilter(), limit)


async def live(sub: Subscriber, conn: Connection) -> asyncio.Task[None]:
    """The subscriber's pump, started, caught up and waiting for items."""
    task = asyncio.create_task(pump(sub, Hub(), lambda text: None, conn.send))  # type: ignore[arg-type]
    for _ in range(10):
        await asyncio.sleep(0)
    assert sub.direct is not None
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_items_are_sent_in_the_dispatch_itself_while_the_connection_takes_them() -> None:
    async def scenario() -> None:
        sub, conn = subscriber(), Connection()
        task = await live(sub, conn)
        for n in (1, 2, 3):
            sub.offer(item(n))
        # No await since the offers: the hub sent them itself, nothing was buffered.
        assert conn.sent == ['{"id":1}', '{"id":2}', '{"id":3}']
        assert not sub.buffer and sub.last_id == 3
        await stop(task)

    asyncio.run(scenario())


def test_a_send_that_must_wait_goes_to_the_pump_and_what_follows_is_buffered_in_order() -> None:
    async def scenario() -> None:
        sub, conn = subscriber(), Connection()
        task = await live(sub, conn)
        sub.offer(item(1))
        conn.open.clear()  # the client stops reading: the server's write buffer is full
        for n in (2, 3, 4):
            sub.offer(item(n))
        assert conn.sent == ['{"id":1}']
        assert sub.direct is None and sub.pending is not None and [i.event_id for i in sub.buffer] == [3, 4]
        await asyncio.sleep(0.01)
        assert conn.sent == ['{"id":1}']  # still waiting for the client
        conn.open.set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert conn.sent == [f'{{"id":{n}}}' for n in (1, 2, 3, 4)]
        assert sub.direct is not None and sub.pending is None and sub.last_id == 4
        sub.offer(item(5))  # and the hub sends directly again
        assert conn.sent[-1] == '{"id":5}'
        await stop(task)

    asyncio.run(scenario())


def test_a_client_that_stays_behind_overflows_its_buffer() -> None:
    async def scenario() -> None:
        sub, conn = subscriber(limit=3), Connection()
        task = await live(sub, conn)
        conn.open.clear()
        for n in range(1, 6):  # one waiting send, three buffered, the fifth overflows
            sub.offer(item(n))
        assert sub.overflowed.is_set()
        await asyncio.wait_for(task, 1)  # the pump ends: the connection closes with the resume code
        assert conn.abandoned == 1 and conn.sent == []

    asyncio.run(scenario())


def test_a_send_that_fails_in_the_dispatch_ends_the_pump_with_its_error() -> None:
    async def scenario() -> None:
        sub, conn = subscriber(), Connection()
        task = await live(sub, conn)
        conn.fails = ConnectionResetError("the client went away")
        sub.offer(item(1))  # never raises into the hub
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(task, 1)
        sub.offer(item(2))
        assert sub.direct is None and [i.event_id for i in sub.buffer] == [2]

    asyncio.run(scenario())


def test_a_pump_cancelled_while_a_send_waits_abandons_that_send() -> None:
    async def scenario() -> None:
        sub, conn = subscriber(), Connection()
        task = await live(sub, conn)
        conn.open.clear()
        sub.offer(item(1))
        await asyncio.sleep(0)
        await stop(task)
        assert conn.abandoned == 1 and sub.pending is None and sub.direct is None
        conn.open.set()
        await asyncio.sleep(0)
        assert conn.sent == []

    asyncio.run(scenario())
