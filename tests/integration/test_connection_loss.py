"""A database connection that dies under a worker costs a retry, not a message.

Connections are not pinged before every transaction (that was a round trip on every hot
path); a connection idle for long is pinged, and one that breaks in use fails its
transaction with a transient error that the task retries on a fresh connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from app.api import ContractsAPI
from app.db import get_engine
from app.outbox import sent_rows
from tests.integration.conftest import DB_NAME, PG_ADMIN_URL
from tests.integration.helpers import message_processed, new_contract
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(tmp_path) -> Iterator[WorkerProcess]:
    w = start_worker(tmp_path, concurrency=1)
    w.wait_ready()
    yield w
    w.stop()


def terminate_other_connections() -> int:
    """What a database restart or a failover does to every pooled connection but ours."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :db AND pid <> pg_backend_pid()"
                    ),
                    {"db": DB_NAME},
                ).all()
            )
    finally:
        admin.dispose()


def test_a_worker_whose_connections_were_killed_still_applies_the_next_report(
    worker: WorkerProcess, make_caller
) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = new_contract(api)
    first = api.report_task_completed(cid, uuid.uuid4(), "before", success=True)
    wait_for(lambda: message_processed(first), what="first report applied")

    assert terminate_other_connections() >= 1  # the worker's pooled connection among them
    get_engine().dispose()  # this process stands for the daemon: only the worker's loss is under test

    second = api.report_task_completed(cid, uuid.uuid4(), "after", success=True)
    wait_for(lambda: message_processed(second), timeout=30, what="report applied on a fresh connection")
    assert "Retry in" in worker.log() or "OperationalError" in worker.log()


def test_the_http_front_answers_503_once_when_its_connections_die_and_recovers(make_caller) -> None:
    from fastapi.testclient import TestClient

    from app.http import create_app

    token, _ = make_caller()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sender=lambda *_: "not-sent"), raise_server_exceptions=False) as client:
        assert client.get("/api/v1/contracts", headers=headers).status_code == 200
        terminate_other_connections()
        answers = [client.get("/api/v1/contracts", headers=headers) for _ in range(3)]
    first = answers[0]
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "DATABASE_UNAVAILABLE" and first.headers["Retry-After"] == "1"
    assert [a.status_code for a in answers[1:]] == [200, 200]  # the pool was replaced


def test_a_phase_change_on_a_dead_connection_answers_503_and_the_next_one_applies(make_caller) -> None:
    """The guarded phase change runs on the driver's own cursor (`app.prepared.driver_rows`):
    a connection the server dropped is still reported as SQLAlchemy reports it, invalidated,
    so the answer is 503 and the pool replaces it."""
    from fastapi.testclient import TestClient

    from app.http import create_app

    token, _ = make_caller()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sender=lambda *_: "not-sent"), raise_server_exceptions=False) as client:
        created = client.post(
            "/api/v1/contracts",
            json={"name": "dropped", "contractType": "simple", "autoCompleteEnabled": False},
            headers=headers,
        )
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        assert client.post(
            f"/api/v1/contracts/{cid}/status", json={"targetStatus": "active"}, headers=headers
        ).is_success
        mark = client.post(f"/api/v1/contracts/{cid}/deliverables/plan-document/complete", headers=headers)
        assert mark.is_success, mark.text
        # The sent follow-ups' rows are retired by a background thread; retired now and the
        # thread stopped (the next follow-up starts it again), so it cannot meet a dead
        # connection first (the pool would then replace them all and the phase change would
        # never see one). Flushing alone left it a tick in which to find a late row.
        retiring = sent_rows(get_engine())
        retiring.close()
        assert retiring.pending() == 0
        terminate_other_connections()
        answers = [
            client.post(f"/api/v1/contracts/{cid}/phase", json={"phase": "execute"}, headers=headers)
            for _ in range(2)
        ]
    first, second = answers
    assert first.status_code == 503, first.text
    assert first.json()["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert second.status_code == 200, second.text
    assert second.json()["phase"] == "execute"


def test_a_connection_pinged_after_sitting_idle_still_serves_every_path(
    worker: WorkerProcess, make_caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection idle past `IDLE_PING_SECONDS` is pinged at checkout. The ping once left a
    transaction open, and the hot paths, which switch the driver to autocommit, then failed
    with "set_session cannot be used inside a transaction": a daemon's first report after 30 s
    of quiet was accepted and refused as INTERNAL_ERROR, and `send_heartbeat` raised."""
    import app.db as db
    from app.db import driver_autocommit, unit_of_work

    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = new_contract(api)
    engine = get_engine()
    monkeypatch.setattr(db, "IDLE_PING_SECONDS", 0.0)  # every checkout counts as idle: pinged
    for _ in range(3):
        with driver_autocommit(engine) as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        with unit_of_work() as uow:
            assert uow.session.execute(text("SELECT 1")).scalar() == 1
    assert api.report_task_started(cid, uuid.uuid4(), "after a quiet spell")
    api.send_heartbeat(cid, uuid.uuid4(), "working", "plan")
    api.flush()
