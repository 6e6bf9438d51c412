"""Messages in and out, kept in the database because the broker is not a durable record.

Out: `DaemonCommand` and `OutboxMessage`, written in the transaction that decides them and
published after commit. In: `ProcessedMessage` (a report applied once), `MessageOutcome` (the
sender's receipt) and `DeadLetter` (what could not be applied, kept whole to replay).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, EventId, JsonType, UTCDateTime, utcnow


class DaemonCommand(Base):
    """Outbox of commands for agent daemons (stop a supervisor, remove a worktree).

    Written in the transaction that decides them, published to the daemon command queue
    after commit; `published_at` stays empty until the broker took it, so nothing is lost.
    """

    __tablename__ = "daemon_commands"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), index=True)
    command: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # 0010: the daemon it is for, when known (its own queue and its HTTP feed); none means any.
    daemon_id: Mapped[str | None] = mapped_column(String(200))


# A daemon reads its commands in order (`daemon_commands` by daemon, then id).
Index("idx_daemon_commands_daemon_id", DaemonCommand.daemon_id, DaemonCommand.id)


# The sender of every claim made before claims named one (migration 0017): such a claim
# stands for whichever sender used its message id on its contract, so it stops them all.
# No principal has this id (principal ids are random UUIDs, never all zeros).
CLAIMED_BEFORE_SENDERS = uuid.UUID(int=0)


class ProcessedMessage(Base):
    """Message ids whose effect is committed: a second delivery finds its id and does nothing.

    Ids are daemon-chosen and unique per sender only, so a claim is the sender's (its
    principal) on the contract (claimed under its row lock): two senders may use one id on
    one contract and each report is applied, once. A row whose sender is
    `CLAIMED_BEFORE_SENDERS` was claimed before claims named a sender, and still counts as
    claimed for every sender of that id on that contract (`app.agent_reports.claim_message`).
    """

    __tablename__ = "processed_messages"

    contract_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True
    )
    # 0017: the sender's principal. No foreign key: claims older than 0017 name
    # `CLAIMED_BEFORE_SENDERS`, which is no principal.
    principal_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(60))
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutboxMessage(Base):
    """Follow-up work decided in a transaction, kept until the broker has it.

    Written with the change that decided it and sent after COMMIT, then deleted (in batches,
    `app.outbox`); a send that fails (or a crash before it) leaves the row, and the
    `sweeps.relay_outbox` job sends and deletes it later. Every task is idempotent, so the
    rare double send is harmless; a lost one is not.
    """

    __tablename__ = "task_outbox"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeadLetter(Base):
    """A message that could not be applied, kept whole so it can be read, fixed and replayed."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    queue: Mapped[str | None] = mapped_column(String(100))
    task_name: Mapped[str | None] = mapped_column(String(200))
    message_id: Mapped[str | None] = mapped_column(String(200))
    headers: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    raw_body: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(100))
    content_encoding: Mapped[str | None] = mapped_column(String(50))
    error: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    replayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class MessageOutcome(Base):
    """What became of a report a sender handed us: the sender's receipt, kept in the database.

    The broker is not a durable record (kombu's Redis transport can lose a message fetched
    by a worker that dies before it records it as unacknowledged), so each report is written
    here when it is accepted, `pending` with its payload (enough to send it again), and set
    to `applied` (with the event ids it produced) in the transaction that applies it, or to
    `refused` (error code and message) when a worker dead-letters it. Keyed by the sender's
    principal and its message id: one sender's ids can neither collide with nor reveal
    another's. No foreign key to the contract: a refusal is kept even for a contract that
    does not exist (or no longer does).
    """

    __tablename__ = "message_outcomes"
    __table_args__ = (Index("idx_message_outcomes_message_id", "message_id"),)

    principal_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    task: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(20))
    event_ids: Mapped[list[int] | None] = mapped_column(JsonType)
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
