"""The outbox relay: follow-ups that were committed but never handed to the broker.

A unit of work writes its follow-ups to `task_outbox` in the same transaction as the change
(`app.db`) and sends them after COMMIT. When that send fails, or the process dies between the
two, the row stays unsent; this relay, run by beat, sends it later, so no decided follow-up
is lost.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.broker import Sender, send_task
from app.db import unit_of_work
from app.models import OutboxMessage, utcnow


def relay_outbox(older_than_seconds: float = 10.0, limit: int = 500, sender: Sender = send_task) -> int:
    """Send unsent follow-ups older than `older_than_seconds`; returns how many were sent.

    Younger rows are left to the send that follows their own commit. Rows are claimed with
    SKIP LOCKED, so overlapping relays never send one twice.
    """
    now = utcnow()
    with unit_of_work() as uow:
        rows = list(
            uow.session.scalars(
                select(OutboxMessage)
                .where(
                    OutboxMessage.sent_at.is_(None),
                    OutboxMessage.created_at < now - timedelta(seconds=older_than_seconds),
                )
                .order_by(OutboxMessage.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            wait = (row.not_before - now).total_seconds() if row.not_before else None
            sender(row.task, row.payload, wait)
            row.sent_at = now
    return len(rows)


__all__ = ["relay_outbox"]
