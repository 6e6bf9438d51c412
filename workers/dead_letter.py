"""Writing dead letters from a worker: from a raw broker message or from a failed task."""

from __future__ import annotations

import json
import logging
from typing import Any

from app.db import unit_of_work
from app.dead_letters import RejectedMessage, body_text, record_dead_letter
from app.models import utcnow

log = logging.getLogger(__name__)


def park(msg: RejectedMessage) -> None:
    with unit_of_work() as uow:
        record_dead_letter(uow.session, msg, utcnow())
    log.warning("dead letter: %s %s: %s", msg.task_name, msg.message_id, msg.error)


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
    task_name: str, queue: str | None, task_id: str | None, args: Any, kwargs: Any, error: str
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
        )
    )
