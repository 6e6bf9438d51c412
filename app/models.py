"""The shared schema: SQLAlchemy 2 typed models, identical on PostgreSQL and SQLite.

Alembic migrations under `app/migrations` create exactly these tables; a test compares the
two so they cannot drift.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out; SQLite would otherwise hand back naive values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JsonType = JSON().with_variant(JSONB(), "postgresql")
# A list of ids: `uuid[]` on PostgreSQL, a JSON list of strings on SQLite.
UuidList = JSON().with_variant(ARRAY(Uuid()), "postgresql")
EventId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Principal(Base):
    """Who calls: an owner's user, a supervisor acting for that owner, or an admin."""

    __tablename__ = "principals"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[str] = mapped_column(String(200), index=True)
    role: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """Only the SHA-256 of a token is kept; the token itself is shown once, at creation.

    A token is live while `revoked_at` is empty and `expires_at` (if any) is in the future;
    `last_used_at` is written at most once a minute (`app.auth.LAST_USED_RESOLUTION`).
    """

    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    principal_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Contract(Base):
    __tablename__ = "contracts"
    __table_args__ = (
        # Every contract write maintains each of these (0012 dropped the two they cover).
        Index("idx_contracts_owner_created", "owner_id", "created_at", "id"),
        Index("idx_contracts_status_phase", "status", "phase"),  # 0009: the dashboard
        Index("idx_contracts_status_activity", "status", "last_activity_at"),  # 0009: stale rule
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(500))
    contract_type: Mapped[str] = mapped_column(String(100))
    phase_config: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    phase: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(40))
    version: Mapped[int] = mapped_column(Integer, default=1)
    phase_guard: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_complete_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    waiting_for: Mapped[str | None] = mapped_column(Text)
    blocked_reason: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    completion_detected_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CompletedDeliverable(Base):
    __tablename__ = "contract_deliverables"

    contract_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[str] = mapped_column(String(100), primary_key=True)
    deliverable_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    completed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)


class ContractTask(Base):
    """A task a supervisor spawned; it counts toward the gate of the phase it was spawned in."""

    __tablename__ = "contract_tasks"
    __table_args__ = (Index("idx_contract_tasks_contract_phase", "contract_id", "phase"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(40))
    is_supervisor: Mapped[bool] = mapped_column(Boolean, default=False)
    phase: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ContractEvent(Base):
    """The history: one row per state change, written in the change's own transaction."""

    __tablename__ = "contract_events"
    __table_args__ = (Index("idx_contract_events_contract_id", "contract_id", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(60))
    payload: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ContractWorktree(Base):
    """A worktree a daemon reported creating; released by the completion cleanup."""

    __tablename__ = "contract_worktrees"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    contract_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("contracts.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # 0010: which daemon holds it (commands about it go to that daemon's queue), and when the
    # daemon reported it removed (a released worktree not yet removed is still on its disk).
    daemon_id: Mapped[str | None] = mapped_column(String(200), index=True)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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


__all__ = [
    "CLAIMED_BEFORE_SENDERS",
    "ApiToken",
    "Base",
    "CompletedDeliverable",
    "Contract",
    "ContractEvent",
    "ContractTask",
    "ContractWorktree",
    "DaemonCommand",
    "DeadLetter",
    "MessageOutcome",
    "OutboxMessage",
    "Principal",
    "ProcessedMessage",
    "utcnow",
]


# --- scheduled maintenance and batch operations (migration 0007) ---------------------------


class StaleEpisode(Base):
    """An open stale episode: the contract went silent; `stale_detected` was recorded once.

    The row is the stale sweep's memory: a contract with a row is not reported again, and
    the row is deleted (with a `stale_cleared` event) when activity returns. Its count is
    the current number of stale contracts (`contracts_stale_count`).
    """

    __tablename__ = "stale_episodes"

    contract_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("contracts.id", ondelete="CASCADE"), primary_key=True
    )
    last_activity_at: Mapped[datetime] = mapped_column(UTCDateTime)
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchOperationRow(Base):
    """One batch operation an admin asked for, with its progress and where it stopped.

    `cursor` (the last contract id handled) and the counters are written in the same
    transaction as the chunk of contracts they describe, so a batch interrupted anywhere
    resumes exactly after its last committed chunk.
    """

    __tablename__ = "batch_operations"
    __table_args__ = (
        Index("uq_batch_operations_idempotency", "requested_by", "idempotency_key", unique=True),
        Index("idx_batch_operations_created", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    operation: Mapped[str] = mapped_column(String(40))
    parameters: Mapped[dict[str, Any]] = mapped_column(JsonType)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(20))
    requested_by: Mapped[uuid.UUID] = mapped_column(Uuid)
    requested_by_owner: Mapped[str] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    affected_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    cursor: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class BatchChunk(Base):
    """The contracts one committed chunk of a batch acted on: one row per chunk, not per contract.

    Written in the chunk's transaction with the batch's cursor, which it carries as
    `through_id`: every contract of the chunk has an id at or below it, and a later chunk only
    claims ids above the cursor, so a contract listed here is never acted on again. What is
    not an action (an error, a deferral, a skip) is a `BatchItem` of its own.
    """

    __tablename__ = "batch_chunks"

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("batch_operations.id", ondelete="CASCADE"), primary_key=True
    )
    through_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    affected_ids: Mapped[list[Any]] = mapped_column(UuidList)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class BatchItem(Base):
    """What a batch did to one contract on its own: failed (with the error), deferred, skipped,
    or affected outside a chunk (a deferred contract done alone, a failed chunk redone one by one).

    No foreign key to the contract: a cleanup deletes it, and the record must stay. The
    primary key, with the cursor (`BatchChunk`), is what makes a contract acted on at most
    once per batch.
    """

    __tablename__ = "batch_items"

    batch_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("batch_operations.id", ondelete="CASCADE"), primary_key=True
    )
    contract_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    outcome: Mapped[str] = mapped_column(String(20))
    error_code: Mapped[str | None] = mapped_column(String(60))
    error_message: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DeletionAudit(Base):
    """One deleted contract: who it was, who deleted it, when, and which batch or sweep.

    No foreign key: the row outlives the contract it describes.
    """

    __tablename__ = "deletion_audit"
    __table_args__ = (Index("idx_deletion_audit_deleted_at", "deleted_at", "id"),)

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    contract_id: Mapped[uuid.UUID] = mapped_column(Uuid, index=True)
    contract_name: Mapped[str] = mapped_column(String(500))
    owner_id: Mapped[str] = mapped_column(String(200))
    contract_type: Mapped[str] = mapped_column(String(100))
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_by: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    deleted_by_owner: Mapped[str | None] = mapped_column(String(200))
    batch_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)
    sweep: Mapped[str | None] = mapped_column(String(60))
    reason: Mapped[str] = mapped_column(Text)


class MetricCounter(Base):
    """Counters several processes add to (`batch_operations_total{operation=...}`)."""

    __tablename__ = "metric_counters"

    metric: Mapped[str] = mapped_column(String(100), primary_key=True)
    label: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


__all__ += ["BatchChunk", "BatchItem", "BatchOperationRow", "DeletionAudit", "MetricCounter", "StaleEpisode"]


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


__all__ += ["HeartbeatCounter", "Supervisor", "SupervisorHeartbeat"]

# A daemon reads its commands in order (`daemon_commands` by daemon, then id).
Index("idx_daemon_commands_daemon_id", DaemonCommand.daemon_id, DaemonCommand.id)


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


__all__ += ["ConversationMessage", "SupervisorQuestion", "SupervisorStateRow"]


# --- live events (migration 0008) ------------------------------------------------------------

# The retention delete (`app.live_events.prune_events`) walks events by age.
Index("idx_contract_events_created_at", ContractEvent.created_at)

# Columns and indexes the database keeps on PostgreSQL only, filled in by the server and never
# written by the application (so they are not mapped: the commit's one INSERT lists mapped
# columns): `contract_events.xid` is the writing transaction's id, `pg_current_xact_id()`,
# which the live reader compares with the commit horizon (`app.live_events`); and
# `daemon_commands.xid` likewise, for a daemon's command feed (`app.daemon_commands`, 0011).
# A schema comparison leaves these out.
SERVER_ONLY_COLUMNS: frozenset[tuple[str, str]] = frozenset(
    {("contract_events", "xid"), ("daemon_commands", "xid")}
)
SERVER_ONLY_INDEXES: frozenset[str] = frozenset(
    {"idx_contract_events_xid_id", "idx_daemon_commands_daemon_xid"}
)

__all__ += ["SERVER_ONLY_COLUMNS", "SERVER_ONLY_INDEXES"]
