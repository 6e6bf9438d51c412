"""Scheduled maintenance and batch operations (migration 0007): the stale sweep's episodes, a
batch's progress and what it did to each contract, the record of each deletion, and the
counters several processes add to."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, EventId, JsonType, UTCDateTime, UuidList, utcnow


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
