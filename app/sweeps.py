"""Scheduled maintenance: stale detection, input timeouts, completion finalisation, retention.

Each sweep has one shape, so each is safe to run twice in a row and twice at once (two beat
processes by mistake, a redelivered message):

1. read candidate ids in bounded chunks (keyset on id, no lock), with SQL that translates a
   rule of `app.domain.maintenance`;
2. for each candidate, one short transaction: claim the row with `FOR UPDATE SKIP LOCKED`
   (a row another sweep or a person holds right now is skipped: whoever holds it acts),
   re-judge it with the pure rule under the lock, and act through the same guarded code
   a person's request uses (`app.contracts.change_status`, `app.completion_flow`), as the
   service itself (`SERVICE_CALLER`);
3. stop after `max_seconds`; the next run goes on.

Events therefore happen once: the second run finds the contract already moved (or the stale
episode already open) and does nothing. On SQLite, one writer at a time gives the same.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, Engine, and_, delete, exists, func, not_, or_, select
from sqlalchemy.orm import Session

from app import completion_flow, contracts
from app.auth import Caller, Role
from app.broker import Sender
from app.config import Settings, get_settings
from app.db import UnitOfWork, unit_of_work, upsert_ignoring
from app.deletion_audit import delete_archived
from app.domain.errors import ContractError
from app.domain.lifecycle import Status
from app.domain.maintenance import (
    STALE_STATUSES,
    StaleStep,
    input_timed_out,
    input_timeout_reason,
    is_stale,
    may_delete,
    retention_cutoff,
    stale_cutoff,
    stale_step,
)
from app.domain.records import EventType
from app.events import record_event
from app.models import Contract, StaleEpisode, utcnow
from app.pending_writes import pending

log = logging.getLogger(__name__)

# The service acting on its own schedule: it may see every owner's contracts, and it is
# named in events and audits as the sweep that acted.
SERVICE_CALLER: Final = Caller(uuid.UUID(int=0), "makima-service", Role.ADMIN)

CHUNK: Final = 200
MAX_SECONDS: Final = 50.0
RETENTION_SWEEP: Final = "archive_retention"


# --- the rules as SQL (one definition: app.domain.maintenance) ------------------------------


def stale_criteria(now: datetime, threshold: timedelta) -> ColumnElement[bool]:
    """`is_stale` as a WHERE clause: the list's `stale` filter, the dashboard and the sweep."""
    return and_(
        Contract.status.in_([s.value for s in STALE_STATUSES]),
        Contract.last_activity_at < stale_cutoff(now, threshold),
    )


def stale_threshold(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.contracts.stale_threshold_minutes)


def input_timeout(settings: Settings) -> timedelta:
    return timedelta(hours=settings.contracts.input_timeout_hours)


def archive_retention(settings: Settings) -> timedelta:
    return timedelta(days=settings.contracts.archive_retention_days)


def stale_count(session: Session) -> int:
    """Contracts in an open stale episode: the `contracts_stale_count` gauge."""
    return int(session.scalar(select(func.count()).select_from(StaleEpisode)) or 0)


# --- the shared shape -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wiring:
    """Where a sweep runs: the database, the sender of follow-ups, the settings (defaults: configured)."""

    engine: Engine | None = None
    sender: Sender | None = None
    settings: Settings | None = None

    def uow(self) -> Any:
        return unit_of_work(self.sender, engine=self.engine, settings=self.settings or get_settings())


def claim(session: Session, contract_id: uuid.UUID) -> Contract | None:
    """Lock one contract row unless someone else holds it (`FOR UPDATE SKIP LOCKED`).

    The row joins this transaction's locked set, so the guarded commands called next reuse
    the lock and the loaded row instead of taking it again.
    """
    row = session.scalars(
        select(Contract)
        .where(Contract.id == contract_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is not None:
        pending(session).locked.add(row.id)
    return row


def _candidates(
    wiring: Wiring, where: Callable[[], Sequence[ColumnElement[bool]]], after: uuid.UUID | None, chunk: int
) -> list[uuid.UUID]:
    with wiring.uow() as uow:
        query = select(Contract.id).where(*where()).order_by(Contract.id).limit(chunk)
        if after is not None:
            query = query.where(Contract.id > after)
        return list(uow.session.scalars(query))


def _each_in_its_own_transaction(
    wiring: Wiring,
    where: Callable[[], Sequence[ColumnElement[bool]]],
    act: Callable[[UnitOfWork, Contract], bool],
    *,
    what: str,
    chunk: int,
    max_seconds: float,
) -> int:
    """Claim and act on every candidate, one short transaction each; returns how many acted."""
    deadline = time.monotonic() + max_seconds
    acted = 0
    after: uuid.UUID | None = None
    while time.monotonic() < deadline:
        ids = _candidates(wiring, where, after, chunk)
        for contract_id in ids:
            try:
                with wiring.uow() as uow:
                    contract = claim(uow.session, contract_id)
                    if contract is not None and act(uow, contract):
                        acted += 1
            except ContractError as exc:
                # One contract's rule refusal is not the sweep's failure: log it and go on.
                log.warning("%s: contract %s refused: %s: %s", what, contract_id, exc.code, exc.message)
        if len(ids) < chunk:
            break
        after = ids[-1]
    return acted


# --- stale detection (seed 4.2) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleSweepResult:
    detected: int
    cleared: int


def detect_stale(
    wiring: Wiring = Wiring(), *, chunk: int = CHUNK, max_seconds: float = MAX_SECONDS
) -> StaleSweepResult:
    """Open an episode (one `stale_detected`) for each newly silent contract, and close the
    episodes (one `stale_cleared`) of contracts whose activity returned."""
    settings = wiring.settings or get_settings()
    threshold = stale_threshold(settings)
    now = utcnow()

    def newly_stale() -> Sequence[ColumnElement[bool]]:
        return (
            stale_criteria(now, threshold),
            not_(exists().where(StaleEpisode.contract_id == Contract.id)),
        )

    def episode_over() -> Sequence[ColumnElement[bool]]:
        return (
            exists().where(
                StaleEpisode.contract_id == Contract.id,
                or_(
                    Contract.last_activity_at > StaleEpisode.last_activity_at,
                    not_(stale_criteria(now, threshold)),
                ),
            ),
        )

    def judge(uow: UnitOfWork, contract: Contract) -> StaleStep:
        episode = uow.session.scalars(
            select(StaleEpisode).where(StaleEpisode.contract_id == contract.id)
        ).one_or_none()
        stale_now = is_stale(Status(contract.status), contract.last_activity_at, now, threshold)
        step = stale_step(
            stale_now=stale_now,
            episode_activity=episode.last_activity_at if episode else None,
            last_activity_at=contract.last_activity_at,
        )
        if step is StaleStep.DETECT:
            inserted = uow.session.execute(
                upsert_ignoring(uow.session, StaleEpisode, ["contract_id"]).values(
                    contract_id=contract.id, last_activity_at=contract.last_activity_at, detected_at=now
                )
            )
            if inserted.rowcount != 1:  # type: ignore[attr-defined]
                return StaleStep.NONE
            record_event(
                uow.session,
                contract.id,
                EventType.STALE_DETECTED,
                {
                    "lastActivity": contract.last_activity_at.isoformat(),
                    "staleDurationSeconds": round((now - contract.last_activity_at).total_seconds(), 3),
                    "thresholdMinutes": settings.contracts.stale_threshold_minutes,
                    "status": contract.status,
                },
                now,
            )
        elif step is StaleStep.CLEAR and episode is not None:
            removed = uow.session.execute(delete(StaleEpisode).where(StaleEpisode.contract_id == contract.id))
            if removed.rowcount != 1:  # type: ignore[attr-defined]
                return StaleStep.NONE
            record_event(
                uow.session,
                contract.id,
                EventType.STALE_CLEARED,
                {
                    "staleSince": episode.detected_at.isoformat(),
                    "lastActivity": contract.last_activity_at.isoformat(),
                    "status": contract.status,
                },
                now,
            )
        return step

    cleared = _each_in_its_own_transaction(
        wiring,
        episode_over,
        lambda uow, c: judge(uow, c) is StaleStep.CLEAR,
        what="stale sweep (clear)",
        chunk=chunk,
        max_seconds=max_seconds,
    )
    detected = _each_in_its_own_transaction(
        wiring,
        newly_stale,
        lambda uow, c: judge(uow, c) is StaleStep.DETECT,
        what="stale sweep (detect)",
        chunk=chunk,
        max_seconds=max_seconds,
    )
    return StaleSweepResult(detected, cleared)


# --- input timeout (seed 1.4: waiting_for_input -> paused) ---------------------------------


def pause_timed_out_inputs(
    wiring: Wiring = Wiring(), *, chunk: int = CHUNK, max_seconds: float = MAX_SECONDS
) -> int:
    """Contracts waiting for input longer than `input_timeout_hours` are paused, with the reason."""
    settings = wiring.settings or get_settings()
    timeout = input_timeout(settings)
    now = utcnow()

    def due() -> Sequence[ColumnElement[bool]]:
        return (
            Contract.status == Status.WAITING_FOR_INPUT.value,
            Contract.status_changed_at <= now - timeout,
        )

    def pause(uow: UnitOfWork, contract: Contract) -> bool:
        if not input_timed_out(Status(contract.status), contract.status_changed_at, now, timeout):
            return False
        contracts.change_status(
            uow, SERVICE_CALLER, contract.id, Status.PAUSED, reason=input_timeout_reason(timeout), now=now
        )
        return True

    return _each_in_its_own_transaction(
        wiring, due, pause, what="input timeout", chunk=chunk, max_seconds=max_seconds
    )


# --- completion finalisation (seed 2.2.3) --------------------------------------------------


def finalize_due_completions(
    wiring: Wiring = Wiring(), *, chunk: int = CHUNK, max_seconds: float = MAX_SECONDS
) -> int:
    """Finish completions whose grace period is over: the catch-all for lost countdowns."""
    settings = wiring.settings or get_settings()
    grace = timedelta(seconds=settings.contracts.completion_grace_seconds)
    now = utcnow()

    def due() -> Sequence[ColumnElement[bool]]:
        return (
            Contract.status == Status.COMPLETING.value,
            Contract.completion_detected_at <= now - grace,
        )

    def finalize(uow: UnitOfWork, contract: Contract) -> bool:
        return completion_flow.finalize_completion(uow, contract.id, now=utcnow())

    return _each_in_its_own_transaction(
        wiring, due, finalize, what="completion finalisation", chunk=chunk, max_seconds=max_seconds
    )


# --- archive retention -------------------------------------------------------------------------


def delete_expired_archives(
    wiring: Wiring = Wiring(), *, chunk: int = CHUNK, max_seconds: float = MAX_SECONDS
) -> int:
    """Delete archived contracts older than `archive_retention_days`, each one audited.

    Chunks of `chunk` contracts, each claimed with SKIP LOCKED, re-judged, audited and
    deleted in one short transaction.
    """
    settings = wiring.settings or get_settings()
    retention = archive_retention(settings)
    now = utcnow()
    cutoff = retention_cutoff(now, retention)
    reason = f"archive retention: archived more than {settings.contracts.archive_retention_days:g} days ago"
    deadline = time.monotonic() + max_seconds
    deleted = 0
    after: uuid.UUID | None = None
    while time.monotonic() < deadline:
        ids = _candidates(
            wiring,
            lambda: (Contract.status == Status.ARCHIVED.value, Contract.status_changed_at < cutoff),
            after,
            chunk,
        )
        if not ids:
            break
        with wiring.uow() as uow:
            rows = uow.session.execute(
                select(Contract.id, Contract.status, Contract.status_changed_at)
                .where(Contract.id.in_(ids))
                .with_for_update(skip_locked=True)
            ).all()
            due = [cid for cid, status, at in rows if may_delete(Status(status), at, now, retention)]
            deleted += len(delete_archived(uow.session, due, now=now, reason=reason, sweep=RETENTION_SWEEP))
        if len(ids) < chunk:
            break
        after = ids[-1]
    return deleted


__all__ = [
    "CHUNK",
    "RETENTION_SWEEP",
    "SERVICE_CALLER",
    "StaleSweepResult",
    "Wiring",
    "archive_retention",
    "claim",
    "delete_expired_archives",
    "detect_stale",
    "finalize_due_completions",
    "input_timeout",
    "pause_timed_out_inputs",
    "stale_count",
    "stale_criteria",
    "stale_threshold",
]
