"""Sending work to the broker: follow-up tasks after commit, and daemon commands."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue
from sqlalchemy import select

from app.config import get_settings
from app.db import Dispatch, unit_of_work
from app.models import DaemonCommand, OutboxMessage, utcnow
from workers.celery_app import celery_app
from workers.queues import queue_for

DAEMON_EXCHANGE = Exchange("makima.daemon", type="direct", durable=True)
DAEMON_QUEUE = KombuQueue("daemon.commands", DAEMON_EXCHANGE, routing_key="daemon.commands", durable=True)


def dispatch(messages: list[Dispatch]) -> None:
    """A unit of work's dispatcher: each message becomes a Celery task on its queue."""
    for msg in messages:
        send(msg.task, msg.payload, countdown=msg.countdown)


def send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    """Send one task on its queue.

    A countdown is capped at half the broker's visibility timeout: Redis would otherwise
    hand a message still waiting for its ETA to a second worker. Countdown tasks re-check
    their time and reschedule themselves, so a capped wait only means one more hop.
    """
    if countdown is not None:
        countdown = min(countdown, get_settings().visibility_timeout_seconds / 2)
    task_id = str(uuid.uuid4())
    celery_app.send_task(
        task,
        args=[payload],
        task_id=task_id,
        queue=queue_for(task).value,
        countdown=countdown if countdown and countdown > 0 else None,
    )
    return task_id


def publish_daemon_commands(contract_id: uuid.UUID | None = None) -> int:
    """Publish unpublished commands from the outbox to the daemon command queue.

    At least once: a crash between publish and commit republishes, and every command
    carries its outbox id so a daemon can ignore one it already carried out.
    """
    published = 0
    with unit_of_work() as uow:
        query = (
            select(DaemonCommand)
            .where(DaemonCommand.published_at.is_(None))
            .order_by(DaemonCommand.id)
            .with_for_update(skip_locked=True)
        )
        if contract_id is not None:
            query = query.where(DaemonCommand.contract_id == contract_id)
        commands = list(uow.session.scalars(query))
        if not commands:
            return 0
        with celery_app.producer_or_acquire() as producer:
            for cmd in commands:
                producer.publish(
                    {
                        "commandId": cmd.id,
                        "contractId": str(cmd.contract_id),
                        "command": cmd.command,
                        "payload": cmd.payload,
                    },
                    exchange=DAEMON_EXCHANGE,
                    routing_key=DAEMON_QUEUE.routing_key,
                    declare=[DAEMON_QUEUE],
                    serializer="json",
                    retry=True,
                )
                cmd.published_at = utcnow()
                published += 1
    return published


def relay_outbox(older_than_seconds: float = 10.0, limit: int = 500) -> int:
    """Send follow-ups that were committed but never marked sent (a failed or lost send).

    Rows younger than `older_than_seconds` are left to the send that follows their own
    commit. Rows are claimed with SKIP LOCKED, so overlapping relays never send one twice.
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
            send(row.task, row.payload, countdown=wait)
            row.sent_at = now
    return len(rows)
