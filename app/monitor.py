"""The live monitor: one reader per API process, many subscribers, filters, back-pressure.

A `Hub` (one per app, started with its first subscriber) follows the event table's tail
(`app.live_events.read_after`, below the commit horizon) whenever a wake-up arrives on the
Redis channel, and at least every `[monitor] poll_seconds`; it reads each new event once, encodes
it once, and offers it to every subscriber whose filter and owner match. It never waits for a
subscriber: each has a bounded buffer (`monitor_ws_buffer_size`), and one that falls behind
is marked overflowed, dropped from the fan-out and closed by its connection with the resume
code (WebSocket 4408, SSE a `resume` event); it reconnects with the last id it saw.

This module is the hub: reading the table (the tail, a subscriber's catch-up, the wake-ups) and
the registry of subscribers it offers what it reads to. What a subscriber asks for is
`app.monitor_filter`; a subscriber, its buffer and how its items reach its connection (the
hub's direct send, `pump`) are `app.monitor_subscribers`; the streams' endpoints are
`app.http.monitor_ws` (WebSocket) and `app.http.monitor_sse` (Server-Sent Events).

A subscriber that connects with `after` (the last event id it saw) is registered with the hub
first, so live events start collecting in its buffer, and then catches up from the table in
pages (its own owner and contract ids, below the horizon) until it has read at least as far as
the hub had when it registered (a short page says how far it is complete: just below its
horizon). Buffered live events at or before the caught-up position are dropped. Nothing is
missed, nothing is sent twice, and the order is the stream's `(xid, id)` order.

A subscriber without `after` starts now: it is registered, then a database snapshot is taken,
and the buffered events whose transactions that snapshot saw committed are history, not sent
(`Snapshot`: an event committed just before can still be above the horizon, behind an older
transaction that is still open).

Each wake-up names the last event id of the transaction that sent it. When a read below the
cluster's horizon does not return it (an older transaction anywhere on the PostgreSQL cluster
is still open), the hub reads again below the database's horizon (`Horizon.DATABASE`: other
databases' transactions left out), and while it is still held back (by one of this
database's transactions) looks again after 5 ms, then 10, 20, 40, then every 50 ms (for up to
30 s), so the event follows that transaction's end closely instead of waiting for the next
poll or wake-up.

Heartbeat notices are live only: they carry no id and are not replayed on catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis
from sqlalchemy import Engine, select

from app.auth import Caller
from app.config import Settings, get_settings
from app.live_events import (
    PAGE_SIZE,
    Horizon,
    LiveEvent,
    Page,
    Position,
    Snapshot,
    channel,
    current_snapshot,
    position_of,
    read_after,
    redis_url,
    tail_position,
)
from app.monitor_filter import MonitorFilter
from app.monitor_subscribers import Item, Subscriber, event_item

log = logging.getLogger(__name__)

# An event announced by a wake-up but still above the commit horizon (an older transaction
# somewhere on the cluster is still open) is looked for again after this long, doubling up to
# RETRY_MAX_SECONDS: it is delivered within that of the transaction's end, not at the next
# poll. While one is held, a hub reads at most 1/RETRY_MAX_SECONDS times a second (an indexed
# query that finds nothing).
RETRY_FIRST_SECONDS: Final = 0.005
RETRY_MAX_SECONDS: Final = 0.05
# An announced event not read by then is no longer waited for (the poll goes on).
AWAIT_LIMIT_SECONDS: Final = 30.0
# Event ids the hub dispatched, kept to recognise a wake-up that arrives after its read.
RECENT_IDS: Final = 10_000


class Hub:
    """The per-process reader and fan-out (see the module docstring)."""

    def __init__(
        self, engine_factory: Callable[[], Engine], settings: Callable[[], Settings] = get_settings
    ) -> None:
        self._engine_factory = engine_factory
        self._settings = settings
        self.subscribers: set[Subscriber] = set()
        self.position: Position | None = None
        self._wake = asyncio.Event()
        self._started: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._owners: dict[uuid.UUID, tuple[str, str]] = {}
        self.events_read = 0
        # Wake-ups' last event ids not read yet (id -> when announced), and ids already read.
        self._awaited: dict[int, float] = {}
        self._recent: set[int] = set()
        self._retry = RETRY_FIRST_SECONDS

    @property
    def engine(self) -> Engine:
        return self._engine_factory()

    async def start(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self._run(), name="monitor-hub")
        await self._ready.wait()

    async def stop(self) -> None:
        if self._started is not None:
            self._started.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._started
            self._started = None

    async def subscribe(self, caller: Caller, flt: MonitorFilter, after: int | None) -> Subscriber:
        """Register a subscriber; with `after`, it catches up (`catch_up`) before its live items."""
        await self.start()
        settings = self._settings()
        sub = Subscriber(caller, flt, settings.contracts.monitor_ws_buffer_size)
        if after is not None:
            sub.position = await asyncio.to_thread(self._position_of, after)
            sub.last_id = after
            self.subscribers.add(sub)
            sub.catch_up_to = self.position  # from here on the hub's reads reach the buffer
        else:
            # Live from now. Registered first, so whatever the hub reads from here on reaches
            # the buffer; then the snapshot says which of it had committed before this moment
            # (history: `is_new` drops it). An event committed after the snapshot cannot have
            # been read before the registration.
            self.subscribers.add(sub)
            sub.since = await asyncio.to_thread(self._snapshot)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _position_of(self, after: int) -> Position | None:
        with self.engine.connect() as conn, _session(conn) as session:
            return position_of(session, after)

    async def catch_up(self, sub: Subscriber, send: Callable[[str], Any]) -> int:
        """Send the stored events after the subscriber's position; returns how many were sent.

        Done once the table has been read at least as far as the hub had read when the
        subscriber registered (`catch_up_to`): everything after that is in its buffer. A read
        whose horizon is still short of it (the hub's was the database's, this one's lags for
        a moment) is repeated shortly.
        """
        sent = 0
        owner = None if sub.caller.is_admin else sub.caller.owner_id
        retry = RETRY_FIRST_SECONDS
        while sub.position is not None:
            page = await asyncio.to_thread(
                self._read, sub.position, owner, tuple(sub.filter.contract_ids), Horizon.DATABASE
            )
            for event in page.events:
                if sub.filter.matches(event.type, event.contract_id, event.status):
                    await send(event_item(event).text)
                    sent += 1
                sub.sent_event(event)
            if len(page.events) == PAGE_SIZE:
                continue
            target = sub.catch_up_to
            if page.complete_to is None or target is None or page.complete_to >= target:
                break
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_MAX_SECONDS)
        return sent

    def _read(
        self,
        after: Position,
        owner: str | None,
        contract_ids: tuple[uuid.UUID, ...],
        horizon: Horizon = Horizon.CLUSTER,
    ) -> Page:
        with self.engine.connect() as conn, _session(conn) as session:
            return read_after(session, after, PAGE_SIZE, owner, contract_ids, horizon)

    def _snapshot(self) -> Snapshot:
        with self.engine.connect() as conn, _session(conn) as session:
            return current_snapshot(session)

    def _tail(self) -> Position:
        with self.engine.connect() as conn, _session(conn) as session:
            return tail_position(session)

    async def _run(self) -> None:
        listener: asyncio.Task[None] | None = None
        while self.position is None:
            try:
                self.position = await asyncio.to_thread(self._tail)
            except Exception:
                log.exception("monitor: cannot read the event table's tail; retrying")
                await asyncio.sleep(1)
        self._ready.set()
        try:
            listener = asyncio.create_task(self._listen(), name="monitor-wakeups")
            while True:
                poll = self._settings().monitor.poll_seconds
                woken = True
                try:
                    await asyncio.wait_for(self._wake.wait(), self._next_read_in(poll))
                except TimeoutError:
                    woken = False
                self._wake.clear()
                try:
                    # The cluster's horizon first (cheap); the database's when an event a
                    # wake-up announced is still held back (another database's transaction,
                    # or one of ours: then the retries below wait for it).
                    await self._follow(Horizon.CLUSTER)
                    if self._awaited:
                        await self._follow(Horizon.DATABASE)
                except Exception:
                    log.exception("monitor: reading new events failed; retrying")
                    await asyncio.sleep(0.5)
                if not self._awaited:
                    self._retry = RETRY_FIRST_SECONDS
                elif not woken:  # still held back: look again, less and less often
                    self._retry = min(self._retry * 2, RETRY_MAX_SECONDS, poll)
        finally:
            if listener is not None:
                listener.cancel()

    def _next_read_in(self, poll: float) -> float:
        """The poll, or sooner while an announced event is still held back by the horizon."""
        if not self._awaited:
            return poll
        too_old = asyncio.get_running_loop().time() - AWAIT_LIMIT_SECONDS
        for event_id in [i for i, at in self._awaited.items() if at < too_old]:
            del self._awaited[event_id]
        return min(self._retry, poll) if self._awaited else poll

    async def _follow(self, horizon: Horizon) -> None:
        """Read everything new below the horizon and offer it to the subscribers."""
        while self.position is not None:
            page = await asyncio.to_thread(self._read, self.position, None, (), horizon)
            if page.events:
                self.position = page.events[-1].position
                self.events_read += len(page.events)
                self._dispatch(page.events)
            if len(page.events) < PAGE_SIZE:
                return

    def _dispatch(self, events: list[LiveEvent]) -> None:
        if len(self._recent) > RECENT_IDS:
            self._recent.clear()
        for event in events:
            self._owners[event.contract_id] = (event.owner_id, event.contract_status)
            self._recent.add(event.id)
            self._awaited.pop(event.id, None)
            if not self.subscribers:
                continue
            item: Item | None = None
            for sub in list(self.subscribers):
                if sub.accepts(event.owner_id, event.type, event.contract_id, event.status):
                    item = item or event_item(event)
                    sub.offer(item)
                    if sub.overflowed.is_set():
                        self.subscribers.discard(sub)
        if len(self._owners) > 100_000:
            self._owners.clear()

    async def _listen(self) -> None:
        """Follow the Redis wake-up channel; reconnect after a failure (the poll covers the gap)."""
        while True:
            client = aioredis.Redis.from_url(redis_url(self._settings()))
            try:
                pubsub = client.pubsub()
                await pubsub.subscribe(channel(self._settings()))
                self._wake.set()  # anything committed while we were not listening
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    await self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("monitor: wake-up channel lost (%s); polling until it is back", exc)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _on_message(self, data: bytes | str) -> None:
        try:
            batch = json.loads(data)
        except ValueError:
            return
        notices = []
        for message in batch if isinstance(batch, list) else [batch]:
            if not isinstance(message, dict):
                continue
            if "events" in message:
                last = message.get("last")
                if isinstance(last, int) and not isinstance(last, bool) and last not in self._recent:
                    self._awaited[last] = asyncio.get_running_loop().time()
                self._wake.set()
            elif "notice" in message:
                notices.append(message)
        if notices and self.subscribers:
            await self._dispatch_notices(notices)

    async def _dispatch_notices(self, notices: list[dict[str, Any]]) -> None:
        parsed: list[tuple[uuid.UUID, dict[str, Any]]] = []
        for notice in notices:
            try:
                contract_id = uuid.UUID(str(notice["contractId"]))
            except (KeyError, ValueError):
                continue
            raw = notice.get("payload")
            payload: dict[str, Any] = raw if isinstance(raw, dict) else {}
            body = {**payload, "id": None, "type": str(notice["notice"]), "contractId": str(contract_id)}
            parsed.append((contract_id, body))
        unknown = {cid for cid, _ in parsed if cid not in self._owners}
        if unknown:
            self._owners.update(await asyncio.to_thread(self._load_owners, unknown))
        for contract_id, body in parsed:
            owner = self._owners.get(contract_id)
            if owner is None:
                continue
            item: Item | None = None
            for sub in list(self.subscribers):
                if sub.accepts(owner[0], body["type"], contract_id, owner[1]):
                    item = item or Item(None, None, body["type"], json.dumps(body, separators=(",", ":")))
                    sub.offer(item)
                    if sub.overflowed.is_set():
                        self.subscribers.discard(sub)

    def _load_owners(self, ids: set[uuid.UUID]) -> dict[uuid.UUID, tuple[str, str]]:
        from app.models import Contract

        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Contract.id, Contract.owner_id, Contract.status).where(Contract.id.in_(ids))
            ).all()
        return {row[0]: (row[1], row[2]) for row in rows}


@contextlib.contextmanager
def _session(conn: Any) -> Any:
    from sqlalchemy.orm import Session

    with Session(bind=conn) as session:
        yield session


__all__ = ["Hub"]
