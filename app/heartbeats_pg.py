"""Ingesting a heartbeats list on PostgreSQL: Python checks, the database folds.

Its own module because it is one of the two ways a list is ingested, chosen by the database in
`app.heartbeats.ingest` (whose docstring tells the whole of it); SQLite's is
`app.heartbeats_sqlite`. The fold is `PostgresStore.fold` (`app.heartbeat_store_pg`, its
statements in `app.heartbeat_sql`); what it answers, only the rare and the small (refused and
fenced heartbeats, the live notices), becomes here the report, the daemons' commands and the
dead letter.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from app.broker import Sender
from app.config import Settings
from app.db import unit_of_work
from app.domain.heartbeat_wire import wire_heartbeat
from app.domain.incarnations import starts_supervisor
from app.domain.lifecycle import CLOSED_STATUSES
from app.domain.liveness import activity_bump_before
from app.heartbeat_fencing import tell_fenced_rows
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
from app.heartbeat_store_pg import PostgresStore, remember_supervisors

# The ingestion's one logger, whichever database's path ran.
log = logging.getLogger("app.heartbeats")


def ingest_folded(
    groups: list[tuple[Any, list[Any]]],
    store: PostgresStore,
    sender: Sender | None,
    bind: Engine,
    settings: Settings,
    received_at: datetime,
    notify: Notify | None,
) -> IngestReport:
    """PostgreSQL: the same rules, with the supervisors' fold done by the database.

    Python only checks the heartbeats (the quick wire-form check; `parse_heartbeat` for
    anything else), drops repeated ids, checks the senders' rights, and hands the list to
    `PostgresStore.fold`: no supervisor row is read back, no `Heartbeat` object is built.
    """
    report = IngestReport()
    with unit_of_work(sender, engine=bind, settings=settings) as uow:
        session = uow.session
        checked = checked_items(session, groups, report, wire_heartbeat)
        owners = store.owners_by_text(session, {item["contractId"] for _, item in checked})
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        tasks: set[str] = set()
        first_contract: dict[str, str] = {}  # the contract a new supervisor would start on
        repeats = 0
        for caller, item in checked:
            contract_id = item["contractId"]
            owner, status = owners.get(contract_id) or (None, None)
            if owner is None or not caller.may_access(owner):
                report.refused.append(
                    Refusal(item, "CONTRACT_NOT_FOUND", "contractId", "no such contract visible to you")
                )
                continue
            if status in CLOSED_STATUSES:
                report.refused.append(refused_as_closed(item, status))
                continue
            key = (contract_id, item["id"])
            if key in seen:
                repeats += 1
                continue
            seen.add(key)
            tasks.add(item["taskId"])
            if starts_supervisor(item.get("incarnation")):
                first_contract.setdefault(item["taskId"], contract_id)
            rows.append({**item, "n": len(rows)})
        if rows:
            stale_threshold = timedelta(minutes=settings.contracts.stale_threshold_minutes)
            done = store.fold(
                session,
                rows,
                tasks,
                first_contract,
                received_at,
                activity_bump_before(received_at, stale_threshold),
                received=report.received,
                repeats=repeats,
                refused=len(report.refused),
                notices=notify is not None,
            )
        else:
            done = store.fold_nothing(session, received_at, report.received, len(report.refused))
        for n in done.refused:
            item = {k: v for k, v in rows[n].items() if k != "n"}
            report.refused.append(Refusal(item, "VALIDATION_FAILED", "taskId", FOREIGN_TASK))
        report.stored = done.stored
        report.duplicates = repeats + done.offered - done.stored
        report.fenced = done.fenced
        report.applied = done.applied
        report.state_changes = done.state_changes
        report.contracts_touched = done.touched
        if done.fenced_supervisors:
            tell_fenced_rows(uow, done.fenced_supervisors, received_at)
        if done.refused:
            tell_refused(uow, [_foreign_claim(rows[n]) for n in done.refused], received_at)
        if report.refused:
            park_refused(session, report.refused, received_at)
    # Committed: they have a row now (the others need none), but for those refused: another
    # contract holds them, maybe as an ordinary task, which gets no supervisors row.
    refused_tasks = {rows[n]["taskId"] for n in done.refused}
    remember_supervisors(t for t in first_contract if t not in refused_tasks)
    if notify is not None and done.notices != "[]":
        try:
            notify(done.notices)
        except Exception:  # a live notice is best effort; the table is the record
            log.warning("heartbeat notice not published", exc_info=True)
    return report


def _foreign_claim(item: Mapping[str, Any]) -> ForeignClaim:
    """A heartbeat the fold refused (its wire form), as `tell_refused` takes it."""
    return ForeignClaim(
        uuid.UUID(item["contractId"]), uuid.UUID(item["taskId"]), item["id"], item.get("daemonId")
    )


__all__ = ["ingest_folded"]
