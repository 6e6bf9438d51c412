"""A contract and what hangs off it: its completed deliverables, its tasks, its event history
and the worktrees its daemons reported."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, EventId, JsonType, UTCDateTime, utcnow


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


# 0008, live events: the retention delete (`app.live_events.prune_events`) walks events by age.
Index("idx_contract_events_created_at", ContractEvent.created_at)


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
