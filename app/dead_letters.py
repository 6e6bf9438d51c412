"""Messages that could not be applied, kept whole for a person to read, fix and replay.

Redis has no dead-letter exchange, so this table is ours: a message that does not decode,
names no known task, fails validation, fails its principal check, raises a domain error or
exhausts its deliveries lands here once (a fingerprint de-duplicates repeats, counting
them in `attempts`) and is acknowledged, so it never crash-loops a worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import DeadLetter


@dataclass(frozen=True, slots=True)
class RejectedMessage:
    queue: str | None
    task_name: str | None
    message_id: str | None
    headers: Mapping[str, Any] | None
    raw_body: str
    content_type: str | None
    content_encoding: str | None
    error: str

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update((self.task_name or "").encode())
        digest.update(b"\0")
        digest.update((self.message_id or "").encode())
        digest.update(b"\0")
        digest.update(self.raw_body.encode())
        return digest.hexdigest()


def body_text(body: bytes | str | Any) -> str:
    """A message body as text we can store; undecodable bytes are kept as latin-1, losslessly."""
    if isinstance(body, bytes):
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return body.decode("latin-1")
    if isinstance(body, str):
        return body
    return json.dumps(body, default=str)


def jsonable_headers(headers: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if headers is None:
        return None
    decoded: dict[str, Any] = json.loads(json.dumps(dict(headers), default=str))
    return decoded


def record_dead_letter(session: Session, msg: RejectedMessage, now: datetime) -> None:
    """Insert, or count one more attempt of the same message."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = {
        "fingerprint": msg.fingerprint(),
        "queue": msg.queue,
        "task_name": msg.task_name,
        "message_id": msg.message_id,
        "headers": jsonable_headers(msg.headers),
        "raw_body": msg.raw_body,
        "content_type": msg.content_type,
        "content_encoding": msg.content_encoding,
        "error": msg.error,
        "first_seen": now,
        "last_seen": now,
        "attempts": 1,
    }
    stmt = insert(DeadLetter).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["fingerprint"],
        set_={
            "attempts": DeadLetter.attempts + 1,
            "last_seen": now,
            "error": msg.error,
            "replayed_at": None,
        },
    )
    session.execute(stmt)


def list_dead_letters(session: Session, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query))


def mark_replayed(session: Session, dead_letter_id: int, now: datetime) -> None:
    session.execute(update(DeadLetter).where(DeadLetter.id == dead_letter_id).values(replayed_at=now))


__all__ = ["RejectedMessage", "body_text", "list_dead_letters", "mark_replayed", "record_dead_letter"]
