"""What became of a heartbeats list: the report the worker returns, and what it refused.

Its own module because both ingestion paths (`app.heartbeats_pg`, `app.heartbeats_sqlite`) fill
the same report and refuse in the same words, and the entry point (`app.heartbeats`) and the
worker task (`workers.heartbeats`) read it: the counters' increments and the per-heartbeat
outcomes (`IngestReport`), each refused heartbeat with its code, field and problem (`Refusal`,
`refused_as_closed`, `FOREIGN_TASK`), the refused heartbeats of a list kept as one dead letter
(`park_refused`), and the shape of the live notices handed over after commit (`Notify`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, TypeVar

from sqlalchemy.orm import Session

from app.auth import Caller, InvalidPrincipal, check_principal
from app.domain.heartbeat_plan import closed_contract_refusal
from app.domain.heartbeats import InvalidHeartbeat
from app.heartbeat_store import STATE_CHANGED
from app.queues import TaskName

# The dead letter's problem for a heartbeat naming another contract's task id (its supervisor
# or an ordinary task reported started there): a task id belongs to one contract.
FOREIGN_TASK: Final = "another contract's supervisor or task"

# Receives, after commit, the live monitor's `heartbeat` notices of the supervisors a list wrote:
# a JSON array of `{"notice": "heartbeat", "contractId", "payload": {taskId, state, activity,
# progress, incarnation, alive}}`, the shape the live channel carries (`app.live_events`). Text,
# so that on PostgreSQL what the fold's statement built goes out as it is, never decoded here.
Notify = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Refusal:
    raw: Any
    code: str
    field: str | None
    problem: str

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "field": self.field, "problem": self.problem, "heartbeat": self.raw}


@dataclass
class IngestReport:
    """What one message did (the counters' increments, and the per-heartbeat outcomes)."""

    received: int = 0
    stored: int = 0
    duplicates: int = 0
    fenced: int = 0
    refused: list[Refusal] = field(default_factory=list)
    applied: int = 0
    state_changes: int = 0
    contracts_touched: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "fenced": self.fenced,
            "refused": len(self.refused),
            "applied": self.applied,
            "stateChanges": self.state_changes,
        }

    def events_written(self) -> dict[str, int]:
        """The contract events the list's transaction wrote, by type, for /metrics after commit.

        Only `supervisor_state_changed`, one per state change: both stores write exactly one
        event per change and no other type, so the count they answer is the count by type.
        """
        return {STATE_CHANGED: self.state_changes}


def refused_as_closed(raw: Any, status: str) -> Refusal:
    """A heartbeat on a closed contract, refused as the fronts refuse it: it creates, revives
    and stores nothing (see `app.heartbeats`)."""
    refusal = closed_contract_refusal(status)
    assert refusal is not None
    return Refusal(raw, refusal.code, "contractId", refusal.message)


T = TypeVar("T")


def checked_items(
    session: Session,
    groups: Sequence[tuple[Any, list[Any]]],
    report: IngestReport,
    parse: Callable[[Any], T],
) -> list[tuple[Caller, T]]:
    """Each group's sender checked once and each of its heartbeats parsed (the wire form on
    PostgreSQL, a `Heartbeat` on SQLite); what fails is added to `report.refused`, named."""
    checked: list[tuple[Caller, T]] = []
    for principal, items in groups:
        report.received += len(items)
        try:
            caller = check_principal(session, uuid.UUID(str(principal)))
        except (InvalidPrincipal, ValueError) as exc:
            reason = str(exc) if isinstance(exc, InvalidPrincipal) else "principalId is not a UUID"
            report.refused += [Refusal(r, "MESSAGE_REJECTED", "principalId", reason) for r in items]
            continue
        for raw in items:
            try:
                checked.append((caller, parse(raw)))
            except InvalidHeartbeat as exc:
                report.refused.append(Refusal(raw, "VALIDATION_FAILED", exc.field, exc.problem))
    return checked


def park_refused(session: Session, refused: list[Refusal], now: datetime) -> None:
    """Refused heartbeats of a message are kept as one dead letter (the rest were stored)."""
    from app.dead_letters import RejectedMessage, record_dead_letter

    body = json.dumps([r.to_json() for r in refused], default=str, ensure_ascii=True)
    first = refused[0]
    record_dead_letter(
        session,
        RejectedMessage(
            queue="heartbeats",
            task_name=TaskName.INGEST_HEARTBEATS.value,
            message_id=None,
            headers=None,
            raw_body=body,
            content_type="application/json",
            content_encoding="utf-8",
            error=f"{first.code}: {len(refused)} heartbeat(s) refused, first: {first.field}: {first.problem}",
            error_code=first.code,
        ),
        now,
    )


__all__ = [
    "FOREIGN_TASK",
    "IngestReport",
    "Notify",
    "Refusal",
    "checked_items",
    "park_refused",
    "refused_as_closed",
]
