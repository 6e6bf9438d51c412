"""What every part of `ContractsAPI` stands on: the caller, the unit of work, the enqueue path.

Why a base of its own: each concept's mixin (`contracts`, `reports`, `batches`, ...) reaches
the database, the broker and the clock the same way, as one principal, and a daemon's report
is accepted by one path (`_enqueue`) whichever concept it belongs to. The attributes are
declared here, typed, so each mixin is checked against them on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, ProgrammingError

from app import message_outcomes, schemas
from app.auth import Caller, authenticate
from app.broker import Sender, send_task
from app.config import Settings, get_settings
from app.contract_rows import get_contract, refuse_if_closed, refuse_if_closed_status
from app.database_ready import missing_schema, require_existing_database
from app.db import UnitOfWork, driver_autocommit, get_engine, unit_of_work
from app.domain.errors import ContractNotFound, ValidationFailed
from app.domain.message_ids import MAX_MESSAGE_ID as MAX_MESSAGE_ID
from app.domain.message_ids import MESSAGE_ID as MESSAGE_ID
from app.domain.message_ids import check_message_id
from app.domain.uuids import id_argument
from app.foreign_tasks import held_task, refuse_held_task
from app.message_outcomes import Sent
from app.models import utcnow
from app.queues import TaskName


def check_range(name: str, value: int, low: int, high: int) -> None:
    """A paging or size argument out of its range is the caller's error, naming the bounds."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationFailed(
            f"{name} is a whole number from {low} to {high} (got {value!r}).",
            details={"field": name, "limit": high},
        )


def check_flag(value: object, name: str) -> bool:
    """A yes/no argument: only True or False (a string such as "no" is not taken for one)."""
    if type(value) is not bool:
        raise ValidationFailed(f"{name} must be True or False, not {value!r}"[:200], details={"field": name})
    return value


class APIBase:
    """The constructor and the plumbing `ContractsAPI`'s mixins share; no operation of its own
    but `whoami`, the caller it resolved."""

    caller: Caller
    _engine: Engine | None
    _send: Sender
    _settings: Settings
    _clock: Callable[[], datetime]
    _token: str | None

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
        self._send = sender or send_task
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

    def whoami(self) -> schemas.WhoAmI:
        """The principal this module acts for. A daemon's token is checked again first, so a
        revoked or expired one is refused here as on any other call."""
        if self._token is not None:
            with self._uow():
                pass
        return schemas.WhoAmI(
            principal_id=self.caller.principal_id, owner_id=self.caller.owner_id, role=self.caller.role.value
        )

    # -- plumbing ------------------------------------------------------------------------

    @contextmanager
    def _uow(self) -> Iterator[UnitOfWork]:
        with unit_of_work(self._send, engine=self._engine, settings=self._settings) as uow:
            if self._token is not None:
                self.caller = authenticate(uow.session, self._token)
            yield uow

    def _heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self._settings.contracts.heartbeat_timeout_seconds)

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
        what the report would record (VALIDATION_FAILED naming the status), a task id another
        contract holds as its supervisor or ordinary task (`app.foreign_tasks`). The pending
        row (`app.message_outcomes`) commits before the send, so a message the broker then
        loses can still be found and resent; a message id already applied is not sent again.
        """
        contract_id = id_argument(contract_id, "contractId")
        if reported_task is not None:
            reported_task = id_argument(reported_task, "taskId")
        message_id = check_message_id(message_id or str(uuid.uuid4()))
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
                    refuse_held_task(uow.session, contract.id, reported_task)
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
        if reported_task is not None and checked.task_contract_id is not None:
            with engine.connect() as connection:
                raise held_task(
                    connection,
                    reported_task,
                    contract_id,
                    checked.task_contract_id,
                    checked.task_held_as_supervisor,
                )
        if checked.accepted:
            return True
        # The id was used before: already applied (not sent again), or another report (refused).
        with self._uow() as uow:
            return message_outcomes.accept(uow.session, sent, payload, self._clock())
