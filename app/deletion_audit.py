"""Deleting archived contracts, and the record of each deletion that outlives it.

Deletion is the one thing nothing can undo, so it is done in one place: the retention sweep
and the `cleanup_archived` batch both call `delete_archived`, which writes one
`deletion_audit` row per contract (its id, name, owner, type, when it was archived, who
deleted it, when, and which batch or sweep) and deletes the contract in the same
transaction; the foreign keys cascade to its events, tasks, deliverables and worktrees.
The audit rows have no foreign key, so they stay. Admins read them at
`GET /api/v1/audit/deletions`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from sqlalchemy import delete, insert, literal, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.domain.lifecycle import Status
from app.models import Contract, DeletionAudit
from app.schemas import Schema, Timestamp

MAX_PAGE: Final = 500


def delete_archived(
    session: Session,
    contract_ids: Sequence[uuid.UUID],
    *,
    now: datetime,
    reason: str,
    deleted_by: Caller | None = None,
    batch_id: uuid.UUID | None = None,
    sweep: str | None = None,
) -> list[uuid.UUID]:
    """Audit and delete the given contracts, which the caller holds locked; returns the ids deleted.

    Only rows still `archived` are touched (the caller re-checked the rule under the lock;
    this is the last guard against deleting anything else). Two statements whatever the count.
    """
    if not contract_ids:
        return []
    # The ids' range beside the list lets the plan read that stretch of the primary key instead
    # of the whole table, whatever the list's length.
    archived = (
        Contract.id.between(min(contract_ids), max(contract_ids)),
        Contract.id.in_(list(contract_ids)),
        Contract.status == Status.ARCHIVED.value,
    )
    columns = [
        DeletionAudit.contract_id,
        DeletionAudit.contract_name,
        DeletionAudit.owner_id,
        DeletionAudit.contract_type,
        DeletionAudit.archived_at,
        DeletionAudit.deleted_at,
        DeletionAudit.deleted_by,
        DeletionAudit.deleted_by_owner,
        DeletionAudit.batch_id,
        DeletionAudit.sweep,
        DeletionAudit.reason,
    ]
    rows = select(
        Contract.id,
        Contract.name,
        Contract.owner_id,
        Contract.contract_type,
        Contract.status_changed_at,
        literal(now, DeletionAudit.deleted_at.type),
        literal(deleted_by.principal_id if deleted_by else None, DeletionAudit.deleted_by.type),
        literal(deleted_by.owner_id if deleted_by else None, DeletionAudit.deleted_by_owner.type),
        literal(batch_id, DeletionAudit.batch_id.type),
        literal(sweep, DeletionAudit.sweep.type),
        literal(reason, DeletionAudit.reason.type),
    ).where(*archived)
    session.execute(insert(DeletionAudit).from_select(columns, rows))
    deleted = session.scalars(delete(Contract).where(*archived).returning(Contract.id)).all()
    return list(deleted)


class Deletion(Schema):
    """One deleted contract, as the audit keeps it."""

    id: int
    contract_id: uuid.UUID
    contract_name: str
    owner_id: str
    contract_type: str
    archived_at: Timestamp
    deleted_at: Timestamp
    deleted_by: uuid.UUID | None
    deleted_by_owner: str | None
    batch_id: uuid.UUID | None
    sweep: str | None
    reason: str


class DeletionPage(Schema):
    deletions: list[Deletion]
    next_cursor: int | None


def list_deletions(
    session: Session, *, limit: int = 100, before: int | None = None, batch_id: uuid.UUID | None = None
) -> DeletionPage:
    """Newest first; `before` is the `nextCursor` of the previous page."""
    query = select(DeletionAudit).order_by(DeletionAudit.id.desc()).limit(limit + 1)
    if before is not None:
        query = query.where(DeletionAudit.id < before)
    if batch_id is not None:
        query = query.where(DeletionAudit.batch_id == batch_id)
    rows = list(session.scalars(query))
    page = rows[:limit]
    return DeletionPage(
        deletions=[
            Deletion(
                id=r.id,
                contract_id=r.contract_id,
                contract_name=r.contract_name,
                owner_id=r.owner_id,
                contract_type=r.contract_type,
                archived_at=r.archived_at,
                deleted_at=r.deleted_at,
                deleted_by=r.deleted_by,
                deleted_by_owner=r.deleted_by_owner,
                batch_id=r.batch_id,
                sweep=r.sweep,
                reason=r.reason,
            )
            for r in page
        ],
        next_cursor=page[-1].id if len(rows) > limit and page else None,
    )


__all__ = ["MAX_PAGE", "Deletion", "DeletionPage", "delete_archived", "list_deletions"]
