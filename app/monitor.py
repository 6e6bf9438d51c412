"""The live monitor: one reader per API process, many subscribers, filters, back-pressure.

A `Hub` (one per app, started with its first subscriber) follows the event table's tail
(`app.live_events.read_after`, below the commit horizon) whenever a wake-up arrives on the
Redis channel, and at least every `[monitor] poll_seconds`; it reads each new event once, encodes
it once, and offers it to every subscriber whose filter and owner match. It never waits for a
subscriber: each has a bounded buffer (`monitor_ws_buffer_size`), and one that falls behind
is marked overflowed, dropped from the fan-out and closed by its connection with the resume
code (WebSocket 4408, SSE a `resume` event); it reconnects with the last id it saw.

A live WebSocket subscriber with nothing buffered is sent to by the hub itself, as it offers
the event: the server's send is started there and almost always completes at once (the
connection's write buffer has room), so a delivery costs no buffer, wake-up or task switch.
A send that has to wait (a client reading slowly) is handed to the subscriber's own task,
which finishes it, sends what was buffered meanwhile in order, and hands back (`pump`).

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
from collections import deque
from collections.abc import Callable, Collection, Coroutine, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import redis.asyncio as aioredis
from sqlalchemy import Engine, select

from app.auth import Caller
from app.config import Settings, get_settings
from app.domain.lifecycle import Status
from app.domain.supervisors import uuid_problem
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

log = logging.getLogger(__name__)

STALE_TYPES: Final = frozenset({"stale_detected", "stale_cleared"})
HEARTBEAT: Final = "heartbeat"
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


class FilterError(ValueError):
    """A filter message that cannot be used; `problems` say which field and why."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))
        self.problems = problems


# A filter message's fields (seed 4.1.2): each camelCase spelling and the seed's snake_case one.
FILTER_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "contractIds": "contract_ids",
        "statuses": "statuses",
        "includeStale": "include_stale",
        "includeHeartbeats": "include_heartbeats",
    }
)


def _field(data: Mapping[str, Any], camel: str, snake: str) -> Any:
    return data[camel] if camel in data else data.get(snake)


def _both_spellings(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A problem for each field given in both spellings: which one to obey would be a guess
    (`{"contract_ids": [X], "contractIds": []}` subscribed to every contract: camelCase won)."""
    return [
        {
            "field": camel,
            "problem": f"is given twice, as {camel} and as {snake}: send one spelling of a field",
            "given": [camel, snake],
        }
        for camel, snake in FILTER_FIELDS.items()
        if camel != snake and camel in data and snake in data
    ]


def _unknown_fields(data: Mapping[str, Any], also: Collection[str]) -> list[dict[str, Any]]:
    """A problem for each field no filter message has: a misspelt `contractID` must not widen
    the subscription to everything (as an ignored field would)."""
    snake = [s for c, s in FILTER_FIELDS.items() if s != c]
    allowed = [*FILTER_FIELDS, *also, *snake]
    listed = f"{', '.join([*FILTER_FIELDS, *also])} (or the snake_case {', '.join(snake)})"
    return [
        {"field": str(name), "problem": f"is not a filter field; allowed: {listed}", "allowed": allowed}
        for name in data
        if name not in allowed
    ]


@dataclass(frozen=True, slots=True)
class MonitorFilter:
    """Seed 4.1.2: contract ids, statuses, include_stale, include_heartbeats (empty: everything)."""

    contract_ids: frozenset[uuid.UUID] = frozenset()
    statuses: frozenset[str] = frozenset()
    include_stale: bool = False
    include_heartbeats: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any], also: Collection[str] = ()) -> MonitorFilter:
        """From a filter message, camelCase (`contractIds`) or the seed's snake_case.

        A field that is neither, nor one of `also` (what else the message may carry, such as
        the subscription's `after`, read by the caller), is refused like a bad value; so is a
        field given in both spellings.
        """
        problems = [*_unknown_fields(data, also), *_both_spellings(data)]
        raw_ids = _field(data, "contractIds", "contract_ids") or []
        ids: set[uuid.UUID] = set()
        if not isinstance(raw_ids, list):
            problems.append({"field": "contractIds", "problem": "must be a list of contract ids"})
            raw_ids = []
        for raw in raw_ids:
            # The heartbeat's rule: `uuid.UUID` also read braces, urn:uuid: and full-width digits.
            problem = uuid_problem(raw)
            if problem is None:
                ids.add(uuid.UUID(raw))
            else:
                problems.append({"field": "contractIds", "problem": problem, "given": raw})
        raw_statuses = _field(data, "statuses", "statuses") or []
        allowed = [s.value for s in Status]
        if not isinstance(raw_statuses, list):
            problems.append({"field": "statuses", "problem": "must be a list of statuses"})
            raw_statuses = []
        for raw in raw_statuses:
            if raw not in allowed:
                problems.append(
                    {
                        "field": "statuses",
                        "problem": f"'{raw}' is not a status; allowed: {', '.join(allowed)}",
                        "given": raw,
                    }
                )
        flags = {}
        for camel, snake in (("includeStale", "include_stale"), ("includeHeartbeats", "include_heartbeats")):
            value = _field(data, camel, snake)
            if value is not None and not isinstance(value, bool):
                problems.append({"field": camel, "problem": "must be true or false", "given": value})
            flags[snake] = bool(value)
        if len(ids) > 1000:
            problems.append({"field": "contractIds", "problem": "at most 1000 contract ids"})
        if problems:
            raise FilterError(problems)
        return cls(
            frozenset(ids), frozenset(raw_statuses), flags["include_stale"], flags["include_heartbeats"]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "contractIds": sorted(str(c) for c in self.contract_ids),
            "statuses": sorted(self.statuses),
            "includeStale": self.include_stale,
            "includeHeartbeats": self.include_heartbeats,
        }

    def matches(self, type_: str, contract_id: uuid.UUID, status: str | None) -> bool:
        if type_ in STALE_TYPES and not self.include_stale:
            return False
        if type_ == HEARTBEAT and not self.include_heartbeats:
            return False
        if self.contract_ids and contract_id not in self.contract_ids:
            return False
        return not self.statuses or status in self.statuses


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


__all__ = [
    "FILTER_FIELDS",
    "HEARTBEAT",
    "STALE_TYPES",
    "DirectSend",
    "FilterError",
    "Hub",
    "Item",
    "MonitorFilter",
    "Subscriber",
    "event_item",
    "pump",
]
