"""Supervisor heartbeats end to end: API module / HTTP → Redis → real `celery worker` → PostgreSQL.

One worker (two processes, queues heartbeats, sweeps and contracts) serves the module; its
heartbeat timeout is shortened to 2 s by configuration, and the sweeps are sent the way beat
sends them (twice at once where overlap matters), so nothing sleeps for two minutes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import SADeprecationWarning

from app import heartbeat_retention, heartbeats
from app.api import ContractsAPI
from app.auth import Role, create_token
from app.broker import get_celery, send_task
from app.db import get_engine, migrate, unit_of_work
from app.domain.errors import ContractNotFound, FeatureDisabled, ValidationFailed
from app.domain.incarnations import MAX_INCARNATION
from app.domain.lifecycle import Status
from app.heartbeat_fencing import FENCED_COMMAND
from app.heartbeat_messages import message_of
from app.heartbeat_outcomes import IngestReport
from app.heartbeat_partitions import partition_name
from app.heartbeat_store import STATE_CHANGED
from app.http import create_app
from app.models import (
    ContractEvent,
    ContractTask,
    DaemonCommand,
    DeadLetter,
    Supervisor,
    SupervisorHeartbeat,
    utcnow,
)
from app.queues import TaskName
from tests.integration.helpers import event_types
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("hb"),
        queues="heartbeats,sweeps,contracts",
        concurrency=2,
        extra_env={"MAKIMA_CONTRACTS__HEARTBEAT_TIMEOUT_SECONDS": str(TIMEOUT_S)},
    )
    proc.wait_ready()
    yield proc
    proc.stop()


def beat(task: TaskName) -> None:
    """What beat does: send a sweep task (no arguments) to the sweeps queue."""
    get_celery().send_task(task.value, queue="sweeps")


def hb(cid: uuid.UUID, task: uuid.UUID, state: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "taskId": str(task),
        "contractId": str(cid),
        "state": state,
        "phase": "plan",
        "currentActivity": f"{state} at {at.isoformat()}",
        "progress": 10,
        "pendingTaskIds": [],
        "timestamp": at.isoformat(),
        **extra,
    }


def rows(cid: uuid.UUID) -> list[SupervisorHeartbeat]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(select(SupervisorHeartbeat).where(SupervisorHeartbeat.contract_id == cid))
        )


def supervisor(task: uuid.UUID) -> Supervisor | None:
    with unit_of_work() as uow:
        return uow.session.get(Supervisor, task)


def wait_rows(cid: uuid.UUID, count: int, timeout: float = 30) -> list[SupervisorHeartbeat]:
    return wait_for(lambda: (found := rows(cid)) and len(found) >= count and found, timeout=timeout,
                    what=f"{count} heartbeat rows")  # fmt: skip


@pytest.fixture
def daemon(make_caller, worker: WorkerProcess) -> tuple[ContractsAPI, uuid.UUID]:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    return api, uuid.UUID(str(api.create_contract("heartbeats", "simple").id))


@contextmanager
def embedded_database(tmp_path: Any) -> Iterator[tuple[Engine, str]]:
    """A migrated SQLite database of the test's own (the embedded default) and a supervisor
    token on it, the engine disposed afterwards."""
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    engine = get_engine(url)
    try:
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "sqlite-owner", Role.SUPERVISOR)
        yield engine, token
    finally:
        engine.dispose()


@contextmanager
def on_both_dialects(
    daemon: tuple[ContractsAPI, uuid.UUID], tmp_path: Any
) -> Iterator[list[tuple[Engine | None, uuid.UUID, uuid.UUID]]]:
    """The daemon's contract on PostgreSQL, and one on an embedded SQLite database of the test's
    own: (engine, contract id, the sender's principal id) of each, the engine None for the
    default database."""
    api, cid = daemon
    with embedded_database(tmp_path) as (local, token):
        embedded = ContractsAPI(token, engine=local, sender=lambda *args, **kwargs: "")
        lid = uuid.UUID(str(embedded.create_contract("embedded", "simple").id))
        yield [(None, cid, api.caller.principal_id), (local, lid, embedded.caller.principal_id)]


@contextmanager
def apis_on_both_dialects(tmp_path: Any, token: str) -> Iterator[list[tuple[Engine | None, ContractsAPI]]]:
    """(engine, API module) of `token`'s on PostgreSQL and of a token of its own on an embedded
    SQLite database of the test's own, the engine None for the default database: for a test
    that makes its own contracts on each (`on_both_dialects` gives one made already)."""
    with embedded_database(tmp_path) as (local, local_token):
        yield [
            (None, ContractsAPI(token)),
            (local, ContractsAPI(local_token, engine=local, sender=lambda *a, **k: "")),
        ]


def test_duplicate_late_and_out_of_order_heartbeats_leave_the_newest_state_and_one_row_per_id(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    api, cid = daemon
    task = uuid.uuid4()
    t0 = utcnow()
    # Batch 1: the newest heartbeat arrives first.
    newest = api.send_heartbeat(cid, task, "idle", "plan", progress=60, timestamp=t0 + timedelta(seconds=3))
    api.flush()
    wait_rows(cid, 1)
    # Batch 2: older ones late and out of order, the newest again, and one twice in the batch.
    older = [
        api.send_heartbeat(cid, task, "working", "plan", progress=p, timestamp=t0 + timedelta(seconds=s))
        for s, p in ((2, 40), (0, 0), (1, 20))
    ]
    api.send_heartbeat(cid, task, "idle", "plan", progress=60, timestamp=t0 + timedelta(seconds=3))
    api.send_heartbeat(cid, task, "working", "plan", progress=0, timestamp=t0)
    assert api.flush() == 5
    stored = wait_rows(cid, 4)
    # Batch 3: a sender's resend of the whole lot, as one more list.
    for s, p, st in ((3, 60, "idle"), (2, 40, "working"), (0, 0, "working"), (1, 20, "working")):
        api.send_heartbeat(cid, task, st, "plan", progress=p, timestamp=t0 + timedelta(seconds=s))
    api.flush()

    def counted() -> dict[str, int] | None:
        with unit_of_work() as uow:
            c = heartbeats.counters(uow.session)
        return c if c["received"] >= 10 else None

    wait_for(counted, what="three batches ingested")
    stored = rows(cid)
    assert sorted(r.id for r in stored) == sorted({newest, *older})  # one row per id
    row = supervisor(task)
    assert row is not None
    assert (row.state, row.progress, row.heartbeat_id, row.incarnation) == ("idle", 60, newest, 1)
    # One state change: none → idle; the late 'working' heartbeats changed nothing.
    assert event_types(cid).count("supervisor_state_changed") == 1
    status = api.supervisor_status(cid)
    assert status.state == "idle" and status.alive and status.last_received_at >= t0
    history = api.supervisor_heartbeats(cid, limit=10).heartbeats
    assert len(history) == 4 and not any(h.fenced for h in history)


def test_heartbeats_sent_as_plain_text_are_told_the_content_type_to_use(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    body = json.dumps([hb(cid, uuid.uuid4(), "working", utcnow())])
    with TestClient(create_app()) as client:
        plain = client.post(
            "/api/v1/supervisors/heartbeats",
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
        )
        untyped = client.post(
            "/api/v1/supervisors/heartbeats", content=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert plain.status_code == 400, plain.text
    error = plain.json()["error"]
    assert "Content-Type: application/json" in error["message"] and "text/plain" in error["message"]
    assert error["details"]["field"] == "body"
    assert untyped.status_code == 400, untyped.text  # FastAPI reads a body as JSON only when told
    assert "Content-Type: none" in untyped.json()["error"]["message"]


def test_a_heartbeat_stamped_far_ahead_is_refused_and_cannot_hold_the_state(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """The newest timestamp decides a supervisor's state: one stamped in 8999 would have held it
    against every later heartbeat. Refused at the door, over HTTP and through the API module."""
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    task = uuid.uuid4()
    far = {**hb(cid, task, "working", utcnow()), "timestamp": "8999-12-31T23:59:59Z"}
    with TestClient(create_app()) as client:
        resp = client.post(
            "/api/v1/supervisors/heartbeats",
            json=[far, hb(cid, uuid.uuid4(), "idle", utcnow())],
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 202, resp.text
    first, second = resp.json()["results"]
    assert (first["status"], first["field"]) == ("refused", "timestamp"), first
    assert "more than 2 hours ahead" in first["message"]
    assert second["status"] == "accepted"
    with pytest.raises(ValidationFailed) as refused:
        api.send_heartbeat(cid, task, "working", "plan", timestamp=utcnow() + timedelta(hours=2, minutes=1))
    assert refused.value.details["field"] == "timestamp"


def test_a_list_with_one_invalid_heartbeat_stores_the_rest(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    t0 = utcnow()
    tasks = [uuid.uuid4() for _ in range(4)]
    body = [hb(cid, t, "working", t0) for t in tasks]
    body.insert(2, {**hb(cid, uuid.uuid4(), "working", t0), "progress": 150})
    body.append(hb(uuid.uuid4(), uuid.uuid4(), "working", t0))  # a contract nobody has
    with TestClient(create_app()) as client:
        resp = client.post(
            "/api/v1/supervisors/heartbeats", json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert (answer["accepted"], answer["refused"]) == (4, 2)
    refused = [r for r in answer["results"] if r["status"] == "refused"]
    assert [(r["index"], r["code"], r["field"]) for r in refused] == [
        (2, "VALIDATION_FAILED", "progress"),
        (5, "CONTRACT_NOT_FOUND", "contractId"),
    ]
    wait_rows(cid, 4)
    assert all(supervisor(t) is not None for t in tasks)

    # A message that bypassed the API (one bad heartbeat inside) is judged per item too:
    # the rest are stored, the bad one is kept as a dead letter naming the field.
    good, bad = hb(cid, uuid.uuid4(), "idle", t0), {**hb(cid, uuid.uuid4(), "idle", t0), "state": "asleep"}
    send_task(
        TaskName.INGEST_HEARTBEATS.value,
        message_of({api.caller.principal_id: [good, bad]}),
    )
    wait_rows(cid, 5)

    def parked() -> DeadLetter | None:
        with unit_of_work() as uow:
            found = uow.session.scalars(
                select(DeadLetter).where(DeadLetter.task_name == TaskName.INGEST_HEARTBEATS.value)
            ).all()
            return next((d for d in found if bad["taskId"] in d.raw_body), None)

    letter = wait_for(parked, what="the invalid heartbeat parked")
    assert "state" in letter.error


def test_the_api_module_refuses_what_it_can_judge_at_once(daemon: tuple[ContractsAPI, uuid.UUID]) -> None:
    api, cid = daemon
    with pytest.raises(ValidationFailed) as bad:
        api.send_heartbeat(cid, uuid.uuid4(), "dreaming", "plan")
    assert bad.value.details["field"] == "state"
    with pytest.raises(ContractNotFound):
        api.send_heartbeat(uuid.uuid4(), uuid.uuid4(), "working", "plan")


def test_a_timestamp_its_offset_puts_before_year_1_in_utc_is_refused_not_stored_as_2000(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """0001-01-01T00:00:00+00:01 was answered 202 and stored as 2000-01-01T00:00:00+00:00,
    where 0001-01-01T00:00:00Z is refused; the API module crashed on the same time as a value."""
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    headers = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/supervisors/heartbeats"
    task = uuid.uuid4()
    problem = "timestamp: must lie between 2000 and 9000"
    with TestClient(create_app()) as client:
        for stamp in ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00+00:01", "0001-01-01T00:00:00+14:00"):
            one = {**hb(cid, task, "working", utcnow()), "timestamp": stamp}
            single = client.post(url, json=one, headers=headers)
            assert single.status_code == 400, (stamp, single.text)
            error = single.json()["error"]
            assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", "timestamp")
            assert problem in error["message"]
            listed = client.post(url, json=[one], headers=headers).json()
            assert (listed["accepted"], listed["results"][0]["field"]) == (0, "timestamp"), stamp
    for stamp in (datetime(1, 1, 1, tzinfo=timezone(timedelta(minutes=1))), datetime(1, 1, 1, tzinfo=UTC)):
        with pytest.raises(ValidationFailed) as sent:
            api.send_heartbeat(cid, task, "working", "plan", timestamp=stamp)
        assert sent.value.details["field"] == "timestamp" and problem in sent.value.message
    api.flush()
    assert rows(cid) == [] and supervisor(task) is None


def test_the_published_heartbeat_schema_allows_null_exactly_where_the_endpoint_accepts_it(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """currentActivity, progress, pendingTaskIds and id took null (meaning absent) while the
    OpenAPI schema said they could not be null: the schema now says what the endpoint does."""
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    headers = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/supervisors/heartbeats"
    with TestClient(create_app()) as client:
        body = client.get("/openapi.json").json()["paths"][url]["post"]["requestBody"]
        published = body["content"]["application/json"]["schema"]["oneOf"][0]
        nullable: dict[str, bool] = {}
        accepted: dict[str, bool] = {}
        for name, prop in published["properties"].items():
            types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
            nullable[name] = "null" in types
            one = {**hb(cid, uuid.uuid4(), "working", utcnow()), "incarnation": 1, name: None}
            answer = client.post(url, json=one, headers=headers)
            assert answer.status_code in (202, 400), answer.text
            accepted[name] = answer.status_code == 202
    assert nullable == accepted
    assert {name for name, yes in accepted.items() if yes} == {
        "id", "currentActivity", "progress", "pendingTaskIds", "incarnation", "daemonId", "host",
    }  # fmt: skip
    assert set(published["required"]) == {name for name, yes in accepted.items() if not yes}


@pytest.mark.parametrize(("daemon_id", "found"), [("gpu\n7", "U+000A"), ("gpu\x01", "U+0001")])
def test_a_daemon_id_the_command_feed_would_refuse_is_refused_by_heartbeats(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller, daemon_id: str, found: str
) -> None:
    """Such an id was stored and listed, but its feed answered 400: its commands were unreadable."""
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    headers = {"Authorization": f"Bearer {token}"}
    one = hb(cid, uuid.uuid4(), "working", utcnow(), daemonId=daemon_id, host="gpu-7")
    rule = (
        "a daemon id is 1 to 200 characters, not blank, not '.' or '..', with no NUL or other control "
        "character"
    )
    with TestClient(create_app()) as client:
        single = client.post("/api/v1/supervisors/heartbeats", json=one, headers=headers)
        assert single.status_code == 400, single.text
        error = single.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", "daemonId")
        assert f"found {found}" in error["message"] and rule in error["message"], error
        two = [one, hb(cid, uuid.uuid4(), "idle", utcnow())]
        listed = client.post("/api/v1/supervisors/heartbeats", json=two, headers=headers)
        assert listed.status_code == 202 and (listed.json()["accepted"], listed.json()["refused"]) == (1, 1)
        refused = listed.json()["results"][0]
        assert (refused["code"], refused["field"]) == ("VALIDATION_FAILED", "daemonId")
        feed = client.get(f"/api/v1/daemons/{quote(daemon_id)}/commands", headers=headers)
        assert feed.status_code == 400 and feed.json()["error"]["details"]["field"] == "daemonId"
    with pytest.raises(ValidationFailed) as sent:
        api.send_heartbeat(cid, uuid.uuid4(), "working", "plan", daemon_id=daemon_id)
    assert sent.value.details["field"] == "daemonId" and rule in sent.value.message


def dead_events(cid: uuid.UUID) -> int:
    return event_types(cid).count("supervisor_dead")


def test_a_silent_supervisor_is_declared_dead_once_and_its_late_heartbeat_is_fenced(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    api, cid = daemon
    task = uuid.uuid4()
    t0 = utcnow()
    api.send_heartbeat(cid, task, "working", "execute", timestamp=t0, daemon_id="d-dead", host="host-a")
    api.flush()
    wait_for(lambda: supervisor(task), what="supervisor stored")
    beat(TaskName.DETECT_DEAD_SUPERVISORS)  # within the timeout: nothing happens
    wait_for(lambda: (r := supervisor(task)) and r.last_received_at < utcnow() - timedelta(seconds=TIMEOUT_S),
             timeout=10, what="silence past the timeout")  # fmt: skip
    assert supervisor(task).alive  # type: ignore[union-attr]
    for _ in range(3):  # overlapping sweeps, as a slow beat and a fast one would send them
        beat(TaskName.DETECT_DEAD_SUPERVISORS)
    wait_for(lambda: dead_events(cid) == 1, what="declared dead")
    beat(TaskName.DETECT_DEAD_SUPERVISORS)
    row = supervisor(task)
    assert row is not None and (row.alive, row.state, row.incarnation) == (False, "interrupted", 2)
    types = event_types(cid)
    assert types.count("supervisor_dead") == 1
    assert types[-2:] == ["supervisor_state_changed", "supervisor_dead"]

    # The old incarnation's late heartbeat (no incarnation, a later clock): kept, fenced, no effect.
    late = api.send_heartbeat(cid, task, "working", "execute", timestamp=t0 + timedelta(seconds=30))
    api.flush()
    stored = {r.id: r for r in wait_rows(cid, 2)}
    assert stored[late].fenced
    row = supervisor(task)
    assert row is not None and (row.alive, row.state, row.incarnation) == (False, "interrupted", 2)

    def told() -> list[DaemonCommand]:
        with unit_of_work() as uow:
            return list(
                uow.session.scalars(
                    select(DaemonCommand).where(
                        DaemonCommand.contract_id == cid,
                        DaemonCommand.command == FENCED_COMMAND,
                        DaemonCommand.published_at.is_not(None),
                    )
                )
            )

    commands = wait_for(lambda: len(told()) >= 2 and told(), what="fence commands published")
    assert {c.payload["currentIncarnation"] for c in commands} == {2}
    # The sweep's names the incarnation it declared dead; the late heartbeat's, the none it sent.
    assert sorted((c.payload["reasonCode"], c.payload["fencedIncarnation"]) for c in commands) == [
        ("no_incarnation", None),
        ("replaced", 1),
    ]
    # The sweep's notice goes to the daemon the supervisor ran on. (The rows come back in no
    # set order: publishing updates them, so which is first is not the order they were written.)
    swept = next(c for c in commands if c.payload["reasonCode"] == "replaced")
    assert swept.payload["daemonId"] == "d-dead"
    with pytest.raises(Exception) as dead:
        api.request_supervisor_sync(cid)
    assert getattr(dead.value, "code", "") == "SUPERVISOR_DEAD"
    assert dead.value.details["lastReceivedAt"] is not None  # type: ignore[attr-defined]

    # A restart names the new incarnation (it was told it): alive again, one state change.
    api.send_heartbeat(cid, task, "initializing", "execute", timestamp=t0 - timedelta(hours=1), incarnation=2)
    api.flush()
    wait_for(lambda: (r := supervisor(task)) and r.alive, what="revived by incarnation 2")
    assert supervisor(task).state == "initializing"  # type: ignore[union-attr]
    assert dead_events(cid) == 1


def fence_notices(contract_id: uuid.UUID, engine: Any = None) -> dict[str, dict[str, Any]]:
    """The `supervisor_fenced` payloads written for a contract, by reasonCode."""
    with unit_of_work(engine=engine) as uow:
        payloads = [
            dict(c.payload)
            for c in uow.session.scalars(
                select(DaemonCommand).where(
                    DaemonCommand.contract_id == contract_id,
                    DaemonCommand.command == FENCED_COMMAND,
                )
            )
        ]
    by_reason = {p["reasonCode"]: p for p in payloads}
    assert len(by_reason) == len(payloads), payloads
    return by_reason


def test_a_fenced_daemon_is_told_what_its_heartbeat_named_and_why_on_both_dialects(
    daemon: tuple[ContractsAPI, uuid.UUID], tmp_path: Any
) -> None:
    """Incarnation 2 is in force (a restoration issued it). A heartbeat naming none, one naming
    50 (never issued) and one naming 1 (replaced) are each fenced, and each notice says what
    that heartbeat named (null for none, never a number it did not send), the incarnation in
    force, and its own reason."""
    api, cid = daemon
    with embedded_database(tmp_path) as (local, token):
        embedded = ContractsAPI(token, engine=local, sender=lambda *args, **kwargs: "")
        lid = uuid.UUID(str(embedded.create_contract("embedded", "simple").id))
        for engine, contract, principal in (
            (None, cid, api.caller.principal_id),
            (local, lid, embedded.caller.principal_id),
        ):
            task, t0 = uuid.uuid4(), utcnow()
            started = hb(contract, task, "working", t0 - timedelta(seconds=1), daemonId="d-9", host="h-9")
            first = hb(contract, task, "working", t0, incarnation=2, daemonId="d-9", host="h-9")
            late = [
                hb(contract, task, "idle", t0 + timedelta(seconds=s), daemonId="d-9", host="h-9", **named)
                for s, named in ((1, {}), (2, {"incarnation": 50}), (3, {"incarnation": 1}))
            ]
            heartbeats.ingest(message_of({principal: [started]}), engine=engine, sender=lambda *a, **k: "")
            # Incarnation 2 is the server's to issue: a restoration's claim issues it.
            claimant = api if engine is None else embedded
            restored = claimant.restore_supervisor(contract, task, daemon_id="d-9", host="h-9")
            assert (restored.claimed, restored.incarnation) == (True, 2)
            for beats in ([first], late):
                report = heartbeats.ingest(
                    message_of({principal: beats}), engine=engine, sender=lambda *a, **k: ""
                )
            assert report.fenced == 3
            told = fence_notices(contract, engine)
            assert {
                code: (p["fencedIncarnation"], p["currentIncarnation"], p["taskId"], p["daemonId"], p["host"])
                for code, p in told.items()
            } == {
                "no_incarnation": (None, 2, str(task), "d-9", "h-9"),
                "not_issued": (50, 2, str(task), "d-9", "h-9"),
                "replaced": (1, 2, str(task), "d-9", "h-9"),
            }
            assert "named no incarnation" in told["no_incarnation"]["reason"]
            assert "sends it (currentIncarnation) with every heartbeat" in told["no_incarnation"]["reason"]
            assert "incarnation 50 of this supervisor was never issued" in told["not_issued"]["reason"]
            assert told["replaced"]["reason"].startswith(
                "incarnation 1 of this supervisor was declared dead or replaced by incarnation 2"
            )
            with unit_of_work(engine=engine) as uow:
                row = uow.session.get(Supervisor, task)
                assert row is not None and (row.incarnation, row.state) == (2, "working")  # unmoved


def history_of(task: uuid.UUID, engine: Any = None) -> list[tuple[int | None, bool]]:
    """(incarnation, fenced) of each stored heartbeat of a supervisor."""
    with unit_of_work(engine=engine) as uow:
        return [
            (r.incarnation, r.fenced)
            for r in uow.session.scalars(
                select(SupervisorHeartbeat)
                .where(SupervisorHeartbeat.task_id == task)
                .order_by(SupervisorHeartbeat.sent_at)
            )
        ]


def test_a_first_heartbeat_naming_an_incarnation_never_issued_starts_nothing_on_both_dialects(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller, tmp_path: Any
) -> None:
    """A first heartbeat naming 2147483647 (MAX_INCARNATION) started the supervisor there, and
    the next restart answered 202 with incarnation 2147483648, which no heartbeat or save could
    name (nor PostgreSQL's column hold). Only the server issues incarnations, from the first:
    such a heartbeat is stored, fenced (not_issued, incarnation 1 in force), and starts nothing;
    the daemon's next heartbeat naming 1 or none starts the supervisor, which can be restarted."""
    api, cid = daemon
    tasks: dict[Any, uuid.UUID] = {}
    with on_both_dialects(daemon, tmp_path) as dialects:
        for engine, contract, principal in dialects:
            task, t0 = uuid.uuid4(), utcnow()
            tasks[engine] = task
            last = hb(contract, task, "working", t0, incarnation=MAX_INCARNATION, daemonId="d-max", host="h")
            report = heartbeats.ingest(
                message_of({principal: [last]}), engine=engine, sender=lambda *a, **k: ""
            )
            assert (report.fenced, report.applied, report.stored, report.refused) == (1, 0, 1, [])
            with unit_of_work(engine=engine) as uow:
                assert uow.session.get(Supervisor, task) is None  # nothing started
            assert history_of(task, engine) == [(MAX_INCARNATION, True)]
            told = fence_notices(contract, engine)
            assert list(told) == ["not_issued"]
            notice = told["not_issued"]
            assert (notice["fencedIncarnation"], notice["currentIncarnation"], notice["daemonId"]) == (
                MAX_INCARNATION,
                1,
                "d-max",
            )
            assert f"incarnation {MAX_INCARNATION} of this supervisor was never issued" in notice["reason"]

            named = hb(contract, task, "idle", t0 + timedelta(seconds=1), daemonId="d-max")
            heartbeats.ingest(message_of({principal: [named]}), engine=engine, sender=lambda *a, **k: "")
            with unit_of_work(engine=engine) as uow:
                row = uow.session.get(Supervisor, task)
                assert row is not None and (row.incarnation, row.state, row.alive) == (1, "idle", True)

    # The supervisor started at incarnation 1 can be restarted: the server issues 2.
    person = make_caller(owner=api.caller.owner_id, role="user")[0]
    with TestClient(create_app()) as client:
        restart = client.post(
            f"/api/v1/contracts/{cid}/supervisor/restart",
            json={"taskId": str(tasks[None])},
            headers={"Authorization": f"Bearer {person}"},
        )
    assert restart.status_code == 202, restart.text
    assert (restart.json()["previousIncarnation"], restart.json()["incarnation"]) == (1, 2)


def at_the_last_incarnation(task: uuid.UUID) -> None:
    """As though 2,147,483,646 restarts, restorations and deaths had issued every incarnation but
    none: the supervisor's row is at MAX_INCARNATION (no heartbeat can put it there)."""
    with unit_of_work() as uow:
        uow.session.execute(
            update(Supervisor).where(Supervisor.task_id == task).values(incarnation=MAX_INCARNATION)
        )


def test_a_supervisor_at_the_last_incarnation_is_declared_dead_without_a_next_one(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    """The sweep wrote incarnation + 1: past MAX_INCARNATION PostgreSQL refused it and the sweep
    failed on every run. At the limit the death is declared and the incarnation stays; nothing
    is fenced, so no fence notice goes out, and the daemon's heartbeat naming it revives it."""
    api, cid = daemon
    task = uuid.uuid4()
    api.send_heartbeat(cid, task, "working", "execute", daemon_id="d-last", host="h")
    api.flush()
    wait_for(lambda: supervisor(task), what="supervisor stored")
    at_the_last_incarnation(task)
    api.send_heartbeat(cid, task, "working", "execute", incarnation=MAX_INCARNATION, daemon_id="d-last")
    api.flush()
    wait_for(lambda: history_of(task)[-1:] == [(MAX_INCARNATION, False)], what="the last incarnation heard")
    wait_for(lambda: (r := supervisor(task)) and r.last_received_at < utcnow() - timedelta(seconds=TIMEOUT_S),
             timeout=10, what="silence past the timeout")  # fmt: skip
    beat(TaskName.DETECT_DEAD_SUPERVISORS)
    wait_for(lambda: dead_events(cid) == 1, what="declared dead")
    row = supervisor(task)
    assert row is not None and (row.alive, row.state, row.incarnation) == (
        False,
        "interrupted",
        MAX_INCARNATION,
    )
    with unit_of_work() as uow:
        dead = uow.session.scalars(
            select(ContractEvent).where(
                ContractEvent.contract_id == cid, ContractEvent.type == "supervisor_dead"
            )
        ).one()
        assert (dead.payload["deadIncarnation"], dead.payload["newIncarnation"]) == (MAX_INCARNATION,) * 2
    assert fence_notices(cid) == {}

    api.send_heartbeat(cid, task, "idle", "execute", incarnation=MAX_INCARNATION)
    api.flush()
    wait_for(lambda: (r := supervisor(task)) and r.alive, what="revived by the incarnation in force")
    assert supervisor(task).incarnation == MAX_INCARNATION  # type: ignore[union-attr]


def test_skewed_clocks_neither_kill_early_nor_keep_alive(daemon: tuple[ContractsAPI, uuid.UUID]) -> None:
    api, cid = daemon
    skews = {uuid.uuid4(): timedelta(hours=1), uuid.uuid4(): -timedelta(hours=1), uuid.uuid4(): timedelta(0)}
    start = utcnow()
    beats = 0
    # Keep sending (every 0.5 s, four times the timeout) while the sweep runs often.
    while utcnow() - start < timedelta(seconds=TIMEOUT_S * 2):
        for task, skew in skews.items():
            api.send_heartbeat(cid, task, "working", "plan", timestamp=utcnow() + skew)
        api.flush()
        beats += 1
        beat(TaskName.DETECT_DEAD_SUPERVISORS)
        threading.Event().wait(0.5)
    wait_rows(cid, beats * 3)
    assert dead_events(cid) == 0, "a supervisor that kept sending was declared dead"
    assert all(supervisor(t).alive for t in skews)  # type: ignore[union-attr]
    # Then they all stop: each is declared dead once the timeout passes, the +1 h clock too.
    threading.Event().wait(TIMEOUT_S + 0.3)
    beat(TaskName.DETECT_DEAD_SUPERVISORS)
    wait_for(lambda: dead_events(cid) == 3, what="all three declared dead")
    assert not any(supervisor(t).alive for t in skews)  # type: ignore[union-attr]


def test_retention_drops_old_partitions_and_keeps_the_last_day(
    daemon: tuple[ContractsAPI, uuid.UUID], worker: WorkerProcess
) -> None:
    api, cid = daemon
    now = utcnow()
    old = now - timedelta(days=3)
    message = message_of({api.caller.principal_id: [hb(cid, uuid.uuid4(), "working", old) for _ in range(3)]})
    heartbeats.ingest(message, now=old)  # as if received three days ago: its own day partition
    api.send_heartbeat(cid, uuid.uuid4(), "working", "plan", timestamp=now)
    api.flush()
    wait_rows(cid, 4)
    assert old.date() in heartbeat_retention.partition_days()

    beat(TaskName.HEARTBEAT_RETENTION)
    wait_for(lambda: old.date() not in heartbeat_retention.partition_days(), what="old partition dropped")
    days = heartbeat_retention.partition_days()
    assert now.date() in days and (now + timedelta(days=2)).date() in days  # created ahead
    kept = rows(cid)
    assert len(kept) == 1 and kept[0].received_at > now - timedelta(hours=24)
    with get_engine().connect() as conn:
        assert not conn.execute(
            text("SELECT 1 FROM pg_tables WHERE tablename = :t"), {"t": partition_name(old.date())}
        ).first()


def test_http_status_history_daemons_and_owner_scoping(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    api, cid = daemon
    token = make_caller(owner=api.caller.owner_id, role="user")[0]
    stranger = make_caller(role="user")[0]
    task = uuid.uuid4()
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app()) as client:
        missing = client.get(f"/api/v1/contracts/{cid}/supervisor/status", headers=headers)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "SUPERVISOR_NOT_FOUND"
        one = hb(cid, task, "waiting_for_tasks", utcnow(), daemonId="daemon-7", host="gpu-7",
                 pendingTaskIds=[str(uuid.uuid4())])  # fmt: skip
        sent = client.post("/api/v1/supervisors/heartbeats", json=one, headers=headers)
        assert sent.status_code == 202 and sent.json()["accepted"] == 1
        wait_rows(cid, 1)
        status = client.get(f"/api/v1/contracts/{cid}/supervisor/status", headers=headers).json()
        assert status["state"] == "waiting_for_tasks" and status["alive"] and status["incarnation"] == 1
        assert status["pendingTaskIds"] == one["pendingTaskIds"] and status["lastReceivedAt"]
        history = client.get(f"/api/v1/contracts/{cid}/supervisor/heartbeats?limit=5", headers=headers)
        assert [h["id"] for h in history.json()["heartbeats"]] == [sent.json()["results"][0]["id"]]
        daemons = client.get("/api/v1/daemons", headers=headers).json()["daemons"]
        mine = next(d for d in daemons if d["daemonId"] == "daemon-7")
        assert mine["host"] == "gpu-7" and mine["alive"] and str(task) in mine["supervisorTaskIds"]
        sync = client.post(f"/api/v1/contracts/{cid}/supervisor/sync", headers=headers)
        assert sync.status_code == 202 and sync.json()["state"] == "waiting_for_tasks"
        other = {"Authorization": f"Bearer {stranger}"}
        for path in ("supervisor/status", "supervisor/heartbeats"):
            assert client.get(f"/api/v1/contracts/{cid}/{path}", headers=other).status_code == 404
        assert all(
            d["daemonId"] != "daemon-7"
            for d in client.get("/api/v1/daemons", headers=other).json()["daemons"]
        )
        refused = client.post("/api/v1/supervisors/heartbeats", json=one, headers=other)
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "CONTRACT_NOT_FOUND"


def test_concurrent_http_requests_share_broker_messages(make_caller, worker: WorkerProcess) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = uuid.UUID(str(api.create_contract("coalesced", "simple").id))
    messages: list[int] = []
    lock = threading.Lock()

    def counting_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        with lock:
            messages.append(sum(len(g["heartbeats"]) for g in payload["groups"]))
        return send_task(task, payload, countdown)

    app = create_app(sender=counting_send)
    headers = {"Authorization": f"Bearer {token}"}
    requests = 40
    with TestClient(app) as client:
        go = threading.Barrier(requests)

        def one(i: int) -> None:
            go.wait()
            resp = client.post("/api/v1/supervisors/heartbeats", json=hb(cid, uuid.uuid4(), "idle", utcnow()),
                               headers=headers)  # fmt: skip
            assert resp.status_code == 202, resp.text

        threads = [threading.Thread(target=one, args=(i,)) for i in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(messages) == requests
    assert len(messages) < requests / 2, f"{len(messages)} messages for {requests} requests"
    wait_rows(cid, requests)


def test_the_feature_flag_off_answers_feature_disabled_and_workers_skip(
    daemon: tuple[ContractsAPI, uuid.UUID], monkeypatch: pytest.MonkeyPatch, make_caller
) -> None:
    from app.config import Settings

    api, cid = daemon
    off = Settings(feature_flags={"supervisor_heartbeat": False})  # type: ignore[arg-type]
    monkeypatch.setattr("app.http.supervisors.get_settings", lambda: off)
    monkeypatch.setattr("app.api.base.get_settings", lambda: off)
    token = make_caller(owner=api.caller.owner_id)[0]
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app()) as client:
        for method, path in (
            ("POST", "/api/v1/supervisors/heartbeats"),
            ("GET", f"/api/v1/contracts/{cid}/supervisor/status"),
            ("GET", f"/api/v1/contracts/{cid}/supervisor/heartbeats"),
            ("GET", "/api/v1/daemons"),
        ):
            resp = client.request(method, path, headers=headers, json=hb(cid, uuid.uuid4(), "idle", utcnow()))
            assert resp.status_code == 503, (path, resp.text)
            assert resp.json()["error"]["code"] == "FEATURE_DISABLED"
    with pytest.raises(FeatureDisabled):
        ContractsAPI(token, settings=off).send_heartbeat(cid, uuid.uuid4(), "idle", "plan")


def test_counters_add_up_across_processes(worker: WorkerProcess) -> None:
    with unit_of_work() as uow:
        totals = heartbeats.counters(uow.session)
        shards = uow.session.scalar(select(func.count()).select_from(text("heartbeat_counters")))
    assert totals["received"] == totals["stored"] + totals["duplicates"] + totals["refused"]
    assert totals["fenced"] >= 1 and totals["duplicates"] >= 1 and totals["refused"] >= 1
    assert shards and shards >= 1


STATE_CHANGES_COUNTED = 'contract_events_total{type="supervisor_state_changed"}'


def state_changes_counted() -> float:
    """`/metrics`' supervisor_state_changed count: every process of this run, summed."""
    with TestClient(create_app()) as client:
        exposition = client.get("/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith(f"{STATE_CHANGES_COUNTED} ")
    )


def state_changes_recorded(engine: Any = None) -> int:
    from app.models import ContractEvent

    with unit_of_work(engine=engine) as uow:
        return int(
            uow.session.scalar(
                select(func.count()).select_from(ContractEvent).where(ContractEvent.type == STATE_CHANGED)
            )
            or 0
        )


def test_metrics_count_every_state_change_the_workers_ingestion_records(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    """The ingestion writes its events in its own statements, past the unit of work's count:
    /metrics still counts each one the worker committed, no more."""
    api, cid = daemon
    counted, recorded = state_changes_counted(), state_changes_recorded()
    first, second = uuid.uuid4(), uuid.uuid4()
    t0 = utcnow()
    api.send_heartbeat(cid, first, "working", "plan", timestamp=t0)
    api.send_heartbeat(cid, second, "working", "plan", timestamp=t0)
    api.flush()
    wait_rows(cid, 2)
    api.send_heartbeat(cid, first, "idle", "plan", timestamp=t0 + timedelta(seconds=1))  # a change
    api.send_heartbeat(cid, second, "working", "plan", timestamp=t0 + timedelta(seconds=1))  # none
    api.flush()
    wait_for(lambda: event_types(cid).count(STATE_CHANGED) == 3, what="three state changes")
    written = state_changes_recorded() - recorded
    assert written >= 3
    deadline = time.monotonic() + 10  # the worker counts right after its commit: a moment later
    while state_changes_counted() - counted < written and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state_changes_counted() - counted == written


def test_the_ingestion_reports_by_type_the_events_its_statements_wrote_on_both_dialects(
    daemon: tuple[ContractsAPI, uuid.UUID], tmp_path: Any
) -> None:
    """What the worker counts for /metrics after commit: the PostgreSQL fold's and the SQLite
    path's own count of the events they wrote."""
    with on_both_dialects(daemon, tmp_path) as dialects:
        for engine, contract, principal in dialects:
            task, t0 = uuid.uuid4(), utcnow()
            before = state_changes_recorded(engine)
            lists = [
                message_of({principal: [hb(contract, task, state, t0 + timedelta(seconds=s))]})
                for s, state in ((0, "working"), (1, "idle"), (2, "idle"))
            ]
            ingested = [heartbeats.ingest(one, engine=engine) for one in lists]
            assert [r.events_written() for r in ingested] == [
                {STATE_CHANGED: 1},
                {STATE_CHANGED: 1},
                {STATE_CHANGED: 0},
            ]
            assert state_changes_recorded(engine) - before == 2


def test_one_list_judges_a_new_supervisor_a_foreign_claim_a_late_one_and_a_repeat_together(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    api, cid = daemon
    other = uuid.UUID(str(api.create_contract("another", "simple").id))
    task = uuid.uuid4()
    t0 = utcnow()
    first = {**hb(cid, task, "working", t0), "id": str(uuid.uuid4())}
    message = message_of(
        {
            api.caller.principal_id: [
                first,
                hb(other, task, "blocked", t0 + timedelta(seconds=5)),  # the task is cid's: refused
                hb(cid, task, "idle", t0 - timedelta(seconds=5)),  # late: kept, changes nothing
                first,  # the same id again: stored once
            ]
        }
    )
    report = heartbeats.ingest(message, sender=send_task)
    assert report.as_dict() == {
        "received": 4,
        "stored": 2,
        "duplicates": 1,
        "fenced": 0,
        "refused": 1,
        "applied": 1,
        "stateChanges": 1,
    }
    assert [(r.field, r.problem) for r in report.refused] == [
        ("taskId", "another contract's supervisor or task")
    ]
    row = supervisor(task)
    assert row is not None and (row.contract_id, row.state, row.version) == (cid, "working", 1)
    assert len(rows(cid)) == 2 and rows(other) == []
    assert event_types(cid).count("supervisor_state_changed") == 1
    assert "supervisor_state_changed" not in event_types(other)

    # Sent again (a redelivery): nothing new is stored, nothing changes, every one is counted.
    again = heartbeats.ingest(message, sender=send_task)
    assert (again.stored, again.duplicates, again.state_changes, len(again.refused)) == (0, 3, 0, 1)
    assert supervisor(task).version == 2  # type: ignore[union-attr]  # the receive time moved on


def test_lists_ingested_at_once_by_several_writers_leave_the_newest_state_and_one_row_per_id(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    api, cid = daemon
    tasks = [uuid.uuid4() for _ in range(40)]
    t0 = utcnow()
    states = ("working", "idle", "blocked")
    lists = [
        message_of(
            {
                api.caller.principal_id: [
                    {**hb(cid, t, states[i % 3], t0 + timedelta(seconds=i)), "progress": i}
                    for t in (tasks if i % 2 else reversed(tasks))
                ]
            }
        )
        for i in range(24)
    ]
    reports: list[IngestReport] = []
    errors: list[BaseException] = []

    def writer(mine: list[dict[str, Any]]) -> None:
        for message in mine:
            try:
                reports.append(heartbeats.ingest(message, sender=send_task))
            except BaseException as exc:  # a deadlock or a key error would land here
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(lists[i::4][::-1] if i % 2 else lists[i::4],))
               for i in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(r.stored for r in reports) == 24 * 40 and len(rows(cid)) == 24 * 40
    for task in tasks:
        row = supervisor(task)
        assert row is not None and (row.progress, row.state, row.alive) == (23, states[23 % 3], True)
    changes = event_types(cid).count("supervisor_state_changed")
    assert changes == sum(r.state_changes for r in reports)  # an event for each change, no more


def notices_of(message: dict[str, Any], engine: Any = None) -> list[dict[str, Any]]:
    """The live notices one list hands over after commit, decoded (they are handed over as text)."""
    handed: list[str] = []
    heartbeats.ingest(message, sender=send_task, engine=engine, notify=handed.append)
    assert len(handed) == 1
    return sorted(json.loads(handed[0]), key=lambda n: n["payload"]["progress"])


def expected_notices(cid: uuid.UUID, tasks: list[uuid.UUID]) -> list[dict[str, Any]]:
    return [
        {"notice": "heartbeat", "contractId": str(cid),
         "payload": {"taskId": str(t), "state": "working", "activity": f"step {i}", "progress": i,
                     "incarnation": 1, "alive": True}}
        for i, t in enumerate(tasks)
    ]  # fmt: skip


def test_a_list_hands_over_one_live_notice_per_supervisor_in_the_channels_shape(
    daemon: tuple[ContractsAPI, uuid.UUID], tmp_path: Any
) -> None:
    api, cid = daemon
    tasks = [uuid.uuid4() for _ in range(3)]
    t0 = utcnow()
    items = [{**hb(cid, t, "working", t0), "currentActivity": f"step {i}", "progress": i}
             for i, t in enumerate(tasks)]  # fmt: skip
    late = {**items[0], "timestamp": (t0 - timedelta(seconds=5)).isoformat(), "currentActivity": "older"}
    message = message_of({api.caller.principal_id: [*items, late]})
    assert notices_of(message) == expected_notices(cid, tasks)  # PostgreSQL: built by the statement

    url = f"sqlite:///{tmp_path / 'makima.db'}"  # the embedded default: built in Python, same shape
    migrate(url)
    engine = get_engine(url)
    try:
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "sqlite-owner", Role.SUPERVISOR)
        local = ContractsAPI(token, engine=engine, sender=lambda *args, **kwargs: "")
        lid = uuid.UUID(str(local.create_contract("embedded", "simple").id))
        items = [{**i, "contractId": str(lid)} for i in [*items, late]]
        assert notices_of(message_of({local.caller.principal_id: items}), engine) == (
            expected_notices(lid, tasks)
        )
    finally:
        engine.dispose()


def test_the_worker_publishes_the_notices_on_the_live_channel_as_handed_over(
    daemon: tuple[ContractsAPI, uuid.UUID],
) -> None:
    """What the monitor's subscriber reads: one JSON array holding the notices (app.monitor)."""
    import redis as redis_client

    from app import live_events
    from workers.heartbeats import ingest

    api, cid = daemon
    tasks = [uuid.uuid4() for _ in range(2)]
    t0 = utcnow()
    items = [{**hb(cid, t, "working", t0), "currentActivity": f"step {i}", "progress": i}
             for i, t in enumerate(tasks)]  # fmt: skip
    client = redis_client.Redis.from_url(live_events.redis_url())
    sub = client.pubsub()
    sub.subscribe(live_events.channel())
    try:
        sub.get_message(timeout=2)  # the subscription's confirmation
        ingest(message_of({api.caller.principal_id: items}))
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            message = sub.get_message(timeout=1)
            if message and message["type"] == "message":
                batch = json.loads(message["data"])
                got += [m for m in batch if m.get("notice") == "heartbeat" and m["contractId"] == str(cid)]
    finally:
        sub.close()
        client.close()
    assert sorted(got, key=lambda n: n["payload"]["progress"]) == expected_notices(cid, tasks)


def dead_letters_naming(value: str) -> list[DeadLetter]:
    with unit_of_work() as uow:
        found = uow.session.scalars(
            select(DeadLetter).where(DeadLetter.task_name == TaskName.INGEST_HEARTBEATS.value)
        ).all()
        return [d for d in found if value in d.raw_body]


def test_another_contracts_supervisor_task_is_refused_at_the_front_and_never_parked(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """The worker refuses such a heartbeat (a task id belongs to the contract of its supervisor
    row), so the fronts refuse it first, where the sender reads the answer."""
    api, cid = daemon
    here = uuid.UUID(str(api.create_contract("the wrong one", "simple").id))
    theirs = uuid.uuid4()  # cid's supervisor
    first = hb(cid, theirs, "working", utcnow())
    heartbeats.ingest(message_of({api.caller.principal_id: [first]}), sender=send_task)
    assert supervisor(theirs) is not None
    token = make_caller(owner=api.caller.owner_id, role="supervisor")[0]
    headers = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/supervisors/heartbeats"
    t0 = utcnow()
    mine = [uuid.uuid4(), uuid.uuid4()]
    body = [hb(here, mine[0], "working", t0), hb(here, theirs, "working", t0), hb(here, mine[1], "idle", t0)]
    with TestClient(create_app()) as client:
        listed = client.post(url, json=body, headers=headers)
        assert listed.status_code == 202, listed.text
        answer = listed.json()
        assert (answer["accepted"], answer["refused"]) == (2, 1)
        refused = answer["results"][1]
        assert (refused["code"], refused["field"]) == ("VALIDATION_FAILED", "taskId"), refused
        # The owner of both contracts is told why; the contract holding the task is not named.
        assert "supervisor of another contract" in refused["message"] and str(cid) not in refused["message"]

        single = client.post(url, json=hb(here, theirs, "idle", t0), headers=headers)
        assert single.status_code == 400, single.text
        error = single.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", "taskId")

        # Someone else's contract: refused alike, without confirming the task exists elsewhere.
        stranger = make_caller(role="supervisor")[0]
        foreign = str(ContractsAPI(stranger).create_contract("a stranger's", "simple").id)
        theirs_too = [hb(uuid.UUID(foreign), theirs, "idle", t0)]
        elsewhere = client.post(url, json=theirs_too, headers={"Authorization": f"Bearer {stranger}"})
        result = elsewhere.json()["results"][0]
        assert (result["code"], result["field"]) == ("VALIDATION_FAILED", "taskId")
        assert "supervisor" not in result["message"] and "another contract" not in result["message"]
        assert f"Task {theirs} cannot be used on this contract" in result["message"]

    with pytest.raises(ValidationFailed) as sent:
        api.send_heartbeat(here, theirs, "working", "plan")
    assert sent.value.details["field"] == "taskId" and "supervisor of another contract" in sent.value.message
    with pytest.raises(ValidationFailed):  # a refusal is not cached: asked again, refused again
        api.send_heartbeat(here, theirs, "idle", "plan")
    api.send_heartbeat(here, mine[0], "idle", "plan", timestamp=t0 + timedelta(seconds=1))
    api.flush()
    stored = wait_rows(here, 3)
    assert {r.task_id for r in stored} == set(mine)
    row = supervisor(theirs)
    assert row is not None and row.contract_id == cid
    assert dead_letters_naming(str(here)) == [] and dead_letters_naming(foreign) == []


def ordinary_task_of(cid: uuid.UUID) -> uuid.UUID | None:
    """The contract holding `cid` as an ordinary task (a task-started report's row), if any."""
    with unit_of_work() as uow:
        return uow.session.scalar(select(ContractTask.contract_id).where(ContractTask.id == cid))


def test_another_owners_ordinary_task_is_refused_by_heartbeats_without_saying_it_exists(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """A task id belongs to one contract: a task reported started on Alice's contract cannot be
    claimed as a supervisor by Bob's heartbeats (which would lock Alice out of her own id), and
    Bob reads only that the id cannot be used, as for another contract's supervisor."""
    alice, hers = daemon
    task = uuid.uuid4()
    alice.report_task_started(hers, task, "build")
    wait_for(lambda: ordinary_task_of(task) == hers, what="the task-started report recorded")
    bob_token = make_caller(role="supervisor")[0]
    bob = ContractsAPI(bob_token)
    his = uuid.UUID(str(bob.create_contract("bob's", "simple").id))
    url = "/api/v1/supervisors/heartbeats"
    as_bob = {"Authorization": f"Bearer {bob_token}"}
    t0 = utcnow()

    def refused_without_a_hint(message: str) -> None:
        assert f"Task {task} cannot be used on this contract" in message, message
        assert "another contract" not in message and "supervisor" not in message, message

    with TestClient(create_app()) as client:
        single = client.post(url, json=hb(his, task, "working", t0), headers=as_bob)
        assert single.status_code == 400, single.text
        error = single.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("VALIDATION_FAILED", "taskId")
        refused_without_a_hint(error["message"])
        listed = client.post(url, json=[hb(his, task, "idle", t0)], headers=as_bob)
        assert listed.status_code == 202, listed.text
        result = listed.json()["results"][0]
        assert (result["code"], result["field"]) == ("VALIDATION_FAILED", "taskId")
        refused_without_a_hint(result["message"])
    with pytest.raises(ValidationFailed) as sent:
        bob.send_heartbeat(his, task, "working", "plan")
    assert sent.value.details["field"] == "taskId"
    refused_without_a_hint(sent.value.message)
    assert supervisor(task) is None

    # The owner of both contracts is told why.
    other = uuid.UUID(str(alice.create_contract("alice's other", "simple").id))
    with pytest.raises(ValidationFailed) as explained:
        alice.send_heartbeat(other, task, "working", "plan")
    assert "belongs to another contract" in explained.value.message

    # Alice's own heartbeat naming her task on her contract is still taken.
    as_alice = {"Authorization": f"Bearer {make_caller(owner=alice.caller.owner_id, role='supervisor')[0]}"}
    with TestClient(create_app()) as client:
        taken = client.post(url, json=hb(hers, task, "working", t0), headers=as_alice)
        assert taken.status_code == 202, taken.text
    wait_rows(hers, 1)
    row = supervisor(task)
    assert row is not None and row.contract_id == hers
    assert rows(his) == [] and dead_letters_naming(str(his)) == []


def assert_its_own_contract_starts_it(
    api: ContractsAPI, engine: Engine | None, held: uuid.UUID, task: uuid.UUID, t0: datetime
) -> None:
    """The contract holding `task` still starts its supervisor under that id."""
    own = heartbeats.ingest(
        message_of({api.caller.principal_id: [hb(held, task, "working", t0 + timedelta(seconds=1))]}),
        engine=engine,
    )
    assert (own.stored, own.refused) == (1, []), engine
    with unit_of_work(engine=engine) as uow:
        row = uow.session.get(Supervisor, task)
        assert row is not None and row.contract_id == held, engine


def test_the_worker_refuses_another_contracts_ordinary_task_that_slipped_past_the_front_on_both_dialects(
    tmp_path: Any, make_caller, worker: WorkerProcess
) -> None:
    """A heartbeat that reached the worker naming another contract's ordinary task (the fronts
    refuse it first) starts no supervisor and is parked as refused; the task's own contract can
    still start its supervisor under that id afterwards."""
    token = make_caller(role="supervisor")[0]
    with apis_on_both_dialects(tmp_path, token) as dialects:
        for engine, api in dialects:
            held, here = (uuid.UUID(str(api.create_contract(n, "simple").id)) for n in ("held", "here"))
            task = uuid.uuid4()
            with unit_of_work(engine=engine) as uow:
                uow.session.add(
                    ContractTask(id=task, contract_id=held, name="build", status="running", phase="plan")
                )
            t0 = utcnow()
            principal = api.caller.principal_id
            report = heartbeats.ingest(
                message_of({principal: [hb(here, task, "working", t0)]}), engine=engine
            )
            assert [(r.code, r.field, r.problem) for r in report.refused] == [
                ("VALIDATION_FAILED", "taskId", "another contract's supervisor or task")
            ], engine
            with unit_of_work(engine=engine) as uow:
                assert uow.session.get(Supervisor, task) is None, engine
                assert (
                    uow.session.scalars(
                        select(SupervisorHeartbeat).where(SupervisorHeartbeat.contract_id == here)
                    ).all()
                    == []
                ), engine

            assert_its_own_contract_starts_it(api, engine, held, task, t0)


def test_the_fronts_take_the_workers_rule_on_sqlite_too(tmp_path: Any) -> None:
    """The embedded default: a supervisor row's contract holds the task id, and within one group
    the first claim on a new task id holds it (as within one list at the worker)."""
    from app.config import get_settings
    from app.heartbeat_buffer import http_flush, parse_submission

    sent: list[dict[str, Any]] = []

    def send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        sent.append(payload)
        return ""

    with embedded_database(tmp_path) as (engine, token):
        local = ContractsAPI(token, engine=engine, sender=send)
        held, here = (uuid.UUID(str(local.create_contract(n, "simple").id)) for n in ("held", "here"))
        theirs, new, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        t0 = utcnow()
        first = hb(held, theirs, "working", t0)
        heartbeats.ingest(message_of({local.caller.principal_id: [first]}), engine=engine)
        with pytest.raises(ValidationFailed) as refused:
            local.send_heartbeat(here, theirs, "working", "plan")
        assert refused.value.details["field"] == "taskId"

        items = [hb(here, theirs, "idle", t0), hb(here, new, "idle", t0), hb(held, new, "idle", t0),
                 hb(here, other, "idle", t0)]  # fmt: skip
        submission = parse_submission(local.caller, items)
        http_flush(engine, get_settings(), send)([submission])
        assert [(r.code, r.field) for r in submission.results] == [
            ("VALIDATION_FAILED", "taskId"),
            (None, None),
            ("VALIDATION_FAILED", "taskId"),  # `new` is here's: its first claim in the group
            (None, None),
        ]
        assert [h["taskId"] for g in sent[-1]["groups"] for h in g["heartbeats"]] == [str(new), str(other)]


CLOSED_MESSAGE = "The contract is 'failed': no more supervisor heartbeats can be recorded on it."


def test_heartbeats_on_a_closed_contract_are_refused_at_the_fronts_and_start_nothing(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller
) -> None:
    """A failed contract's heartbeat was answered 202 and made a supervisor, marked alive, that
    no save, claim or restart could then act on. It is refused per heartbeat as a state save
    on it is (400 VALIDATION_FAILED, field contractId), by the HTTP front and the API module."""
    api, open_cid = daemon
    owner = api.caller.owner_id
    person = ContractsAPI(make_caller(owner=owner, role="user")[0])
    token = make_caller(owner=owner, role="supervisor")[0]
    headers = {"Authorization": f"Bearer {token}"}
    url = "/api/v1/supervisors/heartbeats"
    closed = uuid.UUID(str(api.create_contract("given up", "simple").id))
    person.change_status(closed, Status.FAILED, reason="abandoned")
    task, t0 = uuid.uuid4(), utcnow()
    with TestClient(create_app()) as client:
        listed = client.post(
            url,
            json=[hb(closed, task, "working", t0), hb(open_cid, uuid.uuid4(), "working", t0)],
            headers=headers,
        )
        assert listed.status_code == 202, listed.text
        answer = listed.json()
        assert (answer["accepted"], answer["refused"]) == (1, 1)
        refused = answer["results"][0]
        assert (refused["code"], refused["field"], refused["message"]) == (
            "VALIDATION_FAILED",
            "contractId",
            CLOSED_MESSAGE,
        )
        single = client.post(url, json=hb(closed, task, "working", t0), headers=headers)
        assert single.status_code == 400, single.text
        error = single.json()["error"]
        assert (error["code"], error["details"]["field"], error["message"]) == (
            "VALIDATION_FAILED",
            "contractId",
            CLOSED_MESSAGE,
        )
        # A state save on it is refused in the same words.
        save = client.post(
            f"/api/v1/contracts/{closed}/supervisor/state",
            json={"taskId": str(task), "stateVersion": 1, "state": "working", "phase": "plan"},
            headers=headers,
        )
        assert save.status_code == 400 and save.json()["error"]["message"] == CLOSED_MESSAGE.replace(
            "heartbeats", "state saves"
        )
    with pytest.raises(ValidationFailed) as sent:
        api.send_heartbeat(closed, task, "working", "plan")
    assert (sent.value.details["field"], sent.value.message) == ("contractId", CLOSED_MESSAGE)
    api.flush()
    wait_rows(open_cid, 1)
    assert rows(closed) == [] and supervisor(task) is None
    assert dead_letters_naming(str(closed)) == []


def test_the_worker_neither_starts_nor_revives_a_supervisor_of_a_closed_contract(
    daemon: tuple[ContractsAPI, uuid.UUID], make_caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat that got past the fronts before its contract closed (the API module trusts
    its answer for VISIBLE_SECONDS) is refused by the worker as the fronts refuse it: no
    supervisor is made, a dead one is not revived, nothing is stored in the history; it is
    counted as refused and kept in the list's dead letter. Once the cached answer expires the
    API module refuses it itself."""
    from app import heartbeat_buffer

    api, _ = daemon
    person = ContractsAPI(make_caller(owner=api.caller.owner_id, role="user")[0])
    cid = uuid.UUID(str(api.create_contract("closes while beating", "simple").id))
    live, t0 = uuid.uuid4(), utcnow()
    api.send_heartbeat(cid, live, "working", "plan", timestamp=t0)  # the answer is cached now
    api.flush()
    wait_for(lambda: supervisor(live), what="the supervisor started")
    with unit_of_work() as uow:  # as the dead sweep leaves it
        uow.session.execute(
            update(Supervisor)
            .where(Supervisor.task_id == live)
            .values(alive=False, state="interrupted", incarnation=2, sent_at=None)
        )
    person.change_status(cid, Status.FAILED, reason="abandoned")

    api.send_heartbeat(cid, live, "working", "plan", timestamp=t0 + timedelta(seconds=1), incarnation=2)
    api.flush()
    letter = wait_for(lambda: dead_letters_naming(str(cid)), what="the refusal kept")
    assert len(letter) == 1 and letter[0].error == (
        f"VALIDATION_FAILED: 1 heartbeat(s) refused, first: contractId: {CLOSED_MESSAGE}"
    )
    row = supervisor(live)
    assert row is not None and (row.alive, row.state, row.incarnation) == (False, "interrupted", 2)
    assert len(rows(cid)) == 1  # only the heartbeat from before the close

    fresh = uuid.uuid4()  # straight to the worker, as a message that bypassed the fronts
    report = heartbeats.ingest(
        message_of({api.caller.principal_id: [hb(cid, fresh, "working", t0)]}), sender=send_task
    )
    assert [(r.code, r.field, r.problem) for r in report.refused] == [
        ("VALIDATION_FAILED", "contractId", CLOSED_MESSAGE)
    ]
    assert (report.stored, report.applied) == (0, 0) and supervisor(fresh) is None

    monkeypatch.setattr(heartbeat_buffer, "VISIBLE_SECONDS", 0.0)  # the cached answer expired
    with pytest.raises(ValidationFailed) as sent:
        api.send_heartbeat(cid, live, "working", "plan", incarnation=2)
    assert sent.value.details["field"] == "contractId"


def test_closed_contracts_are_refused_by_the_fronts_and_the_worker_on_sqlite_too(tmp_path: Any) -> None:
    from app.config import get_settings
    from app.heartbeat_buffer import http_flush, parse_submission

    sent: list[dict[str, Any]] = []

    def send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        sent.append(payload)
        return ""

    with embedded_database(tmp_path) as (engine, token):
        with unit_of_work(engine=engine) as uow:
            person_token = create_token(uow.session, "sqlite-owner", Role.USER)
        local = ContractsAPI(token, engine=engine, sender=send)
        person = ContractsAPI(person_token, engine=engine, sender=send)
        closed, still = (uuid.UUID(str(local.create_contract(n, "simple").id)) for n in ("closed", "open"))
        person.change_status(closed, Status.FAILED, reason="abandoned")
        task, t0 = uuid.uuid4(), utcnow()
        with pytest.raises(ValidationFailed) as refused:
            local.send_heartbeat(closed, task, "working", "plan")
        assert (refused.value.details["field"], refused.value.message) == ("contractId", CLOSED_MESSAGE)

        submission = parse_submission(
            local.caller, [hb(closed, task, "idle", t0), hb(still, task, "idle", t0)]
        )
        http_flush(engine, get_settings(), send)([submission])
        assert [(r.code, r.field, r.message) for r in submission.results] == [
            ("VALIDATION_FAILED", "contractId", CLOSED_MESSAGE),
            (None, None, None),
        ]
        report = heartbeats.ingest(
            message_of({local.caller.principal_id: [hb(closed, uuid.uuid4(), "idle", t0)]}),
            engine=engine,
            sender=send,
        )
        assert [(r.code, r.field) for r in report.refused] == [("VALIDATION_FAILED", "contractId")]
        assert report.stored == 0
        with unit_of_work(engine=engine) as uow:
            assert uow.session.scalar(select(func.count()).select_from(Supervisor)) == 0


def test_a_list_sent_twice_on_sqlite_is_stored_once_through_no_deprecated_sqlalchemy_call(
    tmp_path: Any,
) -> None:
    """The SQLite store finds the ids it already holds by reading them back as plain rows:
    `Result.tuples()`, which it once used, is deprecated since SQLAlchemy 2.1."""
    with embedded_database(tmp_path) as (engine, token):
        local = ContractsAPI(token, engine=engine, sender=lambda *args, **kwargs: "")
        lid = uuid.UUID(str(local.create_contract("twice", "simple").id))
        task, t0 = uuid.uuid4(), utcnow()
        beats = [
            hb(lid, task, state, t0 + timedelta(seconds=s)) for s, state in ((0, "working"), (1, "idle"))
        ]
        message = message_of({local.caller.principal_id: beats})
        with warnings.catch_warnings():
            warnings.simplefilter("error", SADeprecationWarning)
            first = heartbeats.ingest(message, engine=engine)
            again = heartbeats.ingest(message, engine=engine)
        assert (first.stored, first.duplicates, first.state_changes) == (2, 0, 1)
        assert (again.stored, again.duplicates, again.state_changes) == (0, 2, 0)
        with unit_of_work(engine=engine) as uow:
            stored = uow.session.scalar(
                select(func.count())
                .select_from(SupervisorHeartbeat)
                .where(SupervisorHeartbeat.contract_id == lid)
            )
            state = uow.session.scalar(select(Supervisor.state).where(Supervisor.task_id == task))
        assert (stored, state) == (2, "idle")


def test_another_contracts_saved_state_holds_its_task_id_against_heartbeats_at_the_front_and_the_worker(
    tmp_path: Any, make_caller, worker: WorkerProcess
) -> None:
    """A supervisor known from its saved state alone (no heartbeat yet) holds its task id: a
    heartbeat naming it on another contract is refused by the front, and by the worker when it
    slips past, on both dialects; no supervisor row is made for the other contract."""
    from app.config import get_settings
    from app.heartbeat_buffer import http_flush, parse_submission

    token = make_caller(role="supervisor")[0]
    with apis_on_both_dialects(tmp_path, token) as dialects:
        for engine, api in dialects:
            held, here = (uuid.UUID(str(api.create_contract(n, "simple").id)) for n in ("held", "here"))
            task = uuid.uuid4()
            api.save_supervisor_state(held, task, state_version=1, state="working", phase="plan")
            with unit_of_work(engine=engine) as uow:
                assert uow.session.get(Supervisor, task) is None, engine  # known by its saved state only
            t0 = utcnow()
            submission = parse_submission(api.caller, [hb(here, task, "working", t0)])
            http_flush(engine, get_settings(), lambda *a, **k: "")([submission])
            assert [(r.code, r.field) for r in submission.results] == [("VALIDATION_FAILED", "taskId")], (
                engine
            )

            principal = api.caller.principal_id
            report = heartbeats.ingest(
                message_of({principal: [hb(here, task, "working", t0)]}), engine=engine
            )
            assert [(r.code, r.field) for r in report.refused] == [("VALIDATION_FAILED", "taskId")], engine
            with unit_of_work(engine=engine) as uow:
                assert uow.session.get(Supervisor, task) is None, engine

            assert_its_own_contract_starts_it(api, engine, held, task, t0)
