"""Reading contract state back from the database, for tests that drive it through workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.api import ContractsAPI
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.models import Contract, ContractEvent, ProcessedMessage, utcnow
from tests.integration.worker_processes import wait_for


def contract_row(contract_id: uuid.UUID) -> Contract:
    with unit_of_work() as uow:
        row = uow.session.get(Contract, contract_id)
        assert row is not None
        return row


def event_types(contract_id: uuid.UUID) -> list[str]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(ContractEvent.type)
                .where(ContractEvent.contract_id == contract_id)
                .order_by(ContractEvent.id)
            )
        )


def count_events(contract_id: uuid.UUID, type_: str) -> int:
    return event_types(contract_id).count(type_)


def message_processed(message_id: str) -> bool:
    with unit_of_work() as uow:
        found = uow.session.scalars(select(ProcessedMessage).where(ProcessedMessage.message_id == message_id))
        return found.first() is not None


def new_contract(api: ContractsAPI, **kwargs: object) -> uuid.UUID:
    name, contract_type = str(kwargs.pop("name", "flow")), str(kwargs.pop("contract_type", "simple"))
    cid = api.create_contract(name, contract_type, **kwargs).id  # type: ignore[arg-type]
    supervisor = uuid.uuid4()
    api.report_task_started(cid, supervisor, "supervisor", is_supervisor=True)
    wait_for(lambda: contract_row(cid).status == Status.ACTIVE.value, what="supervisor start → active")
    return cid


_RECEIVED: dict[tuple[str, str | None], list[dict[str, Any]]] = {}


def commands_received(daemon_id: str | None, *, owner: str) -> list[dict[str, Any]]:
    """The commands owner `owner`'s daemon `daemon_id` received on its own broker queue, oldest
    first (None: the owner's queue for commands that name no daemon), read as a daemon reads
    them: each call takes what arrived since the last one off the queue, and answers everything
    received in this test run."""
    from app.broker import daemon_queue, get_celery

    received = _RECEIVED.setdefault((owner, daemon_id), [])
    with get_celery().connection_for_read() as conn:
        queue = daemon_queue(owner, daemon_id)(conn.default_channel)
        while (message := queue.get(no_ack=True)) is not None:
            received.append(message.decode())
    return list(received)


def no_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    """A sender for an app under test whose follow-ups are not what the test looks at."""
    return uuid.uuid4().hex


@contextmanager
def database_at(revision: str, backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database (PostgreSQL or SQLite, `backend`) migrated up to `revision`, for the
    tests of the migrations after it; its URL, and the database gone afterwards."""
    from app.db import get_engine, migrate
    from tests.isolation import Isolation

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'makima.db'}"
        migrate(url, revision)
        try:
            yield url
        finally:
            get_engine(url).dispose()
        return
    scratch = Isolation("makima_migrate")
    scratch.create_database(migrated=False)
    try:
        migrate(scratch.db_url, revision)
        yield scratch.db_url
    finally:
        get_engine(scratch.db_url).dispose()
        scratch.drop_database()


def heartbeat_body(cid: str, **fields: Any) -> dict[str, Any]:
    """One valid heartbeat as the HTTP front takes it (a new supervisor), `fields` on top."""
    return {
        "taskId": str(uuid.uuid4()),
        "contractId": cid,
        "state": "working",
        "phase": "plan",
        "timestamp": utcnow().isoformat(),
        **fields,
    }
