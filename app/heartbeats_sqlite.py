"""Ingesting a heartbeats list on SQLite: the pure domain decides, the store writes.

Its own module because it is one of the two ways a list is ingested, chosen by the database in
`app.heartbeats.ingest` (whose docstring tells the whole of it); PostgreSQL's is
`app.heartbeats_pg`. SQLite has one writer at a time and a statement is a function call, so
here the list is parsed into `Heartbeat` objects, the supervisors' stored states are read in
one query, `app.domain.heartbeat_plan.plan_batch` decides every heartbeat (the rules the
PostgreSQL fold applies in SQL), and `app.heartbeat_store_sqlite` writes the result.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.broker import Sender
from app.config import Settings
from app.db import unit_of_work
from app.domain.heartbeat_plan import BatchPlan, Outcome, held_by_another, plan_batch
from app.domain.heartbeats import Heartbeat, parse_heartbeat
from app.domain.lifecycle import CLOSED_STATUSES
from app.domain.liveness import activity_bump_before
from app.heartbeat_fencing import tell_fenced
from app.heartbeat_outcomes import (
    FOREIGN_TASK,
    IngestReport,
    Notify,
    Refusal,
    checked_items,
    park_refused,
    refused_as_closed,
)
from app.heartbeat_refusals import ForeignClaim, tell_refused
from app.heartbeat_store import BatchCounts
from app.heartbeat_store_sqlite import SqliteStore

# The ingestion's one logger, whichever database's path ran.
log = logging.getLogger("app.heartbeats")

NOTICE: Final = "heartbeat"


def ingest_planned(
    groups: list[tuple[Any, list[Any]]],
    store: SqliteStore,
    sender: Sender | None,
    bind: Engine,
    settings: Settings,
    received_at: datetime,
    notify: Notify | None,
) -> IngestReport:
    """SQLite: ingest one message's groups in one transaction; see the module docstring."""
    report = IngestReport()
    notices: list[dict[str, Any]] = []
    with unit_of_work(sender, engine=bind, settings=settings) as uow:
        session = uow.session
        accepted = checked_items(session, groups, report, parse_heartbeat)
        owners, task_contracts = store.owners_and_tasks(
            session, {hb.contract_id for _, hb in accepted}, {hb.task_id for _, hb in accepted}
        )
        heartbeats: list[Heartbeat] = []
        foreign: list[Heartbeat] = []  # refused: another contract holds the task id
        for caller, hb in accepted:
            owner, status = owners.get(hb.contract_id) or (None, None)
            if owner is None or not caller.may_access(owner):
                report.refused.append(
                    Refusal(
                        hb.to_json(), "CONTRACT_NOT_FOUND", "contractId", "no such contract visible to you"
                    )
                )
            elif status in CLOSED_STATUSES:
                report.refused.append(refused_as_closed(hb.to_json(), status))
            elif held_by_another(task_contracts.get(hb.task_id), hb.contract_id):
                report.refused.append(Refusal(hb.to_json(), "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
                foreign.append(hb)
            else:
                heartbeats.append(hb)
        plan = _apply_supervisors(session, store, heartbeats, received_at)
        for hb, outcome in zip(plan.heartbeats, plan.outcomes, strict=True):
            if outcome is Outcome.REFUSED:
                report.refused.append(Refusal(hb.to_json(), "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
                foreign.append(hb)
        rows = plan.rows_to_store()
        live = plan.live_contracts()
        counts = BatchCounts(
            received=report.received,
            fenced=plan.count(Outcome.FENCED),
            refused=len(report.refused),
            in_batch_duplicates=plan.count(Outcome.DUPLICATE),
        )
        stored, touched = store.write_rest(
            session,
            rows,
            plan,
            sorted(live),
            received_at,
            activity_bump_before(received_at, timedelta(minutes=settings.contracts.stale_threshold_minutes)),
            counts,
        )
        report.stored = stored
        report.duplicates = counts.in_batch_duplicates + (len(rows) - stored)
        report.fenced = counts.fenced
        report.applied = plan.count(Outcome.APPLIED)
        report.state_changes = len(plan.changes)
        report.contracts_touched = touched
        if plan.fenced:
            tell_fenced(uow, plan, received_at)
        if foreign:
            claims = [ForeignClaim(h.contract_id, h.task_id, str(h.id), h.daemon_id) for h in foreign]
            tell_refused(uow, claims, received_at)
        if report.refused:
            park_refused(session, report.refused, received_at)
        if notify is not None:
            notices = [
                {
                    "notice": NOTICE,
                    "contractId": str(after.contract_id),
                    "payload": {
                        "taskId": str(after.task_id),
                        "state": after.state.value,
                        "activity": after.current_activity,
                        "progress": after.progress,
                        "incarnation": after.incarnation,
                        "alive": after.alive,
                    },
                }
                for _, after in plan.writes.values()
            ]
    if notify is not None and notices:
        try:
            notify(json.dumps(notices, separators=(",", ":")))
        except Exception:  # a live notice is best effort; the table is the record
            log.warning("heartbeat notice not published", exc_info=True)
    return report


def _apply_supervisors(
    session: Session, store: SqliteStore, heartbeats: list[Heartbeat], received_at: datetime
) -> BatchPlan:
    """Plan every heartbeat against the supervisors as stored, and write the supervisors it moves.

    Read once and written once: the transaction began IMMEDIATE (one writer at a time), so no
    other writer moves a row between the read and the write, and the plan is final.
    """
    current = store.supervisors(session, {hb.task_id for hb in heartbeats})
    plan = plan_batch(heartbeats, current, received_at)
    store.upsert_supervisors(session, list(plan.writes.values()), received_at)
    return plan


__all__ = ["NOTICE", "ingest_planned"]
