"""Writing dead letters from a worker: from a raw broker message or from a failed task."""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from sqlalchemy import Engine

from app.db import unit_of_work
from app.dead_letters import RejectedMessage, body_text, record_dead_letter
from app.models import utcnow
from workers.broker_redis import broker_key, broker_redis

log = logging.getLogger(__name__)


PENDING = "dead_letters:pending"


def park(msg: RejectedMessage, engine: Engine | None = None, *, expected: bool = True) -> None:
    """Write the dead letter; if the database cannot take it, hold it in Redis instead.

    The message is acknowledged after this returns, so it must be kept somewhere: a row
    when the database is up, else an entry on a Redis list that `sweeps.drain_dead_letters`
    moves into the table once the database is back. The sender's outcome is marked refused
    in the same transaction (`record_dead_letter`). An expected refusal is a WARNING of one
    line; an unexpected failure is an ERROR with its traceback.
    """
    try:
        with unit_of_work(engine=engine) as uow:
            record_dead_letter(uow.session, msg, utcnow())
    except Exception:
        log.exception("dead letter kept in Redis until the database is back: %s", msg.message_id)
        broker_redis().rpush(broker_key(PENDING), json.dumps(dataclasses.asdict(msg), default=str))
        return
    if expected:
        log.warning(
            "dead letter: %s %s (sender's message %s): %s",
            msg.task_name,
            msg.message_id,
            msg.sender_message_id(),
            _first_line(msg.error),
        )
    else:
        log.error(
            "dead letter: %s %s (sender's message %s): %s",
            msg.task_name,
            msg.message_id,
            msg.sender_message_id(),
            msg.error,
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def drain_pending(limit: int = 500) -> int:
    """Move dead letters held in Redis into the table; each is removed only once written."""
    client, key, moved = broker_redis(), broker_key(PENDING), 0
    for _ in range(limit):
        raw = client.lindex(key, 0)
        if raw is None:
            break
        with unit_of_work() as uow:
            record_dead_letter(uow.session, RejectedMessage(**json.loads(raw)), utcnow())
        client.lpop(key)
        moved += 1
    return moved


def park_raw(message: Any, error: str) -> None:
    headers = dict(getattr(message, "headers", None) or {})
    delivery = getattr(message, "delivery_info", None) or {}
    park(
        RejectedMessage(
            queue=delivery.get("routing_key"),
            task_name=headers.get("task"),
            message_id=headers.get("id"),
            headers=headers,
            raw_body=body_text(getattr(message, "body", b"")),
            content_type=getattr(message, "content_type", None),
            content_encoding=getattr(message, "content_encoding", None),
            error=error,
        )
    )


def park_task(
    task_name: str,
    queue: str | None,
    task_id: str | None,
    args: Any,
    kwargs: Any,
    error: str,
    *,
    error_code: str | None = None,
    expected: bool = True,
) -> None:
    park(
        RejectedMessage(
            queue=queue,
            task_name=task_name,
            message_id=task_id,
            headers={"task": task_name, "id": task_id},
            raw_body=json.dumps({"args": list(args or ()), "kwargs": dict(kwargs or {})}, default=str),
            content_type="application/json",
            content_encoding="utf-8",
            error=error,
            error_code=error_code,
        ),
        expected=expected,
    )
