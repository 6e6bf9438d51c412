"""What became of each report a sender handed us: pending, applied, refused, or unknown.

Why a table and not the broker: kombu's Redis transport pops a message before it records it
as unacknowledged, so a worker stopped or killed right after its fetch loses that message
without a trace (DESIGN, "Every asynchronous report is accountable"). The sender's receipt
therefore lives in the database:

- **accepted** (`accept`): written by the API module before the message goes to the broker,
  `pending`, with the payload, so the message can be sent again with the same id;
- **applied** (`applied_at_commit`): written by the worker in the very transaction that
  applies the message, just before COMMIT, with the event ids that transaction produced.
  One statement on the hot path; the message-id claim (`processed_messages`) commits with
  it, so "applied" and "claimed" can never disagree;
- **refused** (`mark_refused`): written with the dead letter when a worker gives up on it.

A sender who sees `pending` long after acceptance (or `unknown`) resends; resending is
idempotent because the worker's claim and this row's `applied` state both stop a second
application.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

from pydantic import Field
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.db import dialect_insert
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.domain.uuids import id_argument
from app.foreign_tasks import held_elsewhere_sql
from app.models import MessageOutcome
from app.pending_writes import hold_applied
from app.prepared import driver_rows
from app.schemas import Schema, Timestamp

_APPLIED_KEY: Final = "makima.applied_messages"


class OutcomeStatus(StrEnum):
    PENDING = "pending"
    APPLIED = "applied"
    REFUSED = "refused"
    UNKNOWN = "unknown"


class MessageError(Schema):
    """Why a worker refused the message: a stable code and a sentence a person can act on."""

    code: str = Field(description="VALIDATION_FAILED, CONTRACT_NOT_FOUND, MESSAGE_REJECTED, ...")
    message: str


class MessageStatus(Schema):
    """What became of one message this caller sent (`unknown`: never accepted from this caller)."""

    message_id: str
    principal_id: uuid.UUID | None = Field(
        default=None, description="Who sent it (a message id is unique per sender); null when unknown."
    )
    status: OutcomeStatus = Field(description="pending, applied, refused or unknown")
    contract_id: uuid.UUID | None = None
    task: str | None = Field(default=None, description="The report's kind, e.g. contracts.task_completed.")
    accepted_at: Timestamp | None = None
    updated_at: Timestamp | None = None
    event_ids: list[int] = Field(default_factory=list, description="Events the message produced (applied).")
    error: MessageError | None = Field(default=None, description="Why it was refused (refused).")
    resent: bool = Field(default=False, description="True when this answer comes from a resend that sent it.")


@dataclass(frozen=True, slots=True)
class Sent:
    """Who sent a message and which one: the key of its outcome row."""

    principal_id: uuid.UUID
    message_id: str
    contract_id: uuid.UUID
    task: str


# -- accepting (API module) ----------------------------------------------------------------------


def refuse_id_of_another_sender(session: Session, sent: Sent) -> None:
    """VALIDATION_FAILED when another principal already sent this message id on this contract.

    A worker's claim (`processed_messages`) is the sender's since migration 0017, but a claim
    made before it stands for every sender of its id on its contract (its sender cannot be
    told), so a second sender's report under such an id is still taken for a repeat delivery
    and dropped while its receipt says applied. Refused here, at once, the sender can choose
    another id.
    """
    other = session.scalars(
        select(MessageOutcome.principal_id)
        .where(
            MessageOutcome.message_id == sent.message_id,
            MessageOutcome.contract_id == sent.contract_id,
            MessageOutcome.principal_id != sent.principal_id,
        )
        .limit(1)
    ).first()
    if other is not None:
        raise ValidationFailed(
            f"messageId '{sent.message_id}' was already used on this contract by another sender; "
            "message ids must be unique per contract across senders: use a UUID (the default "
            "when none is given) or prefix your daemon's id.",
            details={"field": "messageId"},
        )


def accept(session: Session, sent: Sent, payload: Mapping[str, Any], now: datetime) -> bool:
    """Record the message as pending with its payload; False when it was already applied.

    A repeat of an applied message (a resend, the same id reported again) changes nothing
    and must not be sent again; a pending or refused one is reset to pending and sent.
    """
    refuse_id_of_another_sender(session, sent)
    insert = dialect_insert(session, MessageOutcome).values(
        principal_id=sent.principal_id,
        message_id=sent.message_id,
        contract_id=sent.contract_id,
        task=sent.task,
        payload=dict(payload),
        status=OutcomeStatus.PENDING.value,
        accepted_at=now,
        updated_at=now,
    )
    stmt = insert.on_conflict_do_update(
        index_elements=["principal_id", "message_id"],
        set_={
            "contract_id": sent.contract_id,
            "task": sent.task,
            "payload": insert.excluded.payload,
            "status": OutcomeStatus.PENDING.value,
            "error_code": None,
            "error_message": None,
            "updated_at": now,
        },
        # Only the same report again: a message id names one report, never another one.
        where=(MessageOutcome.status != OutcomeStatus.APPLIED.value)
        & (MessageOutcome.task == insert.excluded.task)
        & (MessageOutcome.contract_id == insert.excluded.contract_id)
        & (MessageOutcome.payload == insert.excluded.payload),
    ).returning(MessageOutcome.status)
    if session.execute(stmt).first() is not None:
        return True
    existing = session.get(MessageOutcome, (sent.principal_id, sent.message_id), populate_existing=True)
    if existing is not None and (
        existing.task != sent.task
        or existing.contract_id != sent.contract_id
        or existing.payload != dict(payload)
    ):
        raise ValidationFailed(
            f"messageId '{sent.message_id}' was already used for another report "
            f"({existing.task} on contract {existing.contract_id}); a message id names one report. "
            "Use a new id for a new report, or resend the same report unchanged.",
            details={
                "messageId": sent.message_id,
                "usedFor": existing.task,
                "contractId": str(existing.contract_id),
            },
        )
    return False


@dataclass(frozen=True, slots=True)
class Checked:
    """What the one-statement acceptance saw: the contract's owner and status (None when there
    is no such contract), the other contract holding the reported task id (None when none does)
    and whether it holds it as its supervisor (`app.foreign_tasks`), and whether the receipt
    went in."""

    owner_id: str | None
    status: str | None
    task_contract_id: uuid.UUID | None
    task_held_as_supervisor: bool
    accepted: bool


_TERMINAL: Final = ", ".join(f"'{s.value}'" for s in sorted(Status.terminal()))

# The checks `ContractsAPI._enqueue` makes and the pending receipt, as one statement: the
# receipt goes in only when every check passes; the facts come back so the caller can say
# which one failed. The conflict rule is `accept`'s.
_ACCEPT_CHECKED_SQL = (
    "WITH c AS (SELECT owner_id, status FROM contracts WHERE id = %(contract_id)s::uuid), "
    f"t AS ({held_elsewhere_sql('%(task_id)s::uuid', '%(contract_id)s::uuid')} LIMIT 1), "
    "ok AS (SELECT 1 FROM c WHERE (%(any_owner)s OR c.owner_id = %(owner_id)s) "
    f"AND NOT (%(refuse_closed)s AND c.status IN ({_TERMINAL})) "
    "AND NOT EXISTS (SELECT 1 FROM t) AND NOT EXISTS (SELECT 1 FROM message_outcomes o "
    "WHERE o.message_id = %(message_id)s AND o.contract_id = %(contract_id)s::uuid "
    "AND o.principal_id <> %(principal_id)s::uuid)), "
    "ins AS (INSERT INTO message_outcomes (principal_id, message_id, contract_id, task, payload, status, "
    "accepted_at, updated_at) SELECT %(principal_id)s::uuid, %(message_id)s, %(contract_id)s::uuid, "
    "%(task)s, %(payload)s::jsonb, 'pending', %(now)s, %(now)s FROM ok "
    "ON CONFLICT (principal_id, message_id) DO UPDATE SET contract_id = EXCLUDED.contract_id, "
    "task = EXCLUDED.task, payload = EXCLUDED.payload, status = 'pending', error_code = NULL, "
    "error_message = NULL, updated_at = EXCLUDED.updated_at "
    "WHERE message_outcomes.status <> 'applied' AND message_outcomes.task = EXCLUDED.task "
    "AND message_outcomes.contract_id = EXCLUDED.contract_id "
    "AND message_outcomes.payload = EXCLUDED.payload RETURNING 1) "
    "SELECT (SELECT owner_id FROM c), (SELECT status FROM c), (SELECT contract_id FROM t), "
    "COALESCE((SELECT supervisor FROM t), false), EXISTS (SELECT 1 FROM ins)"
)


def accept_checked(
    connection: Connection,
    caller: Caller,
    sent: Sent,
    payload: Mapping[str, Any],
    now: datetime,
    *,
    refuse_closed: bool,
    task_id: uuid.UUID | None,
    prepare: bool = True,
) -> Checked:
    """Check the report and record it pending in one statement, a transaction by itself (PostgreSQL).

    The same checks and the same receipt as the API module's session path (`accept` after
    reading the contract and the task), in one round trip on a connection in autocommit
    (`app.db.driver_autocommit`): a report is accepted at the pace of one statement. When
    the receipt did not go in although every check passed (the id was used before), the
    caller asks `accept` why: already applied, or another report under that id.
    """
    params = {
        "contract_id": str(sent.contract_id),
        "task_id": str(task_id) if task_id is not None else None,
        "any_owner": caller.is_admin,
        "owner_id": caller.owner_id,
        "refuse_closed": refuse_closed,
        "principal_id": str(sent.principal_id),
        "message_id": sent.message_id,
        "task": sent.task,
        "payload": json.dumps(dict(payload)),
        "now": now,
    }
    ((owner_id, status, task_contract, supervisor, accepted),) = driver_rows(
        connection, _ACCEPT_CHECKED_SQL, params, prepare=prepare
    )
    return Checked(owner_id, status, task_contract, bool(supervisor), bool(accepted))


# -- applying (workers) ----------------------------------------------------------------------


def applied_at_commit(session: Session, sent: Sent) -> None:
    """Mark the message applied when this transaction commits, with the events it wrote.

    Event ids exist only once the held events are written, so the receipt is held with them
    (`app.pending_writes`) and goes out in the same statement, inside the same transaction:
    a rollback (a refusal, a crash) leaves the message pending.
    """
    hold_applied(session, sent.principal_id, sent.message_id, sent.contract_id, sent.task)


# -- refusing (dead letters) --------------------------------------------------------------------


def sent_from_payload(task: str | None, payload: Any) -> Sent | None:
    """The sender's key from a report's payload; None for messages no sender is waiting on."""
    if not isinstance(payload, Mapping) or not task:
        return None
    try:
        return Sent(
            principal_id=uuid.UUID(str(payload["principalId"])),
            message_id=str(payload["messageId"])[:200],
            contract_id=uuid.UUID(str(payload["contractId"])),
            task=task,
        )
    except (KeyError, ValueError, TypeError):
        return None


def mark_refused(session: Session, sent: Sent, code: str, message: str, now: datetime) -> None:
    """The message was dead-lettered: record why, unless it was applied (that stays true)."""
    insert = dialect_insert(session, MessageOutcome).values(
        principal_id=sent.principal_id,
        message_id=sent.message_id,
        contract_id=sent.contract_id,
        task=sent.task,
        status=OutcomeStatus.REFUSED.value,
        error_code=code[:60],
        error_message=message,
        accepted_at=now,
        updated_at=now,
    )
    session.execute(
        insert.on_conflict_do_update(
            index_elements=["principal_id", "message_id"],
            set_={
                "status": OutcomeStatus.REFUSED.value,
                "error_code": insert.excluded.error_code,
                "error_message": insert.excluded.error_message,
                "updated_at": now,
            },
            where=MessageOutcome.status != OutcomeStatus.APPLIED.value,
        )
    )


# -- reading --------------------------------------------------------------------------------------


# How many senders an ambiguous admin lookup names: enough to choose from, bounded in size.
AMBIGUOUS_LISTED: Final = 20


def find(
    session: Session, caller: Caller, message_id: str, principal_id: uuid.UUID | None = None
) -> MessageOutcome | None:
    """The caller's own message; an admin sees anyone's.

    A message id is unique per sender, not across senders (each daemon chooses its own), so
    an admin's lookup is exact: `principal_id` names the sender; without it the admin's own
    message if there is one, else the only sender's; when several other principals sent that
    id, `ValidationFailed` lists them (`details.principalIds`) instead of picking one, since a
    resend would send the one picked. Another principal's message is reported to a caller who
    is not an admin exactly like a missing one, `principal_id` or not.
    """
    if principal_id is not None:
        principal_id = id_argument(principal_id, "principalId")  # a UUID or its text, as answered
    query = select(MessageOutcome).where(MessageOutcome.message_id == message_id)
    if not caller.is_admin:
        if principal_id is not None and principal_id != caller.principal_id:
            return None
        return session.scalars(query.where(MessageOutcome.principal_id == caller.principal_id)).first()
    if principal_id is not None:
        return session.scalars(query.where(MessageOutcome.principal_id == principal_id)).first()
    rows = list(
        session.scalars(
            query.order_by(
                (MessageOutcome.principal_id != caller.principal_id), MessageOutcome.accepted_at.desc()
            ).limit(AMBIGUOUS_LISTED + 1)
        )
    )
    if len(rows) <= 1 or rows[0].principal_id == caller.principal_id:
        return rows[0] if rows else None
    senders = [str(row.principal_id) for row in rows[:AMBIGUOUS_LISTED]]
    raise ValidationFailed(
        f"messageId {message_id!r} was sent by {len(senders)}{'+' if len(rows) > AMBIGUOUS_LISTED else ''} "
        "principals: give principalId to say whose message you mean.",
        details={"field": "principalId", "principalIds": senders},
    )


def status_view(message_id: str, row: MessageOutcome | None, *, resent: bool = False) -> MessageStatus:
    if row is None:
        return MessageStatus(message_id=message_id, status=OutcomeStatus.UNKNOWN)
    error = (
        MessageError(code=row.error_code or "REFUSED", message=row.error_message or "")
        if row.status == OutcomeStatus.REFUSED.value
        else None
    )
    return MessageStatus(
        message_id=row.message_id,
        principal_id=row.principal_id,
        status=OutcomeStatus(row.status),
        contract_id=row.contract_id,
        task=row.task,
        accepted_at=row.accepted_at,
        updated_at=row.updated_at,
        event_ids=list(row.event_ids or []),
        error=error,
        resent=resent,
    )


__all__ = [
    "Checked",
    "MessageError",
    "MessageStatus",
    "OutcomeStatus",
    "Sent",
    "accept",
    "accept_checked",
    "applied_at_commit",
    "find",
    "mark_refused",
    "sent_from_payload",
    "status_view",
]
