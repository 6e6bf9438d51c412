"""A daemon's reports as `ContractsAPI` takes them: task started and completed, deliverables,
worktrees created and removed, completion checks asked for; and what became of each message.

Why enqueued: a daemon must never block on a worker, so each report is judged as far as it can
be now, recorded as pending and sent on the broker (`APIBase._enqueue`), and its message id
comes back at once; `message_status` and `resend` follow it from there (`app.message_outcomes`).
"""

from __future__ import annotations

import uuid
from typing import Any

from app import daemon_commands as command_service
from app import message_outcomes
from app import worktrees as worktree_service
from app.api.base import APIBase, check_flag
from app.domain.errors import ValidationFailed
from app.domain.message_ids import check_message_id
from app.domain.phases import MAX_DELIVERABLE_ID
from app.domain.reported_text import MAX_PHASE, MAX_TASK_NAME, TASK_NAME_RULE, name_problem
from app.message_outcomes import MessageStatus, OutcomeStatus, Sent
from app.queues import TaskName


def _text(value: object, field: str, most: int) -> str:
    """A text argument as the worker will hold it: a string of 1 to `most` characters that
    UTF-8 (and so PostgreSQL) can store. Refused now, naming the field, rather than accepted
    with a message id and refused by the worker (or by the database's encoder) later."""
    if not isinstance(value, str):
        raise ValidationFailed(
            f"{field} must be a string, not {type(value).__name__}", details={"field": field}
        )
    if not 1 <= len(value) <= most:
        raise ValidationFailed(
            f"{field} must be 1 to {most} characters (got {len(value)})",
            details={"field": field, "limit": most},
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationFailed(
            f"{field} holds a lone UTF-16 surrogate (U+{ord(value[exc.start]):04X}), which is not "
            "a character and cannot be stored",
            details={"field": field},
        ) from None
    return value


def _task_name(name: str) -> str:
    """A task report's name, checked now by the rule the HTTP front applies (one line, no
    control or bidirectional character, at most 500 characters): a worker cannot store what
    it refuses."""
    _text(name, "taskName", MAX_TASK_NAME)
    problem = name_problem(name, TASK_NAME_RULE)
    if problem is not None:
        raise ValidationFailed(f"taskName {problem}", details={"field": "taskName"})
    return name


def _worktree_fields(path: str, daemon_id: str | None, *, created: bool) -> dict[str, Any]:
    """A worktree report's fields, checked now: a worker cannot store what these refuse."""
    fields: dict[str, Any] = {"path": worktree_service.check_worktree_path(path, one_spelling=created)}
    if daemon_id is not None:
        fields["daemonId"] = command_service.check_daemon_id(daemon_id)
    return fields


class ReportsMixin(APIBase):
    """Reports a daemon sends without waiting, and the fate of each message it sent."""

    # -- what became of a message --------------------------------------------------------

    def message_status(
        self, message_id: str | uuid.UUID, principal_id: uuid.UUID | None = None
    ) -> MessageStatus:
        """What became of a message this caller sent: pending, applied, refused or unknown.

        Another principal's message answers `unknown`, exactly like one never sent; an admin
        sees every principal's (`principal_id` names the sender when several used the id:
        `message_outcomes.find`). The id as the report returned it, or a `UUID` like every
        other id this module takes. An id no report could carry (`app.domain.message_ids`) is
        VALIDATION_FAILED naming the rule, not `unknown`: no resend could ever make it known.
        """
        message_id = check_message_id(str(message_id) if isinstance(message_id, uuid.UUID) else message_id)
        with self._uow() as uow:
            return message_outcomes.status_view(
                message_id, message_outcomes.find(uow.session, self.caller, message_id, principal_id)
            )

    def resend(self, message_id: str | uuid.UUID, principal_id: uuid.UUID | None = None) -> MessageStatus:
        """Send a pending or refused message again with the same id; an applied one is left be.

        Idempotent: the worker claims the id in the transaction that applies it, so a resend
        of a message that was not lost after all is applied once. `unknown` (never accepted
        from this caller) sends nothing: the caller must report it afresh. An id no report could
        carry is VALIDATION_FAILED naming the rule.
        """
        message_id = check_message_id(str(message_id) if isinstance(message_id, uuid.UUID) else message_id)
        with self._uow() as uow:
            row = message_outcomes.find(uow.session, self.caller, message_id, principal_id)
            if row is None or row.status == OutcomeStatus.APPLIED.value or row.payload is None:
                return message_outcomes.status_view(message_id, row)
            sent = Sent(row.principal_id, row.message_id, row.contract_id, row.task)
            payload = dict(row.payload)
            fresh = message_outcomes.accept(uow.session, sent, payload, self._clock())
        if fresh:
            self._send(row.task, payload, None)
        with self._uow() as uow:
            return message_outcomes.status_view(
                message_id,
                message_outcomes.find(uow.session, self.caller, message_id, row.principal_id),
                resent=fresh,
            )

    # -- asynchronous reports (enqueue and return the message id) ------------------------

    def report_task_started(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        task_name: str,
        *,
        is_supervisor: bool = False,
        message_id: str | None = None,
    ) -> str:
        return self._enqueue(
            TaskName.TASK_STARTED,
            contract_id,
            message_id,
            {
                "taskId": str(task_id),
                "taskName": _task_name(task_name),
                "isSupervisor": check_flag(is_supervisor, "isSupervisor"),
            },
            closed="tasks",
            reported_task=task_id,
        )

    def report_task_completed(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        task_name: str,
        success: bool,
        message_id: str | None = None,
    ) -> str:
        """A task finished. A task never reported started is allowed (it is recorded now),
        unless the contract is closed or the task id is another contract's."""
        return self._enqueue(
            TaskName.TASK_COMPLETED,
            contract_id,
            message_id,
            {
                "taskId": str(task_id),
                "taskName": _task_name(task_name),
                "success": check_flag(success, "success"),
            },
            closed="task results",
            reported_task=task_id,
        )

    def mark_deliverable(
        self,
        contract_id: uuid.UUID,
        deliverable_id: str,
        *,
        phase: str | None = None,
        message_id: str | None = None,
    ) -> str:
        return self._enqueue(
            TaskName.MARK_DELIVERABLE,
            contract_id,
            message_id,
            {
                "deliverableId": _text(deliverable_id, "deliverableId", MAX_DELIVERABLE_ID),
                "phase": None if phase is None else _text(phase, "phase", MAX_PHASE),
            },
            closed="deliverables",
        )

    def report_worktree_created(
        self,
        contract_id: uuid.UUID,
        path: str,
        message_id: str | None = None,
        *,
        daemon_id: str | None = None,
    ) -> str:
        """A daemon created a worktree (naming itself, so commands about it reach its queue)."""
        return self._enqueue(
            TaskName.WORKTREE_CREATED,
            contract_id,
            message_id,
            _worktree_fields(path, daemon_id, created=True),
            closed="worktrees",
        )

    def report_worktree_removed(
        self,
        contract_id: uuid.UUID,
        path: str,
        message_id: str | None = None,
        *,
        daemon_id: str | None = None,
    ) -> str:
        """A daemon removed a worktree; allowed on closed contracts too (removal follows
        completion). A path never reported created is recorded as removed all the same."""
        return self._enqueue(
            TaskName.WORKTREE_REMOVED,
            contract_id,
            message_id,
            _worktree_fields(path, daemon_id, created=False),
        )

    def request_completion_check(self, contract_id: uuid.UUID, message_id: str | None = None) -> str:
        """Ask a worker to judge the gate and run the flow if it is met; returns at once."""
        return self._enqueue(TaskName.CHECK_COMPLETION, contract_id, message_id, {})
