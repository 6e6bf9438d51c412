"""Contracts as `ContractsAPI` serves them: the synchronous guarded commands and the reads.

Why synchronous: the caller of create, change status or change phase must see the answer now,
so each runs as one short guarded transaction here, with the same domain functions the workers
use (`app.contracts`, `app.completion_flow`), and dispatches its follow-ups only after commit.
"""

from __future__ import annotations

import uuid
from typing import Any

from app import completion_flow, contracts, schemas, views
from app.api.base import APIBase, check_range
from app.contract_rows import get_contract
from app.db import get_engine
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phase_change import PhaseChangeRequest
from app.events import MAX_EVENT_ID, MAX_EVENTS_PAGE, event_view, events_after
from app.views import ContractFilter, contract_view


class ContractsMixin(APIBase):
    """Create, read, list and steer a contract; judge its completion gate now."""

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

    def list_contracts(self, flt: ContractFilter | None = None) -> schemas.ContractPage:
        with self._uow() as uow:
            return views.list_contracts(
                uow.session, self.caller, flt or ContractFilter(), self._clock(), uow.settings
            )

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
        """The guarded phase change in a transaction of its own (`contracts.change_phase_now`,
        no ORM on the hot path), then the contract with its new phase's progress."""
        request = PhaseChangeRequest(phase, expected_version, confirmed, force)
        if self._token is not None:
            with self._uow():
                pass  # the token checked again, as every call does (before the change, not inside it)
        row = contracts.change_phase_now(
            self.caller,
            contract_id,
            request,
            now=self._clock(),
            sender=self._send,
            engine=self._engine,
            settings=self._settings,
        )
        return views.contract_view_now(self._engine or get_engine(), row.as_contract(), self._settings)

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

    def events(
        self, contract_id: uuid.UUID, after: int = 0, limit: int = MAX_EVENTS_PAGE
    ) -> schemas.EventPage:
        """The contract's events after id `after` (0 to 2**63-1), at most `limit` (1 to 500):
        the HTTP endpoint's bounds, so a negative limit is the caller's VALIDATION_FAILED, not
        a database error."""
        check_range("after", after, 0, MAX_EVENT_ID)
        check_range("limit", limit, 1, MAX_EVENTS_PAGE)
        with self._uow() as uow:
            get_contract(uow.session, self.caller, contract_id)
            rows = events_after(uow.session, contract_id, after, limit)
            return schemas.EventPage(
                events=[event_view(e) for e in rows],
                last_event_id=rows[-1].id if rows else after,
            )

    def check_completion(self, contract_id: uuid.UUID) -> schemas.CompletionCheck:
        """Judge the gate now and answer; when it is met, the flow is enqueued after commit."""
        with self._uow() as uow:
            done = completion_flow.check_completion(uow, self.caller, contract_id, now=self._clock())
            return schemas.CompletionCheck(
                ready=done.readiness.ready,
                would_complete=done.would_complete,
                missing=list(done.readiness.missing),
                action=done.action,
                status=done.status.value,
                note=done.note,
            )
