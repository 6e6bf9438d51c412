"""The API module: the one entry point for every caller, with no web framework inside it.

A daemon constructs `ContractsAPI(token)` and calls it; the HTTP front does the same for
each request with the caller it authenticated. Reports a daemon must never block on
(`report_task_completed`, `mark_deliverable`, ...) are enqueued on the broker and return the
message id at once, after one short transaction that refuses what can be judged already
(an invisible or closed contract) and records the message as pending, so the sender can ask
what became of it (`message_status`) and send it again with the same id (`resend`).
Commands whose caller must see the answer now (create, change status,
change phase) run as one short guarded transaction here, with the same domain functions the
workers use, and dispatch their follow-ups only after commit.

    api = ContractsAPI("mk_...")
    api.report_task_completed(contract_id, task_id, "write tests", success=True)

Answers are the typed models of `app.schemas` (attribute access in Python, camelCase JSON
with `.model_dump(mode="json")`), the same classes the HTTP front publishes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from app import (
    batch,
    completion_flow,
    contracts,
    deletion_audit,
    heartbeat_buffer,
    message_outcomes,
    restoration,
    schemas,
    supervisors,
    views,
)
from app import daemon_commands as command_service
from app import questions as question_service
from app import supervisor_state as state_service
from app import worktrees as worktree_service
from app.auth import Caller, authenticate
from app.broker import Sender, send_task
from app.config import Settings, get_settings
from app.contract_rows import get_contract, refuse_if_closed, refuse_if_closed_status
from app.database_ready import missing_schema, require_existing_database
from app.db import UnitOfWork, driver_autocommit, get_engine, unit_of_work
from app.domain.errors import ContractNotFound, ValidationFailed
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phase_change import PhaseChangeRequest
from app.domain.supervisor_state import parse_save
from app.domain.supervisors import InvalidHeartbeat, heartbeat_wire
from app.events import event_view, events_after
from app.foreign_tasks import foreign_task
from app.message_outcomes import MessageStatus, OutcomeStatus, Sent
from app.models import ContractTask, utcnow
from app.queues import TaskName
from app.views import ContractFilter, contract_view, contract_views

MAX_MESSAGE_ID = 200
MESSAGE_ID: Final = re.compile(rf"[A-Za-z0-9._:@-]{{1,{MAX_MESSAGE_ID}}}")


def _check_range(name: str, value: int, low: int, high: int) -> None:
    """A paging or size argument out of its range is the caller's error, naming the bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(
            f"{name} is a whole number from {low} to {high} (got {value!r}).",
            details={"field": name, "limit": high},
        )


def _refuse_foreign_task(session: Session, contract_id: uuid.UUID, task_id: uuid.UUID) -> None:
    """A task id that belongs to another contract can never be completed here: say so now."""
    owner = session.scalar(select(ContractTask.contract_id).where(ContractTask.id == task_id))
    if owner is not None and owner != contract_id:
        raise _foreign_task(session, task_id, contract_id, owner)


def _foreign_task(
    session: Session | Connection, task_id: uuid.UUID, contract_id: uuid.UUID, other: uuid.UUID
) -> ValidationFailed:
    """Explained only to the owner of both contracts (`app.foreign_tasks`)."""
    return foreign_task(session, task_id, contract_id, other, f"Task {task_id} belongs to another contract.")


def _worktree_fields(path: str, daemon_id: str | None) -> dict[str, Any]:
    """A worktree report's fields, checked now: a worker cannot store what these refuse."""
    fields: dict[str, Any] = {"path": worktree_service.check_worktree_path(path)}
    if daemon_id is not None:
        fields["daemonId"] = command_service.check_daemon_id(daemon_id)
    return fields


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
        # A long-lived daemon's token is checked again on every call (from the process's
        # principal cache, so within PRINCIPAL_CACHE_SECONDS of a revocation or expiry),
        # not only when the API module was built.
        self._token = token if caller is None else None
        if caller is None:
            caller = self._first_caller(token, engine)
        self.caller = caller

    def _first_caller(self, token: str | None, engine: Engine | None) -> Caller:
        """The token's caller, read from a database that must already be the service's.

        A daemon started in the wrong directory would otherwise create an empty embedded
        database where it runs and fail on a missing table; `DatabaseNotReady` names the
        database instead, and nothing is created.
        """
        if engine is None:
            require_existing_database(get_settings())
        bind = engine or get_engine()
        try:
            with unit_of_work(engine=bind, settings=self._settings) as uow:
                return authenticate(uow.session, token)
        except (OperationalError, ProgrammingError) as exc:
            explained = missing_schema(bind, exc)
            if explained is None:
                raise
            raise explained from None

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _uow(self) -> Iterator[UnitOfWork]:
        with unit_of_work(self._send, engine=self._engine, settings=self._settings) as uow:
            if self._token is not None:
                self.caller = authenticate(uow.session, self._token)
            yield uow

    def _enqueue(
        self,
        task: TaskName,
        contract_id: uuid.UUID,
        message_id: str | None,
        fields: dict[str, Any],
        *,
        closed: str | None = None,
        reported_task: uuid.UUID | None = None,
    ) -> str:
        """Judge what can be judged now, record the message as pending, then send it.

        What the caller can be told at once is an error at once, not a dead letter later: a
        contract it cannot see (CONTRACT_NOT_FOUND), a closed contract when `closed` names
        what the report would record (VALIDATION_FAILED naming the status), a task id of
        another contract. The pending row (`app.message_outcomes`) commits before the send,
        so a message the broker then loses can still be found and resent; a message id
        already applied is not sent again.
        """
        message_id = message_id or str(uuid.uuid4())
        if not MESSAGE_ID.fullmatch(message_id):
            raise ValidationFailed(
                f"A messageId is 1 to {MAX_MESSAGE_ID} characters of A-Z, a-z, 0-9 and . _ : @ - "
                "(so it can be asked for by URL later), like a UUID.",
                details={"length": len(message_id), "pattern": MESSAGE_ID.pattern},
            )
        payload = {
            "messageId": message_id,
            "principalId": str(self.caller.principal_id),
            "contractId": str(contract_id),
            **fields,
        }
        engine = self._engine or get_engine()
        if engine.dialect.name == "postgresql":
            fresh = self._accept_in_one_statement(
                engine, task, contract_id, message_id, payload, closed, reported_task
            )
        else:
            with self._uow() as uow:
                contract = get_contract(uow.session, self.caller, contract_id)
                if closed is not None:
                    refuse_if_closed(contract, closed)
                if reported_task is not None:
                    _refuse_foreign_task(uow.session, contract.id, reported_task)
                sent = Sent(self.caller.principal_id, message_id, contract.id, task.value)
                fresh = message_outcomes.accept(uow.session, sent, payload, self._clock())
        if fresh:
            self._send(task, payload, None)
        return message_id

    def _accept_in_one_statement(
        self,
        engine: Engine,
        task: TaskName,
        contract_id: uuid.UUID,
        message_id: str,
        payload: dict[str, Any],
        closed: str | None,
        reported_task: uuid.UUID | None,
    ) -> bool:
        """`_enqueue`'s checks and pending receipt as one statement on PostgreSQL (a report's
        hot path: one round trip, no ORM); the same errors, in the same order, as the session path."""
        if self._token is not None:
            with self._uow():
                pass  # the token checked again, as every call does
        sent = Sent(self.caller.principal_id, message_id, contract_id, task.value)
        with driver_autocommit(engine) as connection:
            checked = message_outcomes.accept_checked(
                connection,
                self.caller,
                sent,
                payload,
                self._clock(),
                refuse_closed=closed is not None,
                task_id=reported_task,
                prepare=self._settings.database_prepared_statements,
            )
        if checked.owner_id is None or checked.status is None or not self.caller.may_access(checked.owner_id):
            raise ContractNotFound(contract_id)
        if closed is not None:
            refuse_if_closed_status(checked.status, closed)
        if reported_task is not None and checked.task_contract_id not in (None, contract_id):
            with engine.connect() as connection:
                raise _foreign_task(connection, reported_task, contract_id, checked.task_contract_id)
        if checked.accepted:
            return True
        # The id was used before: already applied (not sent again), or another report (refused).
        with self._uow() as uow:
            return message_outcomes.accept(uow.session, sent, payload, self._clock())

    def message_status(self, message_id: str) -> MessageStatus:
        """What became of a message this caller sent: pending, applied, refused or unknown.

        Another principal's message answers `unknown`, exactly like one never sent; an admin
        sees every principal's.
        """
        with self._uow() as uow:
            return message_outcomes.status_view(
                message_id, message_outcomes.find(uow.session, self.caller, message_id)
            )

    def resend(self, message_id: str) -> MessageStatus:
        """Send a pending or refused message again with the same id; an applied one is left be.

        Idempotent: the worker claims the id in the transaction that applies it, so a resend
        of a message that was not lost after all is applied once. `unknown` (never accepted
        from this caller) sends nothing: the caller must report it afresh.
        """
        with self._uow() as uow:
            row = message_outcomes.find(uow.session, self.caller, message_id)
            if row is None or row.status == OutcomeStatus.APPLIED.value or row.payload is None:
                return message_outcomes.status_view(message_id, row)
            sent = Sent(row.principal_id, row.message_id, row.contract_id, row.task)
            payload = dict(row.payload)
            fresh = message_outcomes.accept(uow.session, sent, payload, self._clock())
        if fresh:
            self._send(row.task, payload, None)
        with self._uow() as uow:
            return message_outcomes.status_view(
                message_id, message_outcomes.find(uow.session, self.caller, message_id), resent=fresh
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
            {"taskId": str(task_id), "taskName": task_name, "isSupervisor": is_supervisor},
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
            {"taskId": str(task_id), "taskName": task_name, "success": success},
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
            {"deliverableId": deliverable_id, "phase": phase},
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
            _worktree_fields(path, daemon_id),
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
            TaskName.WORKTREE_REMOVED, contract_id, message_id, _worktree_fields(path, daemon_id)
        )

    def request_completion_check(self, contract_id: uuid.UUID, message_id: str | None = None) -> str:
        """Ask a worker to judge the gate and run the flow if it is met; returns at once."""
        return self._enqueue(TaskName.CHECK_COMPLETION, contract_id, message_id, {})

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

    def whoami(self) -> schemas.WhoAmI:
        """The principal this module acts for. A daemon's token is checked again first, so a
        revoked or expired one is refused here as on any other call."""
        if self._token is not None:
            with self._uow():
                pass
        return schemas.WhoAmI(
            principal_id=self.caller.principal_id, owner_id=self.caller.owner_id, role=self.caller.role.value
        )

    def get_contract(self, contract_id: uuid.UUID) -> schemas.Contract:
        with self._uow() as uow:
            return contract_view(uow.session, get_contract(uow.session, self.caller, contract_id))

    def list_contracts(self, flt: ContractFilter | None = None) -> schemas.ContractPage:
        with self._uow() as uow:
            rows, cursor = views.list_contracts(
                uow.session, self.caller, flt or ContractFilter(), self._clock(), uow.settings
            )
            page = contract_views(uow.session, rows, with_phase_config=False)
            return schemas.ContractPage(contracts=page, next_cursor=cursor)

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
        with self._uow() as uow:
            return contract_view(uow.session, row.as_contract())

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

    # -- batch operations and the deletion audit (admin only; app.batch) ----------------

    def start_batch(
        self,
        operation: str,
        parameters: dict[str, Any],
        *,
        dry_run: bool = False,
        idempotency_key: str | None = None,
    ) -> tuple[batch.BatchView, bool]:
        """Accept a batch operation; returns (the batch, whether it is new).

        A real run is queued on the `batch` queue after commit and answered at once (progress
        via `batch_status`); a dry run is judged now and comes back completed, with what would
        be affected. The same `idempotency_key` returns the batch it started.
        """
        try:
            with self._uow() as uow:
                row, created = batch.start_batch(
                    uow,
                    self.caller,
                    operation,
                    parameters,
                    dry_run=dry_run,
                    idempotency_key=idempotency_key,
                    now=self._clock(),
                )
                return batch.batch_view(uow.session, row), created
        except IntegrityError:
            # Two requests with one Idempotency-Key at once: the other one's batch is the answer.
            if idempotency_key is None:
                raise
            with self._uow() as uow:
                existing = batch.find_by_key(uow.session, self.caller, idempotency_key)
                if existing is None:
                    raise
                return batch.batch_view(uow.session, existing), False

    def batch_status(self, batch_id: uuid.UUID) -> batch.BatchView | None:
        with self._uow() as uow:
            return batch.get_batch(uow.session, self.caller, batch_id)

    def list_batches(self, limit: int = 20) -> batch.BatchList:
        with self._uow() as uow:
            return batch.list_batches(uow.session, self.caller, limit)

    def deletions(
        self, *, limit: int = 100, before: int | None = None, batch_id: uuid.UUID | None = None
    ) -> deletion_audit.DeletionPage:
        with self._uow() as uow:
            batch.require_admin(self.caller, "read the deletion audit")
            return deletion_audit.list_deletions(uow.session, limit=limit, before=before, batch_id=batch_id)

    # -- supervisor heartbeats (app.heartbeat_buffer, app.supervisors) -------------------

    def send_heartbeat(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        state: str,
        phase: str,
        *,
        current_activity: str = "",
        progress: int = 0,
        pending_task_ids: Sequence[uuid.UUID] = (),
        timestamp: datetime | None = None,
        heartbeat_id: uuid.UUID | None = None,
        incarnation: int | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
    ) -> uuid.UUID:
        """Buffer one supervisor heartbeat; returns its id at once, never waits for a worker.

        Checked now (a bad field is VALIDATION_FAILED naming it, an invisible contract
        CONTRACT_NOT_FOUND), then sent with others as one list: every
        `[heartbeats] batch_size` heartbeats or `flush_ms` milliseconds, at exit, and on
        `flush()`. Without `heartbeat_id` the id is derived from the task and timestamp, so
        sending the same heartbeat again stores it once.
        """
        heartbeat_buffer.require_enabled(self._settings)
        try:
            item = heartbeat_wire(
                task_id,
                contract_id,
                state,
                phase,
                current_activity=current_activity,
                progress=progress,
                pending_task_ids=pending_task_ids,
                timestamp=timestamp or self._clock(),
                heartbeat_id=heartbeat_id,
                incarnation=incarnation,
                daemon_id=daemon_id,
                host=host,
            )
        except InvalidHeartbeat as exc:
            raise heartbeat_buffer.invalid(exc) from None
        heartbeat_buffer.send_wire(self.caller, self._engine, self._settings, self._send, item)
        return heartbeat_id if type(heartbeat_id) is uuid.UUID else uuid.UUID(item["id"])

    def flush(self) -> int:
        """Send the heartbeats this process buffered now; returns how many left."""
        heartbeat_buffer.require_enabled(self._settings)
        return heartbeat_buffer.buffer_for(self._send, self._settings).flush()

    def _heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self._settings.contracts.heartbeat_timeout_seconds)

    def supervisor_status(self, contract_id: uuid.UUID) -> supervisors.SupervisorStatus:
        """The supervisor's newest state, incarnation, and whether it is alive (by receive time)."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return supervisors.supervisor_status(
                uow.session, self.caller, contract_id, self._clock(), self._heartbeat_timeout()
            )

    def supervisor_heartbeats(self, contract_id: uuid.UUID, limit: int = 50) -> supervisors.HeartbeatList:
        """The contract's heartbeats of the last 24 hours, newest first."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return supervisors.heartbeat_history(uow.session, self.caller, contract_id, limit, self._clock())

    # -- supervisor state, restoration and restart (app.supervisor_state, app.restoration) --

    def save_supervisor_state(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID,
        *,
        state_version: int,
        state: str,
        phase: str,
        current_activity: str = "",
        progress: int | None = None,
        error: str | None = None,
        spawned_task_ids: Sequence[uuid.UUID | str] = (),
        waiting_on_task_ids: Sequence[uuid.UUID | str] = (),
        incarnation: int | None = None,
        history_from: int | None = None,
        history_append: Sequence[Mapping[str, Any]] | None = None,
        checkpoint: Mapping[str, Any] | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
    ) -> state_service.StateSaved:
        """Save the supervisor's persistent state now (one short transaction; a supervisor's or
        admin's call). Ordered by (incarnation, state_version): an older save is STALE_STATE, an
        older incarnation SUPERVISOR_FENCED, the stored one sent again answers `applied=False`.
        Pass the `incarnation` a restoration or restart issued: without it a save is accepted only
        while incarnation 1 is in force (else SUPERVISOR_FENCED), and one above the incarnation in
        force is INCARNATION_NOT_ISSUED.
        `history_append` messages are `{role, content, name?, toolCallId?, at?}`, appended at
        `history_from` (default: the stored end; HISTORY_GAP past it); `checkpoint` is
        `{id, note?}` and marks this save as a consistent point."""
        heartbeat_buffer.require_enabled(self._settings)
        raw: dict[str, Any] = {
            "taskId": str(task_id),
            "stateVersion": state_version,
            "state": state,
            "phase": phase,
            "currentActivity": current_activity,
            "progress": progress,
            "error": error,
            "spawnedTaskIds": [str(t) for t in spawned_task_ids],
            "waitingOnTaskIds": [str(t) for t in waiting_on_task_ids],
            "incarnation": incarnation,
            "historyFrom": history_from,
            "historyAppend": list(history_append) if history_append is not None else None,
            "checkpoint": dict(checkpoint) if checkpoint is not None else None,
            "daemonId": daemon_id,
            "host": host,
        }
        save = parse_save({k: v for k, v in raw.items() if v is not None})
        with self._uow() as uow:
            return state_service.save_state(uow, self.caller, contract_id, save, self._clock())

    def supervisor_state(
        self, contract_id: uuid.UUID, task_id: uuid.UUID | None = None
    ) -> state_service.SupervisorStateView:
        """The stored state (`task_id`'s, or the most recently saved one); SUPERVISOR_NOT_FOUND if none."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return state_service.read_state(uow.session, self.caller, contract_id, task_id)

    def supervisor_history(
        self, contract_id: uuid.UUID, task_id: uuid.UUID | None = None, start: int = 0, limit: int = 200
    ) -> state_service.HistoryPage:
        """A page of the stored conversation from position `start` (at most `limit`, ≤ 1000)."""
        heartbeat_buffer.require_enabled(self._settings)
        _check_range("from", start, 0, 2**31 - 1)
        _check_range("limit", limit, 1, state_service.MAX_HISTORY_PAGE)
        with self._uow() as uow:
            return state_service.read_history(uow.session, self.caller, contract_id, task_id, start, limit)

    def restore_supervisor(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID | None = None,
        daemon_id: str | None = None,
        host: str | None = None,
        *,
        history_limit: int = 200,
    ) -> restoration.Restoration:
        """What a restarted daemon needs (seed 3.6): the branch taken, the restored state and
        history, open questions, answers, waited-on tasks, the next step and a context text.
        A supervisor's call claims the supervisor and answers its new incarnation; a user's or
        admin's is a read-only preview."""
        heartbeat_buffer.require_enabled(self._settings)
        _check_range("historyLimit", history_limit, 1, restoration.MAX_HISTORY_LIMIT)
        with self._uow() as uow:
            return restoration.restore(
                uow,
                self.caller,
                contract_id,
                self._clock(),
                task_id=task_id,
                daemon_id=daemon_id,
                host=host,
                history_limit=history_limit,
            )

    def restart_supervisor(
        self,
        contract_id: uuid.UUID,
        task_id: uuid.UUID | None = None,
        *,
        reason: str | None = None,
        incarnation: int | None = None,
    ) -> restoration.RestartRequested:
        """Restart the supervisor (a user's or admin's call): a new incarnation fences the running
        one and a `restart_supervisor` command goes to its daemon. Pass the `incarnation` you
        mean to replace to make a retry safe."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return restoration.restart(
                uow,
                self.caller,
                contract_id,
                self._clock(),
                task_id=task_id,
                reason=reason,
                incarnation=incarnation,
            )

    def daemons(self, limit: int = supervisors.DAEMONS_PAGE, cursor: int = 0) -> supervisors.DaemonList:
        """The daemons seen in heartbeats of this caller's contracts, alive or not: `limit` (≤ 1000)
        of them from `cursor` (pass the answer's `next_cursor` to read on)."""
        heartbeat_buffer.require_enabled(self._settings)
        _check_range("limit", limit, 1, supervisors.MAX_DAEMONS_PAGE)
        _check_range("cursor", cursor, 0, 2**31 - 1)
        with self._uow() as uow:
            return supervisors.list_daemons(
                uow.session, self.caller, self._clock(), self._heartbeat_timeout(), limit, cursor
            )

    # -- worktrees and each daemon's commands (app.worktrees, app.daemon_commands) --------

    def worktrees(self, contract_id: uuid.UUID) -> worktree_service.WorktreeList:
        """A contract's worktrees (open, released, removed) and their counts."""
        with self._uow() as uow:
            return worktree_service.contract_worktrees(uow.session, self.caller, contract_id)

    def daemon_commands(
        self, daemon_id: str, after: int = 0, limit: int = 100
    ) -> command_service.DaemonCommandFeed:
        """The commands for daemon `daemon_id` after command id `after` (its HTTP feed), of the
        contracts this caller may see; pass `next_after` back to read on. The same commands
        reach the daemon's broker queue (`daemon_queue`)."""
        command_service.check_daemon_id(daemon_id)
        if not 1 <= limit <= command_service.MAX_FEED:
            raise ValidationFailed(
                f"limit is 1 to {command_service.MAX_FEED} (got {limit}).",
                details={"field": "limit", "limit": command_service.MAX_FEED},
            )
        if after < 0:
            raise ValidationFailed(
                f"after is a command id, 0 or more (got {after}).", details={"field": "after"}
            )
        with self._uow() as uow:
            return command_service.read_feed(uow.session, self.caller, daemon_id, after, limit)

    def daemon_queue(self, daemon_id: str) -> command_service.DaemonQueue:
        """The broker queues this caller's owner's daemon `daemon_id` reads: its own (`queue`,
        `daemon.commands.<owner token>.<daemon key>`) and the owner's queue for commands that
        name no daemon (`owner_queue`). Daemon ids are not unique across owners, so a daemon
        reads only queues its owner's commands reach."""
        command_service.check_daemon_id(daemon_id)
        return command_service.queue_of(self.caller, daemon_id)

    def cleanup_worktrees(
        self, *, dry_run: bool = False, limit: int = 1000
    ) -> worktree_service.WorktreeCleanup:
        """Ask the daemons of orphaned worktrees (closed contracts, not reported removed) to
        remove them, at most once per `[worktrees] cleanup_interval_seconds` each; admins only.
        A dry run answers what would be asked and changes nothing."""
        batch.require_admin(self.caller, "clean up worktrees")
        if not 1 <= limit <= worktree_service.MAX_CLEANUP:
            raise ValidationFailed(
                f"limit is 1 to {worktree_service.MAX_CLEANUP} (got {limit}).",
                details={"field": "limit", "limit": worktree_service.MAX_CLEANUP},
            )
        interval = worktree_service.cleanup_interval(self._settings)
        with self._uow() as uow:
            now = self._clock()
            if dry_run:  # one more than the limit tells whether more are due
                asked = worktree_service.ask_orphans(uow, now, interval, limit + 1, dry_run=True)
                more, asked = len(asked) > limit, asked[:limit]
            else:
                asked = worktree_service.ask_orphans(uow, now, interval, limit)
                more = worktree_service.any_orphans_due(uow.session, now, interval)
            return worktree_service.cleanup_report(asked, dry_run=dry_run, more=more, interval=interval)

    def request_supervisor_sync(self, contract_id: uuid.UUID) -> supervisors.SyncRequested:
        """Ask the live supervisor's daemon for its full state (SUPERVISOR_DEAD if it is not live)."""
        heartbeat_buffer.require_enabled(self._settings)
        with self._uow() as uow:
            return supervisors.request_sync(
                uow, self.caller, contract_id, self._clock(), self._heartbeat_timeout()
            )

    # -- questions a supervisor asks a person (app.questions) ---------------------------

    def ask_question(
        self,
        contract_id: uuid.UUID,
        question: str,
        type_: str,
        *,
        options: Sequence[str] | None = None,
        context: str | None = None,
        task_id: uuid.UUID | None = None,
        question_id: uuid.UUID | None = None,
        daemon_id: str | None = None,
    ) -> tuple[question_service.QuestionView, bool]:
        """Ask a person (a supervisor's or admin's call); returns the question and whether it is new.

        `question_id` makes asking safe to repeat: the same id with the same content answers
        the stored question (False); with other content it is QUESTION_ID_REUSED. An `active`
        contract waits for input until its last open question is answered.
        """
        with self._uow() as uow:
            return question_service.ask_question(
                uow,
                self.caller,
                contract_id,
                question=question,
                type_=type_,
                options=list(options) if options is not None else None,
                context=context,
                task_id=task_id,
                daemon_id=daemon_id,
                question_id=question_id,
                now=self._clock(),
            )

    def answer_question(
        self, contract_id: uuid.UUID, question_id: uuid.UUID, answer: str | list[str] | bool
    ) -> question_service.QuestionOutcome:
        """A person's answer (a user's or admin's call): stored once, sent to the asking daemon."""
        with self._uow() as uow:
            return question_service.answer_question(
                uow, self.caller, contract_id, question_id, answer, now=self._clock()
            )

    def cancel_question(
        self, contract_id: uuid.UUID, question_id: uuid.UUID, *, reason: str | None = None
    ) -> question_service.QuestionOutcome:
        """The asking side withdraws an open question (a supervisor's or admin's call)."""
        with self._uow() as uow:
            return question_service.cancel_question(
                uow, self.caller, contract_id, question_id, reason=reason, now=self._clock()
            )

    def questions(
        self,
        contract_id: uuid.UUID,
        *,
        open_: bool | None = None,
        after: uuid.UUID | None = None,
        limit: int = 100,
    ) -> question_service.QuestionList:
        """The contract's questions, oldest first: all, open only (`open_=True`) or closed only."""
        with self._uow() as uow:
            return question_service.list_questions(
                uow.session, self.caller, contract_id, open_=open_, after=after, limit=limit
            )

    def question(self, contract_id: uuid.UUID, question_id: uuid.UUID) -> question_service.QuestionView:
        with self._uow() as uow:
            return question_service.get_question(uow.session, self.caller, contract_id, question_id)


__all__ = ["ContractsAPI", "MessageStatus", "Sender"]
