"""Reads: one contract, a page of contracts, a phase's readiness, as callers see them (`app.schemas`).

Reads take no lock and change nothing. Lists are keyset-paginated on (created_at, id) so a
page never skips or repeats a contract while others are created; the cursor is opaque to
callers and refused with a clear error when it is not one this server issued. A page is
bounded by size as well as by count (`CONTRACT_PAGE_BYTES`), like every other list answer.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Engine, Select, and_, func, or_, select
from sqlalchemy.orm import Session

from app import schemas
from app.auth import Caller
from app.byte_budget import json_size, take_within_budget
from app.config import Settings
from app.contract_rows import get_contract
from app.db import driver_autocommit, unit_of_work
from app.domain.completion import check_phase_readiness
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phases import Deliverable
from app.domain.records import TaskStatus
from app.gate import load_gate_facts, phase_config_of, switches_for
from app.models import CompletedDeliverable, Contract, ContractTask, Supervisor
from app.prepared import driver_rows
from app.sweeps import stale_criteria, stale_threshold

# A page of contracts is bounded by size as well as by count, like the supervisor history
# (`app.history_reads.HISTORY_BYTES`) and a page of questions: each entry carries its current
# phase's deliverables, and a legal phaseConfig (one phase of 256 deliverables with long ids and
# names) makes an entry of about 736 KB, so 500 of them were hundreds of MB held per request.
# Contracts are added while the answer's JSON stays within this; `nextCursor` says where to read on.
CONTRACT_PAGE_BYTES: Final = 4 * 1024 * 1024
# Room kept for the page's own JSON around the contracts (`{"contracts":[`, the commas,
# `],"nextCursor":"<cursor>","truncated":true}`, a cursor being at most about 100 characters).
_PAGE_ENVELOPE_BYTES: Final = 256
# Contracts read from the database, and viewed, at a time: a page the size bound ends reads
# little past it, never 500 rows of up to a megabyte each.
_ROWS_PER_FETCH: Final = 8


def phase_readiness_view(
    session: Session, caller: Caller, contract_id: uuid.UUID, settings: Settings
) -> schemas.PhaseReadiness:
    contract = get_contract(session, caller, contract_id)
    config = phase_config_of(contract)
    result = check_phase_readiness(config, load_gate_facts(session, contract))
    gate = config.get(contract.phase).gate
    return schemas.PhaseReadiness(
        phase=contract.phase,
        ready=result.ready,
        readiness=result.readiness,
        missing=list(result.missing),
        auto_advance_enabled=bool(gate and gate.auto_advance and switches_for(contract, settings).on),
    )


# --- a contract as callers see it ---------------------------------------------------------


def contract_view(session: Session, contract: Contract) -> schemas.Contract:
    """One contract with its current phase's progress (two queries)."""
    return contract_views(session, [contract])[0]


def contract_views(
    session: Session, contracts: Sequence[Contract], *, with_phase_config: bool = True
) -> list[schemas.Contract]:
    """Contracts with their current phase's deliverables and task counts.

    A page of contracts leaves out each contract's own `phaseConfig` (`with_phase_config=False`):
    it can be up to a megabyte, and a page of 500 would be half a gigabyte. The contract
    itself (`GET /contracts/{id}`) carries it.

    A person reads progress on the contract itself, so every answer that carries a contract
    carries it. Two queries for the whole list, however long (completed deliverables, task
    counts), never one per contract: a page of 500 costs what a page of one does.
    """
    if not contracts:
        return []
    ids = [c.id for c in contracts]
    phases = {c.phase for c in contracts}
    wanted = {(c.id, c.phase) for c in contracts}
    completed: dict[tuple[uuid.UUID, str], dict[str, datetime]] = {}
    for cid, phase, deliverable_id, completed_at in session.execute(
        select(
            CompletedDeliverable.contract_id,
            CompletedDeliverable.phase,
            CompletedDeliverable.deliverable_id,
            CompletedDeliverable.completed_at,
        ).where(CompletedDeliverable.contract_id.in_(ids), CompletedDeliverable.phase.in_(phases))
    ):
        if (cid, phase) in wanted:
            completed.setdefault((cid, phase), {})[deliverable_id] = completed_at
    counts: dict[tuple[uuid.UUID, str], dict[str, int]] = {}
    for cid, phase, status, count in session.execute(
        select(ContractTask.contract_id, ContractTask.phase, ContractTask.status, func.count())
        .where(ContractTask.contract_id.in_(ids), ContractTask.phase.in_(phases))
        .group_by(ContractTask.contract_id, ContractTask.phase, ContractTask.status)
    ):
        if (cid, phase) in wanted:
            counts.setdefault((cid, phase), {})[status] = int(count)
    return [
        _contract_schema(
            c, completed.get((c.id, c.phase), {}), counts.get((c.id, c.phase), {}), with_phase_config
        )
        for c in contracts
    ]


# A contract's phase progress in one statement: completed deliverables, then task counts.
_PROGRESS_SQL: Final = (
    "SELECT"
    " (SELECT coalesce(array_agg(d.deliverable_id ORDER BY d.deliverable_id), '{}')"
    "   FROM contract_deliverables d WHERE d.contract_id = %(id)s::uuid AND d.phase = %(phase)s),"
    " (SELECT coalesce(array_agg(d.completed_at ORDER BY d.deliverable_id), '{}')"
    "   FROM contract_deliverables d WHERE d.contract_id = %(id)s::uuid AND d.phase = %(phase)s),"
    " (SELECT coalesce(array_agg(t.status), '{}') FROM contract_tasks t"
    "   WHERE t.contract_id = %(id)s::uuid AND t.phase = %(phase)s)"
)


def contract_view_now(engine: Engine, contract: Contract, settings: Settings) -> schemas.Contract:
    """`contract_view` of a contract already read (a guarded change's committed row), without a
    unit of work: on PostgreSQL one prepared statement on a pooled connection in autocommit, where
    the session path costs a BEGIN, two SELECTs and a ROLLBACK. It reads what is committed, as the
    session path does after the change's COMMIT. SQLite (in-process, no round trips) keeps that path.
    """
    if engine.dialect.name != "postgresql":
        with unit_of_work(engine=engine, settings=settings) as uow:
            return contract_view(uow.session, contract)
    with driver_autocommit(engine) as connection:
        rows = driver_rows(
            connection,
            _PROGRESS_SQL,
            {"id": str(contract.id), "phase": contract.phase},
            prepare=settings.database_prepared_statements,
        )
    done_ids, done_at, statuses = rows[0]
    completed = {d: at.astimezone(UTC) for d, at in zip(done_ids, done_at, strict=True)}
    by_status: dict[str, int] = {}
    for status in statuses:
        by_status[status] = by_status.get(status, 0) + 1
    return _contract_schema(contract, completed, by_status)


def _current_deliverables(contract: Contract) -> tuple[Deliverable, ...]:
    """The current phase's deliverables; none if the phase is no longer in the config."""
    for phase in phase_config_of(contract).phases:
        if phase.id == contract.phase:
            return phase.deliverables
    return ()


def _contract_schema(
    contract: Contract,
    completed: Mapping[str, datetime],
    by_status: Mapping[str, int],
    with_phase_config: bool = True,
) -> schemas.Contract:
    return schemas.Contract(
        id=contract.id,
        owner_id=contract.owner_id,
        name=contract.name,
        contract_type=contract.contract_type,
        phase_config=contract.phase_config if with_phase_config else None,
        phase=contract.phase,
        status=Status(contract.status),
        version=contract.version,
        phase_guard=contract.phase_guard,
        auto_complete_enabled=contract.auto_complete_enabled,
        status_changed_at=contract.status_changed_at,
        last_activity_at=contract.last_activity_at,
        waiting_for=WaitingFor(contract.waiting_for) if contract.waiting_for else None,
        blocked_reason=contract.blocked_reason,
        failure_reason=contract.failure_reason,
        completion_detected_at=contract.completion_detected_at,
        created_at=contract.created_at,
        updated_at=contract.updated_at,
        deliverables=[
            schemas.DeliverableState(
                id=d.id,
                name=d.name,
                required=d.required,
                completed=d.id in completed,
                completed_at=completed.get(d.id),
            )
            for d in _current_deliverables(contract)
        ],
        tasks=schemas.TaskCounts(
            total=sum(by_status.values()),
            running=by_status.get(TaskStatus.RUNNING.value, 0),
            done=by_status.get(TaskStatus.DONE.value, 0),
            failed=by_status.get(TaskStatus.FAILED.value, 0),
        ),
    )


@dataclass(frozen=True, slots=True)
class ContractFilter:
    statuses: tuple[Status, ...] = ()
    phase: str | None = None
    stale: bool = False
    stale_threshold: timedelta | None = None
    waiting: bool = False
    # Only contracts a supervisor has reported for (a heartbeat): the ones whose
    # `.../supervisor/status` answers, so a reader need not ask the others and meet 404s.
    supervised: bool = False
    limit: int = 50
    cursor: str | None = None


def encode_cursor(contract: Contract) -> str:
    raw = f"{contract.created_at.isoformat()}|{contract.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_text, cid = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        created = datetime.fromisoformat(created_text)
        if created.tzinfo is None:
            raise ValueError("cursor timestamp has no time zone")
        created.astimezone(UTC)  # year 0 or 10000 in UTC (a forged offset) overflows
        return created, uuid.UUID(cid)
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "The cursor is not one this server issued; pass the 'nextCursor' of a previous page.",
            details={"field": "cursor"},
        ) from None


def list_contracts(
    session: Session,
    caller: Caller,
    flt: ContractFilter,
    now: datetime,
    settings: Settings,
    budget: int = CONTRACT_PAGE_BYTES,
) -> schemas.ContractPage:
    """Newest first, keyset-paginated on (created_at, id) so pages never skip or repeat.

    A page holds at most `flt.limit` contracts and at most `budget` bytes of JSON: it stops
    before the contract that would pass the bound (one is always taken), `truncated` and
    `nextCursor` set, so following `nextCursor` still reads every contract exactly once.
    """
    query = select(Contract)
    if not caller.is_admin:
        query = query.where(Contract.owner_id == caller.owner_id)
    if flt.statuses:
        query = query.where(Contract.status.in_([s.value for s in flt.statuses]))
    if flt.phase:
        query = query.where(Contract.phase == flt.phase)
    if flt.waiting:
        query = query.where(Contract.status == Status.WAITING_FOR_INPUT.value)
    if flt.supervised:
        query = query.where(select(Supervisor.task_id).where(Supervisor.contract_id == Contract.id).exists())
    if flt.stale:
        # The one definition of stale (app.domain.maintenance), as the sweep and dashboard use it.
        query = query.where(stale_criteria(now, flt.stale_threshold or stale_threshold(settings)))
    if flt.cursor:
        created, cid = decode_cursor(flt.cursor)
        query = query.where(
            or_(
                Contract.created_at < created,
                and_(Contract.created_at == created, Contract.id < cid),
            )
        )
    query = query.order_by(Contract.created_at.desc(), Contract.id.desc()).limit(flt.limit + 1)
    page = take_within_budget(
        _viewed(session, query.execution_options(yield_per=_ROWS_PER_FETCH)),
        lambda pair: pair,
        lambda pair: json_size(pair[1]),
        budget,
        _PAGE_ENVELOPE_BYTES,
        flt.limit,
    )
    views = [view for _, view in page.items]
    if not (page.more or page.truncated):
        return schemas.ContractPage(contracts=views, next_cursor=None)
    last = page.items[-1][0]
    return schemas.ContractPage(contracts=views, next_cursor=encode_cursor(last), truncated=page.truncated)


def _viewed(session: Session, query: Select[Contract]) -> Iterator[tuple[Contract, schemas.Contract]]:
    """Each contract of `query` with its list view (no phaseConfig), read and viewed
    `_ROWS_PER_FETCH` at a time so the progress queries stay a few per page, not one per
    contract; the result is closed when the taking stops (a generator's close)."""
    result = session.scalars(query)
    try:
        for chunk in result.partitions(_ROWS_PER_FETCH):
            yield from zip(chunk, contract_views(session, chunk, with_phase_config=False), strict=True)
    finally:
        result.close()


__all__ = [
    "CONTRACT_PAGE_BYTES",
    "ContractFilter",
    "contract_view",
    "contract_views",
    "decode_cursor",
    "encode_cursor",
    "list_contracts",
    "phase_readiness_view",
]
