"""Supervisors: their current state and heartbeat history (migration 0006), the heartbeat
counters, and what a restarted daemon needs back (0010): the saved state, the conversation and
the questions asked of a person."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JsonType, UTCDateTime, utcnow

# --- supervisor heartbeats (migration 0006) ---------------------------------------------------


class Supervisor(Base):
    """A supervisor's current state: the newest heartbeat's, and whether it is alive.

    One row per supervisor task, rewritten per heartbeat batch (narrow, two indexes, so the
    update stays cheap). `incarnation` fences: bumped when the supervisor is declared dead or
    restarted. `sent_at` is the daemon's own timestamp of the stored state (it orders states
    within an incarnation); `last_received_at` is our receive time (it decides liveness).
    `version` counts writes, so an ingesting worker can tell whether the row moved under it.
    """

    __tablename__ = "supervisors"

    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), index=True)
    incarnation: Mapped[int] = mapped_column(Integer)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(40))
    phase: Mapped[str] = mapped_column(String(100))
    current_activity: Mapped[str] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer)
    pending_task_ids: Mapped[list[str]] = mapped_column(JsonType)
    heartbeat_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    alive: Mapped[bool] = mapped_column(Boolean)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    daemon_id: Mapped[str | None] = mapped_column(String(200), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SupervisorHeartbeat(Base):
    """Heartbeat history: one row per heartbeat id, kept 24 hours (the record, not an event).

    On PostgreSQL the table is partitioned by `received_day` (one partition per UTC day, in
    the `heartbeat_partitions` schema) and old days are dropped whole; on SQLite it is one
    table cleaned in bounded chunks. The key holds the partition key, so a duplicate id is
    refused by the key within a day, and by a check of the earlier retained days across them
    (`app.heartbeats`). Fenced heartbeats are kept, marked.
    """

    __tablename__ = "supervisor_heartbeats"
    # One index, the key: readers find a contract by its leading column (migration 0016).
    __table_args__ = ({"postgresql_partition_by": "RANGE (received_day)"},)

    contract_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    received_day: Mapped[date] = mapped_column(Date, primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    task_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    incarnation: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(40))
    phase: Mapped[str] = mapped_column(String(100))
    current_activity: Mapped[str] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer)
    pending_task_ids: Mapped[list[str]] = mapped_column(JsonType)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime)
    fenced: Mapped[bool] = mapped_column(Boolean)
    daemon_id: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(255))


class HeartbeatCounter(Base):
    """Heartbeat counters for the metrics: received, stored, duplicates, fenced, refused.

    Added in the ingesting transaction, so they are exact; a few shards (picked by process)
    so two workers never wait on one counter row. The totals are the sums over shards.
    """

    __tablename__ = "heartbeat_counters"

    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    received: Mapped[int] = mapped_column(BigInteger, default=0)
    stored: Mapped[int] = mapped_column(BigInteger, default=0)
    duplicates: Mapped[int] = mapped_column(BigInteger, default=0)
    fenced: Mapped[int] = mapped_column(BigInteger, default=0)
    refused: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# --- supervisor state, conversation and questions (migration 0010) --------------------------


class SupervisorStateRow(Base):
    """What a restarted daemon needs of its supervisor (seed 3.4), saved at the plan's save points.

    Ordered by (`incarnation`, `state_version`): a save of an older incarnation is fenced and an
    older version never overwrites a newer one. The conversation lives in
    `supervisor_conversation`, one row per message, appended in increments; `history_length` is
    how many messages this state says it has, so a missing or extra row is visible.
    `checkpoint` is a snapshot of a save the daemon marked consistent (restoration falls back to
    it when the current state does not agree with the contract).
    """

    __tablename__ = "supervisor_states"

    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), index=True)
    incarnation: Mapped[int] = mapped_column(Integer)
    state_version: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(40))
    phase: Mapped[str] = mapped_column(String(100))
    current_activity: Mapped[str] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    spawned_task_ids: Mapped[list[str]] = mapped_column(JsonType)
    waiting_on_task_ids: Mapped[list[str]] = mapped_column(JsonType)
    history_length: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    daemon_id: Mapped[str | None] = mapped_column(String(200))
    host: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ConversationMessage(Base):
    """One message of a supervisor's conversation history, at its position `seq` (from 0)."""

    __tablename__ = "supervisor_conversation"

    task_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), index=True)
    message: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SupervisorQuestion(Base):
    """A question a supervisor asked a person: open until answered (once) or cancelled."""

    __tablename__ = "supervisor_questions"
    __table_args__ = (Index("idx_supervisor_questions_contract_status", "contract_id", "status", "asked_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"))
    task_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    question: Mapped[str] = mapped_column(Text)
    question_type: Mapped[str] = mapped_column(String(40))
    options: Mapped[list[str]] = mapped_column(JsonType)
    context: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    asked_by: Mapped[str] = mapped_column(String(200))
    asked_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    answer: Mapped[Any | None] = mapped_column(JsonType)
    answered_by: Mapped[str | None] = mapped_column(String(200))
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    daemon_id: Mapped[str | None] = mapped_column(String(200))
