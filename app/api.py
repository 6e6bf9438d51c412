"""The API module: the one entry point for every caller, with no web framework inside it.

A daemon constructs `ContractsAPI(token)` and calls it; the HTTP front does the same for
each request with the caller it authenticated. Reports a daemon must never block on
(`report_task_completed`, `mark_deliverable`, ...) are enqueued on the broker and return the
message id at once. Commands whose caller must see the answer now (create, change status,
change phase) run as one short guarded transaction here, with the same domain functions the
workers use, and dispatch their follow-ups only after commit.

    api = ContractsAPI("mk_...")
    api.report_task_completed(contract_id, task_id, "write tests", success=True)

Answers are the typed models of `app.schemas` (attribute access in Python, camelCase JSON
with `.model_dump(mode="json")`), the same classes the HTTP front publishes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from app import completion_flow, contracts, schemas, views
from app.auth import Caller, authenticate
from app.broker import Sender, send_task
from app.config import Settings, get_settings
from app.contract_rows import get_contract
from app.db import UnitOfWork, unit_of_work
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phase_change import PhaseChangeRequest
from app.events import event_view, events_after
from app.models import utcnow
from app.queues import TaskName
from app.views import ContractFilter, contract_view, contract_views


class ContractsAPI:
    """Everything a caller may do, on behalf of one authenticated principal."""

    def __init__(
        self,
        token: str | None = None,
        *,
        caller: Caller | None = None,
        engine: Engine | None = None,
        sender: Sender | None = None,
        settings: Settings | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._engine = engine
        self._send: Sender = sender or send_task
        self._settings = settings or get_settings()
        self._clock = clock
        if caller is None:
            with unit_of_work(engine=engine, settings=self._settings) as uow:
                caller = authenticate(uow.session, token)
        self.caller = caller

    # -- plumbing ------------------------------------------------------------------------

    def _uow(self) -> AbstractContextManager[UnitOfWork]:
        return unit_of_work(self._send, engine=self._engine, settings=self._settings)

    def _enqueue(self, task: TaskName, contract_id: uuid.UUID, message_id: str | None, **fields: Any) -> str:
        message_id = message_id or str(uuid.uuid4())
        payload = {
            "messageId": message_id,
            "principalId": str(self.caller.principal_id),
            "contractId": str(contract_id),
            **fields,
        }
        self._send(task, payload, None)
        return message_id

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
            taskId=str(task_id),
            taskName=task_name,
            isSupervisor=is_supervisor,
        )

    def report_task_completed(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        task_name: str,
        success: bool,
        message_id: str | None = None,
    ) -> str:
        return self._enqueue(
            TaskName.TASK_COMPLETED,
            contract_id,
            message_id,
            taskId=str(task_id),
            taskName=task_name,
            success=success,
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
            TaskName.MARK_DELIVERABLE, contract_id, message_id, deliverableId=deliverable_id, phase=phase
        )

    def report_worktree_created(
        self, contract_id: uuid.UUID, path: str, message_id: str | None = None
    ) -> str:
        return self._enqueue(TaskName.WORKTREE_CREATED, contract_id, message_id, path=path)

    def request_completion_check(self, contract_id: uuid.UUID, message_id: str | None = None) -> str:
        """Ask a worker to judge the gate and run the flow if it is met; returns at once."""
        return self._enqueue(TaskName.CHECK_COMPLETION, contract_id, message_id)

    def check_completion(self, contract_id: uuid.UUID) -> schemas.CompletionCheck:
        """Judge the gate now and answer; when it is met, the flow is enqueued after commit."""
        with self._uow() as uow:
            result, would = completion_flow.check_completion(uow, self.caller, contract_id)
            return schemas.CompletionCheck(
                ready=result.ready, would_complete=would, missing=list(result.missing)
            )

    # -- synchronous guarded commands ----------------------------------------------------

    def create_contract(
        self,
        name: str,
        contract_type: str,
        *,
        phase_guard: bool = False,
        auto_complete_enabled: bool | None = None,
        phase_config: dict[str, Any] | None = None,
    ) -> schemas.Contract:
        with self._uow() as uow:
            contract = contracts.create_contract(
                uow,
                self.caller,
                name=name,
                contract_type=contract_type,
                phase_guard=phase_guard,
                auto_complete_enabled=auto_complete_enabled,
                phase_config=phase_config,
                now=self._clock(),
            )
            return contract_view(uow.session, contract)

    def get_contract(self, contract_id: uuid.UUID) -> schemas.Contract:
        with self._uow() as uow:
            return contract_view(uow.session, get_contract(uow.session, self.caller, contract_id))

    def check_visible(self, contract_id: uuid.UUID) -> None:
        """Raise ContractNotFound unless this caller may see the contract (one indexed read).

        Reports are enqueued, so a wrong id would only surface later as a dead letter; the
        HTTP front checks first to answer 404 at once.
        """
        with self._uow() as uow:
            get_contract(uow.session, self.caller, contract_id)

    def list_contracts(self, flt: ContractFilter | None = None) -> schemas.ContractPage:
        with self._uow() as uow:
            rows, cursor = views.list_contracts(
                uow.session, self.caller, flt or ContractFilter(), self._clock(), uow.settings
            )
            return schemas.ContractPage(contracts=contract_views(uow.session, rows), next_cursor=cursor)

    def change_status(
        self,
        contract_id: uuid.UUID,
        target: Status,
        *,
        reason: str | None = None,
        blocker: str | None = None,
        waiting_for: WaitingFor | None = None,
    ) -> schemas.ChangeStatusResponse:
        with self._uow() as uow:
            previous, contract = contracts.change_status(
                uow,
                self.caller,
                contract_id,
                target,
                reason=reason,
                blocker=blocker,
                waiting_for=waiting_for,
                now=self._clock(),
            )
            return schemas.ChangeStatusResponse(
                success=True,
                previous_status=previous,
                new_status=Status(contract.status),
                rejection_reason=None,
                contract=contract_view(uow.session, contract),
            )

    def change_phase(
        self,
        contract_id: uuid.UUID,
        phase: str,
        *,
        expected_version: int | None = None,
        confirmed: bool = False,
        force: bool = False,
    ) -> schemas.Contract:
        request = PhaseChangeRequest(phase, expected_version, confirmed, force)
        with self._uow() as uow:
            contract = contracts.change_phase(uow, self.caller, contract_id, request, now=self._clock())
            return contract_view(uow.session, contract)

    def complete_deliverable(
        self, contract_id: uuid.UUID, deliverable_id: str, *, phase: str | None = None
    ) -> schemas.DeliverableCompletion:
        """Mark now and answer now: an invalid id is the caller's error, not a dead letter."""
        with self._uow() as uow:
            contract, newly = contracts.mark_deliverable(
                uow, self.caller, contract_id, deliverable_id, phase=phase, now=self._clock()
            )
            return schemas.DeliverableCompletion(
                deliverable_id=deliverable_id,
                phase=phase or contract.phase,
                already_complete=not newly,
                contract=contract_view(uow.session, contract),
            )

    def phase_readiness(self, contract_id: uuid.UUID) -> schemas.PhaseReadiness:
        with self._uow() as uow:
            return views.phase_readiness_view(uow.session, self.caller, contract_id, uow.settings)

    def set_auto_complete(self, contract_id: uuid.UUID, enabled: bool) -> schemas.Contract:
        with self._uow() as uow:
            contract = contracts.set_auto_complete(uow, self.caller, contract_id, enabled, now=self._clock())
            return contract_view(uow.session, contract)

    def events(self, contract_id: uuid.UUID, after: int = 0, limit: int = 500) -> schemas.EventPage:
        with self._uow() as uow:
            get_contract(uow.session, self.caller, contract_id)
            rows = events_after(uow.session, contract_id, after, limit)
            return schemas.EventPage(
                events=[event_view(e) for e in rows],
                last_event_id=rows[-1].id if rows else after,
            )


__all__ = ["ContractsAPI", "Sender"]
