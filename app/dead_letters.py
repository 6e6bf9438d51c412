"""Messages that could not be applied, kept whole for a person to read, fix and replay.

Redis has no dead-letter exchange, so this table is ours: a message that does not decode,
names no known task, fails validation, fails its principal check, raises a domain error or
exhausts its deliveries lands here once (a fingerprint de-duplicates repeats, counting
them in `attempts`) and is acknowledged, so it never crash-loops a worker.

This module owns the table's whole life: recording, listing, loading one row, and turning a
row back into the task call it was (`replay`). The CLI only formats and prints; the broker
is handed in as a `ReplaySender`, so `app` never imports the Celery app.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.message_outcomes import Sent, mark_refused, sent_from_payload
from app.models import DeadLetter
from app.schemas import ErrorCode


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
    # The refusal's code as the sender sees it (VALIDATION_FAILED, MESSAGE_REJECTED, ...);
    # None for messages written before codes were kept, or by the consumer (undecodable).
    error_code: str | None = None

    def sender(self) -> Sent | None:
        """Whose report this was (principal, message id), if it is one a sender waits on."""
        return sender_of(self.task_name, self.headers, self.raw_body)

    def sender_message_id(self) -> str | None:
        sent = self.sender()
        return sent.message_id if sent else None

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


def sender_of(task_name: str | None, headers: Mapping[str, Any] | None, raw_body: str) -> Sent | None:
    """The sender's key of a stored message: its first argument's principalId and messageId.

    The Celery task id (the dead letter's `message_id`) means nothing to a daemon; the id
    the daemon chose (or was given) is inside the payload.
    """
    try:
        call = decode_for_replay(task_name, headers, raw_body)
    except NotReplayable:
        return None
    return sent_from_payload(call.task_name, call.args[0] if call.args else call.kwargs.get("message"))


# What the sender of a message a worker failed on reads: the failure's own text (an exception's
# words, a driver's message naming hosts, tables or SQL) is for the operators, who read it in
# the dead letter, not for whoever sent the message.
INTERNAL_REFUSAL = (
    "The service failed while applying this message (an internal error, not a problem with the "
    "message). It is kept as a dead letter, where the operators see what went wrong; send it "
    "again later with the same id, or ask them."
)


def _refusal(msg: RejectedMessage) -> tuple[str, str]:
    """(code, message) for the sender: the error's first line without its `CODE: ` prefix, or
    for an internal error `INTERNAL_REFUSAL`."""
    first = msg.error.strip().splitlines()[0] if msg.error.strip() else ""
    code = msg.error_code or (first.split(":", 1)[0] if ":" in first else "REFUSED")
    if code == ErrorCode.INTERNAL_ERROR:
        return code, INTERNAL_REFUSAL
    prefix = f"{code}: "
    return code, first[len(prefix) :] if first.startswith(prefix) else first


def record_dead_letter(session: Session, msg: RejectedMessage, now: datetime) -> None:
    """Insert, or count one more attempt of the same message; its sender's outcome is refused.

    The refusal is written in the dead letter's transaction, so a sender never sees
    `pending` for a message that is parked (nor `refused` for one that is not).
    """
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
    sent = msg.sender()
    if sent is not None:
        code, message = _refusal(msg)
        mark_refused(session, sent, code, message, now)


def list_dead_letters(session: Session, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
    query = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if not include_replayed:
        query = query.where(DeadLetter.replayed_at.is_(None))
    return list(session.scalars(query))


def mark_replayed(session: Session, dead_letter_id: int, now: datetime) -> None:
    session.execute(update(DeadLetter).where(DeadLetter.id == dead_letter_id).values(replayed_at=now))


# -- reading one and replaying it ---------------------------------------------------------------


class DeadLetterError(Exception):
    """A dead letter cannot be read or replayed as asked; the message says what to do."""


class DeadLetterNotFound(DeadLetterError):
    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(
            f"no dead letter with id {dead_letter_id}; list them with 'makima dead-letters list --all'."
        )


class AlreadyReplayed(DeadLetterError):
    def __init__(self, dead_letter_id: int, replayed_at: datetime) -> None:
        super().__init__(
            f"dead letter {dead_letter_id} was already replayed at {replayed_at.isoformat()}; "
            "pass --force to send it again."
        )


class NotReplayable(DeadLetterError):
    """The stored message cannot be turned back into a task call as it is."""


def get_dead_letter(session: Session, dead_letter_id: int, *, lock: bool = False) -> DeadLetter:
    """The row, locked when replaying so two replays of one message cannot both send it."""
    query = select(DeadLetter).where(DeadLetter.id == dead_letter_id)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise DeadLetterNotFound(dead_letter_id)
    return row


@dataclass(frozen=True, slots=True)
class Replayable:
    """A dead letter decoded back into the call a worker would run."""

    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]


def decode_for_replay(task_name: str | None, headers: Mapping[str, Any] | None, raw_body: str) -> Replayable:
    """Recover (task, args, kwargs) from a stored dead letter.

    Two shapes are written: `workers.dead_letter.park_task` stores
    `{"args": [...], "kwargs": {...}}` with the task name; `workers.consumer` stores the
    broker message as received, whose Celery protocol-2 body is `[args, kwargs, embed]`
    (the task name is in the headers) and whose protocol-1 body is a dict naming the task.
    """
    name = task_name or (headers or {}).get("task")
    try:
        body = json.loads(raw_body)
    except ValueError as exc:
        raise NotReplayable(f"its body is not JSON ({exc})") from None
    args: Any
    kwargs: Any
    if isinstance(body, dict) and "args" in body and "kwargs" in body and set(body) <= {"args", "kwargs"}:
        args, kwargs = body["args"], body["kwargs"]
    elif isinstance(body, list) and len(body) == 3:
        args, kwargs = body[0], body[1]
    elif isinstance(body, dict) and "task" in body:
        name = name or body.get("task")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
    else:
        raise NotReplayable(
            "its body is JSON but not a Celery task call ([args, kwargs, embed] or {args, kwargs})"
        )
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise NotReplayable("its args are not a list or its kwargs are not an object")
    if not name:
        raise NotReplayable("it names no task (no task name, no 'task' header)")
    return Replayable(str(name), args, kwargs)


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay sent: the task, the queue it went to, and its new task id."""

    task_name: str
    queue: str
    task_id: str


# (call, new task id) -> the queue it was sent to. Raises whatever the broker raises.
ReplaySender = Callable[[Replayable, str], str]


def replay(
    session: Session,
    dead_letter_id: int,
    *,
    send: ReplaySender,
    known_task: Callable[[str], bool],
    now: datetime,
    force: bool = False,
) -> Replayed:
    """Send a dead letter's task again with a new task id, and mark the row replayed.

    Call inside a unit of work: the row is locked, and the message is sent before the
    transaction that marks it commits. If sending fails nothing is marked; if the commit
    fails after sending, a second replay sends it again, which is safe because every task is
    idempotent (daemon reports carry their own message id).
    """
    row = get_dead_letter(session, dead_letter_id, lock=True)
    if row.replayed_at is not None and not force:
        raise AlreadyReplayed(dead_letter_id, row.replayed_at)
    try:
        call = decode_for_replay(row.task_name, row.headers, row.raw_body)
    except NotReplayable as exc:
        raise NotReplayable(
            f"dead letter {dead_letter_id} cannot be replayed: the body does not decode as a task "
            f"call: {exc}. It cannot be replayed until it is fixed."
        ) from None
    if not known_task(call.task_name):
        raise NotReplayable(
            f"dead letter {dead_letter_id} names task '{call.task_name}', which is not a task of this "
            "service (app.queues.TaskName); "
            "it cannot be replayed until it is fixed."
        )
    task_id = str(uuid.uuid4())
    queue = send(call, task_id)
    mark_replayed(session, dead_letter_id, now)
    return Replayed(call.task_name, queue, task_id)


__all__ = [
    "AlreadyReplayed",
    "DeadLetterError",
    "DeadLetterNotFound",
    "NotReplayable",
    "RejectedMessage",
    "ReplaySender",
    "Replayable",
    "Replayed",
    "body_text",
    "decode_for_replay",
    "get_dead_letter",
    "list_dead_letters",
    "mark_replayed",
    "record_dead_letter",
    "replay",
    "sender_of",
]
