"""The task outbox after COMMIT: retiring rows the broker has, and relaying the ones it has not.

A unit of work writes its follow-ups to `task_outbox` in the same transaction as the change
(`app.db`) and sends them after COMMIT. Two things keep that cheap and lossless:

- **Retiring** a sent row must not cost the command a second transaction (it used to be four
  more round trips per command). Sent ids are handed to a per-process `SentRows` buffer that
  deletes them in batches from a background thread, off the request's path. If the process
  dies before a batch is deleted, those rows are relayed again: every task is idempotent, so
  the rare double send is harmless; a lost one would not be.
- **Relaying** rows whose send failed (broker down) or never happened (crash after COMMIT):
  `relay_outbox`, run by beat, drains the whole backlog in bounded chunks, each chunk claimed
  with SKIP LOCKED, sent, and deleted in one short transaction.

So the table holds only follow-ups not yet known to be in the broker: it does not grow in
steady state.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from typing import Final

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from app.broker import Sender, send_task
from app.models import OutboxMessage, utcnow

log = logging.getLogger(__name__)

FLUSH_INTERVAL_SECONDS: Final = 0.25
FLUSH_BATCH: Final = 1000
# Past this many ids waiting (the database has been unreachable for a long while) the oldest
# are forgotten; their rows stay and the relay sends them again, which is harmless.
MAX_PENDING: Final = 100_000


class SentRows:
    """Outbox ids whose messages the broker accepted, deleted in batches by a daemon thread.

    The thread is started lazily and again after a fork (Celery's prefork children inherit
    the object but not the thread), and the buffer is flushed at interpreter exit.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pid = -1

    def add(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._ids.extend(ids)
            if len(self._ids) > MAX_PENDING:
                del self._ids[: len(self._ids) - MAX_PENDING]
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="outbox-retire", daemon=True).start()
        if len(self._ids) >= FLUSH_BATCH:
            self._wake.set()

    def close(self) -> None:
        """Retire what is buffered and stop the thread (the engine is being disposed)."""
        self.flush()
        with self._lock:
            self._pid = -1
            self._ids.clear()
        self._wake.set()

    def pending(self) -> int:
        with self._lock:
            return len(self._ids)

    def flush(self) -> int:
        """Delete every buffered row now; returns how many ids were retired."""
        retired = 0
        while True:
            with self._lock:
                batch, self._ids = self._ids[:FLUSH_BATCH], self._ids[FLUSH_BATCH:]
            if not batch:
                return retired
            try:
                with self._engine.begin() as conn:
                    conn.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(batch)))
            except Exception:
                log.warning("could not retire %d sent outbox rows yet; will retry", len(batch), exc_info=True)
                with self._lock:
                    self._ids[:0] = batch
                return retired
            retired += len(batch)

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            self._wake.wait(FLUSH_INTERVAL_SECONDS)
            self._wake.clear()
            if self.pending():
                self.flush()
            else:
                time.sleep(0)


_sent_rows: dict[int, SentRows] = {}
_sent_rows_lock = threading.Lock()


def sent_rows(engine: Engine) -> SentRows:
    """The process's retiring buffer for one engine (one per database)."""
    with _sent_rows_lock:
        rows = _sent_rows.get(id(engine))
        if rows is None:
            rows = _sent_rows[id(engine)] = SentRows(engine)
        return rows


def close_sent_rows() -> None:
    """Retire every buffer's rows and stop their threads; called when engines are disposed."""
    with _sent_rows_lock:
        buffers = list(_sent_rows.values())
        _sent_rows.clear()
    for rows in buffers:
        rows.close()


@atexit.register
def _flush_all() -> None:
    for rows in list(_sent_rows.values()):
        rows.flush()


def relay_outbox(
    engine: Engine,
    older_than_seconds: float = 10.0,
    chunk: int = 500,
    max_seconds: float = 50.0,
    sender: Sender = send_task,
) -> int:
    """Send every unsent follow-up older than `older_than_seconds`; returns how many were sent.

    Younger rows are left to the send that follows their own commit. The backlog is drained
    in chunks of `chunk` rows, each claimed with SKIP LOCKED (so overlapping relays never send
    one row twice), sent, and deleted in its own short transaction, until none is left or
    `max_seconds` have passed (the next run goes on). A send that fails (broker down) ends the
    run: the rows that went out are deleted, the others stay for the next run.
    """
    deadline = time.monotonic() + max_seconds
    sent = 0
    while time.monotonic() < deadline:
        now = utcnow()
        with Session(engine) as session, session.begin():
            rows = list(
                session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.created_at < now - timedelta(seconds=older_than_seconds))
                    .order_by(OutboxMessage.id)
                    .limit(chunk)
                    .with_for_update(skip_locked=True)
                )
            )
            handed: list[int] = []
            try:
                for row in rows:
                    wait = (row.not_before - now).total_seconds() if row.not_before else None
                    sender(row.task, row.payload, wait)
                    handed.append(row.id)
            except Exception:
                log.warning(
                    "outbox relay: the broker refused a send after %d of %d rows; the rest stay for the "
                    "next run",
                    len(handed),
                    len(rows),
                    exc_info=True,
                )
                rows = []  # stop after retiring what did go out
            if handed:
                session.execute(delete(OutboxMessage).where(OutboxMessage.id.in_(handed)))
        sent += len(handed)
        if len(rows) < chunk:
            break
    return sent


__all__ = ["SentRows", "close_sent_rows", "relay_outbox", "sent_rows"]
