"""Batch operations and the maintenance sweeps, end to end with real `celery worker` processes.

Batches and sweeps act on every contract of a database, so this module runs on a database and
Redis key prefix of its own (and empties its tables before each test): nothing another test
left behind is archived, paused or deleted, and nothing here leaks into another test. The
workers get shortened thresholds through configuration (environment variables), as an
operator would set them, among them a chunk of `CHUNK` contracts, so that even these small
batches run in several chunk transactions.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from app import batch_runner, contracts
from app.api import ContractsAPI
from app.auth import Caller, Role, create_token
from app.broker import build_celery
from app.config import Settings
from app.db import get_engine, migrate, unit_of_work
from app.domain.errors import ContractError
from app.domain.lifecycle import Status
from app.http import create_app
from app.models import BatchItem, Contract, ContractEvent, DeletionAudit, StaleEpisode, utcnow
from app.queues import TaskName, queue_for
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for
from tests.isolation import Isolation

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BATCH = "/api/v1/contracts/batch"
RUN = Isolation("makima_batch")
# Thresholds shortened by configuration, in the workers' environment.
STALE_SECONDS = 2.0
INPUT_TIMEOUT_SECONDS = 2.0
RETENTION_SECONDS = 2.0
CHUNK = 16
WORKER_ENV = {
    "MAKIMA_BATCH__CHUNK_SIZE": str(CHUNK),
    **RUN.environment(),
    "MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES": str(STALE_SECONDS / 60),
    "MAKIMA_CONTRACTS__INPUT_TIMEOUT_HOURS": str(INPUT_TIMEOUT_SECONDS / 3600),
    "MAKIMA_CONTRACTS__ARCHIVE_RETENTION_DAYS": str(RETENTION_SECONDS / 86400),
    "MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES": "0.02",
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    RUN.create_database()
    try:
        yield get_engine(RUN.db_url)
    finally:
        RUN.drop_database()
        RUN.purge_keys()
        RUN.remove_metrics()


@pytest.fixture(scope="module")
def sender(engine: Engine) -> Any:
    celery = build_celery(Settings(database_url=RUN.db_url, broker_key_prefix=RUN.key_prefix))

    def send(task: str, payload: dict[str, Any] | None, countdown: float | None = None) -> str:
        """A task message as the service sends it; `payload=None` for a sweep (beat sends no args)."""
        task_id = str(uuid.uuid4())
        args = [] if payload is None else [payload]
        celery.send_task(task, args=args, task_id=task_id, queue=queue_for(task).value, countdown=countdown)
        return task_id

    return send


@pytest.fixture(scope="module")
def worker(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("batch-workers"),
        queues="batch,contracts,sweeps",
        concurrency=2,
        extra_env=WORKER_ENV,
    )
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(engine: Engine, sender: Any) -> Iterator[TestClient]:
    with TestClient(create_app(engine=engine, sender=sender)) as c:
        yield c


@pytest.fixture(autouse=True)
def empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE contracts, batch_operations, deletion_audit, task_outbox CASCADE"))


def token(engine: Engine, role: str = "admin", owner: str = "operators") -> dict[str, str]:
    with unit_of_work(engine=engine) as uow:
        secret = create_token(uow.session, f"{owner}-{uuid.uuid4().hex[:6]}", Role(role))
    return {"Authorization": f"Bearer {secret}"}


def make(engine: Engine, n: int, status: Status, *, ago: timedelta = timedelta(days=10)) -> list[uuid.UUID]:
    """`n` contracts in `status`, last changed and last active `ago` (rows written in bulk)."""
    ids = sorted(uuid.uuid4() for _ in range(n))
    at = utcnow() - ago
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contracts (id, owner_id, name, contract_type, phase, status, version,"
                " phase_guard, auto_complete_enabled, status_changed_at, last_activity_at, created_at,"
                " updated_at) SELECT u, 'team', 'c-' || u::text, 'simple', 'plan', :status, 1, false, true,"
                " :at, :at, :at, :at"
                " FROM unnest(CAST(:ids AS uuid[])) AS u"
            ),
            {"ids": [str(i) for i in ids], "status": status.value, "at": at},
        )
    return ids


def statuses(engine: Engine, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Contract.id, Contract.status).where(Contract.id.in_(ids)))
        return {cid: status for cid, status in rows}


def events_of(engine: Engine, type_: str) -> dict[uuid.UUID, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ContractEvent.contract_id, func.count())
            .where(ContractEvent.type == type_)
            .group_by(ContractEvent.contract_id)
        )
        return {cid: int(n) for cid, n in rows}


def transactions_of(engine: Engine, type_: str) -> list[int]:
    """How many `type_` events each transaction wrote (an event carries its transaction's id)."""
    with engine.connect() as conn:
        return sorted(
            int(n)
            for n in conn.scalars(
                text("SELECT count(*) FROM contract_events WHERE type = :type GROUP BY xid"), {"type": type_}
            )
        )


def recorded(engine: Engine) -> int:
    """Contracts a batch has a record of: those its chunks acted on, and one item each for the rest."""
    with engine.connect() as conn:
        chunked = conn.scalar(text("SELECT coalesce(sum(cardinality(affected_ids)), 0) FROM batch_chunks"))
        items = conn.scalar(select(func.count()).select_from(BatchItem))
    return int(chunked) + int(items or 0)


def finished(
    client: TestClient, headers: dict[str, str], batch_id: str, timeout: float = 60
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"{BATCH}/{batch_id}", headers=headers).json()
        return body if body["status"] == "completed" else None

    result: dict[str, Any] = wait_for(done, timeout=timeout, interval=0.2, what=f"batch {batch_id}")
    return result


def run(client: TestClient, headers: dict[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """A dry run, then the real run; both must name the same contracts."""
    dry = client.post(BATCH, json={**body, "dryRun": True}, headers=headers)
    assert dry.status_code == 200, dry.text
    accepted = client.post(BATCH, json=body, headers=headers)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "pending" and accepted.json()["affectedIds"] is None
    result = finished(client, headers, accepted.json()["batchId"])
    assert sorted(dry.json()["affectedIds"]) == sorted(result["affectedIds"])
    assert dry.json()["errors"] == result["errors"]
    return result


# --- each operation and its dry run ----------------------------------------------------------


def test_archive_old_archives_old_completed_and_failed_contracts_once(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    old = make(engine, 30, Status.COMPLETED) + make(engine, 10, Status.FAILED)
    young = make(engine, 5, Status.COMPLETED, ago=timedelta(minutes=5))
    result = run(client, admin, {"operation": "archive_old", "olderThanHours": 24})
    assert result["operation"] == "archive_old"
    assert result["affectedCount"] == 40 and sorted(result["affectedIds"]) == sorted(str(i) for i in old)
    assert result["errors"] == [] and result["progress"] == {"done": 40, "total": 40}
    assert set(statuses(engine, old).values()) == {"archived"}
    assert set(statuses(engine, young).values()) == {"completed"}
    changed = events_of(engine, "status_changed")
    assert {cid: changed.get(cid) for cid in old} == dict.fromkeys(old, 1)
    # Bounded chunks: 40 contracts in transactions of at most CHUNK (16, 16, 8), none longer.
    assert transactions_of(engine, "status_changed") == [8, CHUNK, CHUNK]
    with engine.connect() as conn:
        row = conn.execute(select(Contract).where(Contract.id == old[0])).one()
        payload = conn.scalar(select(ContractEvent.payload).where(ContractEvent.contract_id == old[0]))
    # The same columns and event the guarded change_status writes for this move.
    assert row.status_changed_at == row.last_activity_at == row.updated_at
    assert row.waiting_for is None and row.blocked_reason is None
    assert set(payload) == {"contractId", "oldStatus", "newStatus", "reason"}
    assert (payload["oldStatus"], payload["newStatus"]) == ("completed", "archived")


def test_pause_all_then_resume_all(client: TestClient, engine: Engine, worker: WorkerProcess) -> None:
    admin = token(engine)
    active = make(engine, 25, Status.ACTIVE, ago=timedelta(0))
    waiting = make(engine, 3, Status.WAITING_FOR_INPUT, ago=timedelta(0))
    paused = run(client, admin, {"operation": "pause_all", "reason": "maintenance window"})
    assert sorted(paused["affectedIds"]) == sorted(str(i) for i in active)
    assert set(statuses(engine, active).values()) == {"paused"}
    assert set(statuses(engine, waiting).values()) == {"waiting_for_input"}
    with engine.connect() as conn:
        reasons = set(
            conn.scalars(
                select(ContractEvent.payload["reason"].as_string()).where(
                    ContractEvent.type == "status_changed"
                )
            )
        )
    assert reasons == {"maintenance window"}
    resumed = run(client, admin, {"operation": "resume_all"})
    assert sorted(resumed["affectedIds"]) == sorted(str(i) for i in active)
    assert set(statuses(engine, active).values()) == {"active"}
    assert events_of(engine, "status_changed") == dict.fromkeys(active, 2)


def test_resume_all_leaves_a_contract_with_an_open_question_waiting_for_its_answer(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    quiet, asking = make(engine, 4, Status.PAUSED, ago=timedelta(0)), make(engine, 2, Status.PAUSED)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO supervisor_questions (id, contract_id, question, question_type, options,"
                " status, asked_by, asked_at) SELECT gen_random_uuid(), u, 'Which region?', 'free_text',"
                " '[]', 'open', 'team-supervisor', now() FROM unnest(CAST(:ids AS uuid[])) AS u"
            ),
            {"ids": [str(i) for i in asking]},
        )
    resumed = run(client, admin, {"operation": "resume_all"})
    assert sorted(resumed["affectedIds"]) == sorted(str(i) for i in quiet + asking)
    assert set(statuses(engine, quiet).values()) == {"active"}
    assert set(statuses(engine, asking).values()) == {"waiting_for_input"}
    with engine.connect() as conn:
        waiting_for = set(conn.scalars(select(Contract.waiting_for).where(Contract.id.in_(asking))))
    assert waiting_for == {"question"}


def test_cleanup_archived_deletes_and_audits_each_contract(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    old = make(engine, 12, Status.ARCHIVED)
    recent = make(engine, 2, Status.ARCHIVED, ago=timedelta(hours=1))
    result = run(client, admin, {"operation": "cleanup_archived", "olderThanHours": 24})
    assert sorted(result["affectedIds"]) == sorted(str(i) for i in old)
    assert statuses(engine, old) == {} and set(statuses(engine, recent)) == set(recent)
    audit = client.get("/api/v1/audit/deletions", params={"batchId": result["batchId"]}, headers=admin).json()
    assert sorted(d["contractId"] for d in audit["deletions"]) == sorted(str(i) for i in old)
    entry = audit["deletions"][0]
    assert entry["contractName"].startswith("c-") and entry["batchId"] == result["batchId"]
    assert entry["deletedBy"] == result["requestedBy"] and entry["sweep"] is None


def test_restart_stale_asks_for_a_restart_of_each_stale_contract(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    stale = make(engine, 4, Status.ACTIVE, ago=timedelta(hours=2))
    fresh = make(engine, 2, Status.ACTIVE, ago=timedelta(minutes=1))
    result = run(client, admin, {"operation": "restart_stale", "staleThresholdMinutes": 30})
    assert sorted(result["affectedIds"]) == sorted(str(i) for i in stale)
    assert events_of(engine, "supervisor_restart_requested") == dict.fromkeys(stale, 1)
    with engine.connect() as conn:
        commands = conn.execute(text("SELECT contract_id, command FROM daemon_commands")).all()
    assert sorted(cid for cid, _ in commands) == sorted(stale) and {c for _, c in commands} == {
        "restart_supervisor"
    }
    assert set(statuses(engine, fresh).values()) == {"active"}


def test_each_contract_is_judged_and_moved_as_the_guarded_change_status_would(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    """archive_old over a contract in every status: the batch refuses exactly the moves
    `change_status` refuses, with the same code, and writes what it writes for the others."""
    admin = token(engine)
    batched = {status: make(engine, 1, status)[0] for status in Status}
    twins = {
        status: make(engine, 1, status, ago=timedelta(minutes=5))[0] for status in Status
    }  # not selected
    result = run(
        client,
        admin,
        {"operation": "archive_old", "olderThanHours": 1, "statusFilter": [s.value for s in Status]},
    )
    reason = f"batch archive_old ({result['batchId']})"
    guarded: dict[Status, str] = {}
    for status, cid in twins.items():
        try:
            with unit_of_work(engine=engine) as uow:
                caller = Caller(uuid.uuid4(), "operators", Role.ADMIN)
                contracts.change_status(uow, caller, cid, Status.ARCHIVED, reason=reason, now=utcnow())
            guarded[status] = "moved"
        except ContractError as exc:
            guarded[status] = exc.code
    errors = {e["contractId"]: e["code"] for e in result["errors"]}
    assert {s: errors.get(str(cid), "moved") for s, cid in batched.items()} == guarded
    assert sorted(result["affectedIds"]) == sorted(
        str(batched[s]) for s, g in guarded.items() if g == "moved"
    )
    assert set(guarded.values()) == {"moved", "INVALID_TRANSITION"}  # both verdicts met

    def written(cid: uuid.UUID) -> tuple[dict[str, Any], dict[str, Any]]:
        with engine.connect() as conn:
            row = conn.execute(select(Contract).where(Contract.id == cid)).one()
            payload = conn.scalar(select(ContractEvent.payload).where(ContractEvent.contract_id == cid))
        assert row.status_changed_at == row.last_activity_at == row.updated_at
        columns = ("status", "waiting_for", "blocked_reason", "failure_reason", "completion_detected_at")
        return {c: getattr(row, c) for c in columns}, {k: v for k, v in payload.items() if k != "contractId"}

    for status in (s for s, g in guarded.items() if g == "moved"):
        assert written(batched[status]) == written(twins[status])


def test_on_the_embedded_sqlite_a_batch_runs_chunk_by_chunk_through_the_guarded_code(tmp_path: Path) -> None:
    """The embedded default has no bulk statements: each contract goes through `change_status`,
    and the chunks, their record and the refusals are the same."""
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    lite = get_engine(url)
    at = utcnow() - timedelta(days=10)
    done, refused = sorted(uuid.uuid4() for _ in range(7)), uuid.uuid4()
    with lite.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contracts (id, owner_id, name, contract_type, phase, status, version,"
                " phase_guard, auto_complete_enabled, status_changed_at, last_activity_at, created_at,"
                " updated_at)"
                " VALUES (:id, 'team', 'c', 'simple', 'plan', :status, 1, 0, 1, :at, :at, :at, :at)"
            ),
            [{"id": cid.hex, "status": "completed", "at": at} for cid in done]
            + [{"id": refused.hex, "status": "active", "at": at}],
        )
    with unit_of_work(engine=lite) as uow:
        admin = create_token(uow.session, "operators", Role.ADMIN)
    api = ContractsAPI(admin, engine=lite, sender=lambda task, payload, countdown=None: "")
    view, _ = api.start_batch("archive_old", {"olderThanHours": 1, "statusFilter": ["completed", "active"]})
    runner = batch_runner.Runner(engine=lite, chunk=3)
    while not batch_runner.run_batch(runner, view.batch_id, slice_seconds=60):
        pass
    result = api.batch_status(view.batch_id)
    lite.dispose()
    assert result is not None and result.progress.done == result.progress.total == 8
    assert result.affected_ids == done
    assert [(e.contract_id, e.code) for e in result.errors or []] == [(refused, "INVALID_TRANSITION")]
    assert len(runner.transactions) == 4  # chunks of 3, 3 and 2, then the one that finds nothing left


# --- failures, kills, roles, idempotency -----------------------------------------------------


def test_a_contract_that_fails_midway_is_reported_and_the_others_proceed(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    ids = make(engine, 50, Status.COMPLETED)
    refused = make(engine, 1, Status.ACTIVE)  # selected by the filter, refused by the status table
    broken = ids[20]  # the database refuses to update this one
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN"
                f" IF NEW.id = '{broken}' THEN RAISE EXCEPTION 'disk says no for %', NEW.id; END IF;"
                " RETURN NEW; END $$ LANGUAGE plpgsql;"
                " CREATE TRIGGER refuse_one BEFORE UPDATE ON contracts"
                " FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )
        )
    try:
        accepted = client.post(
            BATCH,
            json={"operation": "archive_old", "olderThanHours": 1, "statusFilter": ["completed", "active"]},
            headers=admin,
        )
        result = finished(client, admin, accepted.json()["batchId"])
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_one ON contracts; DROP FUNCTION refuse_one()"))
    errors = {e["contractId"]: e for e in result["errors"]}
    assert set(errors) == {str(broken), str(refused[0])}
    assert errors[str(broken)]["code"] == "INTERNAL_ERROR" and "disk says no" in errors[str(broken)]["error"]
    assert errors[str(refused[0])]["code"] == "INVALID_TRANSITION"
    assert result["affectedCount"] == 49 and str(broken) not in result["affectedIds"]
    archived = statuses(engine, ids)
    assert archived.pop(broken) == "completed" and set(archived.values()) == {"archived"}


@pytest.mark.parametrize("role", ["user", "supervisor"])
def test_only_an_admin_may_run_or_read_batches_and_the_audit(
    client: TestClient, engine: Engine, role: str
) -> None:
    headers = token(engine, role, owner="team")
    body = {"operation": "resume_all"}
    for resp in (
        client.post(BATCH, json=body, headers=headers),
        client.get(BATCH, headers=headers),
        client.get(f"{BATCH}/{uuid.uuid4()}", headers=headers),
        client.get("/api/v1/audit/deletions", headers=headers),
    ):
        assert resp.status_code == 403, resp.text
        error = resp.json()["error"]
        assert error["code"] == "FORBIDDEN" and error["details"] == {"role": role, "allowedRoles": ["admin"]}
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM batch_operations")) == 0
    admin = token(engine)
    assert client.get(BATCH, headers=admin).status_code == 200
    unknown = uuid.uuid4()
    error = client.get(f"{BATCH}/{unknown}", headers=admin).json()["error"]
    assert error["code"] == "NOT_FOUND" and error["details"] == {"batchId": str(unknown)}
    assert f"No batch operation {unknown}" in error["message"]


def test_the_same_idempotency_key_returns_the_same_batch(
    client: TestClient, engine: Engine, worker: WorkerProcess
) -> None:
    admin = token(engine)
    make(engine, 3, Status.PAUSED)
    body = {"operation": "resume_all"}
    key = {"Idempotency-Key": f"resume-{uuid.uuid4()}"}
    first = client.post(BATCH, json=body, headers={**admin, **key})
    again = client.post(BATCH, json=body, headers={**admin, **key})
    assert first.status_code == again.status_code == 202
    assert first.json()["batchId"] == again.json()["batchId"]
    assert again.headers["Idempotent-Replayed"] == "true"
    other = client.post(BATCH, json={"operation": "pause_all", "reason": "x"}, headers={**admin, **key})
    assert other.status_code == 400 and other.json()["error"]["code"] == "VALIDATION_FAILED"
    finished(client, admin, first.json()["batchId"])
    listed = client.get(BATCH, headers=admin).json()["batches"]
    assert [b["batchId"] for b in listed] == [first.json()["batchId"]]
    with engine.connect() as conn:
        counted = conn.scalar(text("SELECT value FROM metric_counters WHERE label = 'resume_all'"))
    assert counted is not None and counted >= 1


# --- sweeps: twice in a row, twice at once, events once ---------------------------------------


def _ran(worker: WorkerProcess, task: TaskName) -> int:
    return sum(
        1 for line in worker.log().splitlines() if f"Task {task.value}[" in line and " succeeded " in line
    )


def sweep_twice_at_once_then_twice_more(sender: Any, task: TaskName, worker: WorkerProcess) -> None:
    """Two runs at once (the worker has two processes), then two in a row."""
    before = _ran(worker, task)
    sender(task, None)
    sender(task, None)
    wait_for(lambda: _ran(worker, task) >= before + 2, what=f"{task} twice at once")
    for n in (3, 4):
        sender(task, None)
        wait_for(lambda n=n: _ran(worker, task) >= before + n, what=f"{task} again")


def test_stale_sweep_records_one_detection_per_episode_and_clears_it(
    engine: Engine, sender: Any, worker: WorkerProcess
) -> None:
    stale = make(engine, 5, Status.ACTIVE, ago=timedelta(minutes=5))
    fresh = make(engine, 2, Status.ACTIVE, ago=timedelta(0))
    sweep_twice_at_once_then_twice_more(sender, TaskName.DETECT_STALE, worker)
    assert events_of(engine, "stale_detected") == dict.fromkeys(stale, 1)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(StaleEpisode)) == 5
    with engine.begin() as conn:  # activity returns for one of them
        conn.execute(text("UPDATE contracts SET last_activity_at = now() WHERE id = :id"), {"id": stale[0]})
    sweep_twice_at_once_then_twice_more(sender, TaskName.DETECT_STALE, worker)
    assert events_of(engine, "stale_cleared") == {stale[0]: 1}
    assert events_of(engine, "stale_detected") == dict.fromkeys(stale, 1)
    time.sleep(STALE_SECONDS + 0.5)  # the fresh ones and the revived one fall silent: new episodes
    sweep_twice_at_once_then_twice_more(sender, TaskName.DETECT_STALE, worker)
    assert events_of(engine, "stale_detected") == {
        **dict.fromkeys(stale, 1),
        **dict.fromkeys(fresh, 1),
        stale[0]: 2,
    }


def test_input_timeout_pauses_a_waiting_contract_once(
    engine: Engine, sender: Any, worker: WorkerProcess
) -> None:
    waiting = make(engine, 3, Status.WAITING_FOR_INPUT, ago=timedelta(0))
    sender(TaskName.PAUSE_TIMED_OUT_INPUTS, None)
    time.sleep(0.5)
    assert set(statuses(engine, waiting).values()) == {"waiting_for_input"}  # not yet: 2 s configured
    time.sleep(INPUT_TIMEOUT_SECONDS)
    sweep_twice_at_once_then_twice_more(sender, TaskName.PAUSE_TIMED_OUT_INPUTS, worker)
    assert set(statuses(engine, waiting).values()) == {"paused"}
    assert events_of(engine, "status_changed") == dict.fromkeys(waiting, 1)
    with engine.connect() as conn:
        reasons = set(conn.scalars(select(ContractEvent.payload["reason"].as_string())))
    assert reasons == {"input timeout: no answer within 0.000555556 h"}


def test_completion_finalisation_sweep_completes_each_due_contract_once(
    engine: Engine, sender: Any, worker: WorkerProcess
) -> None:
    due = make(engine, 3, Status.COMPLETING, ago=timedelta(seconds=5))
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE contracts SET phase = 'execute', completion_detected_at = status_changed_at")
        )
    sweep_twice_at_once_then_twice_more(sender, TaskName.FINALIZE_DUE_COMPLETIONS, worker)
    assert set(statuses(engine, due).values()) == {"completed"}
    assert events_of(engine, "completion_cleanup") == dict.fromkeys(due, 1)


def test_retention_deletes_expired_archives_once_each_audited(
    engine: Engine, sender: Any, worker: WorkerProcess
) -> None:
    expired = make(engine, 4, Status.ARCHIVED, ago=timedelta(seconds=RETENTION_SECONDS + 1))
    kept = make(engine, 2, Status.COMPLETED, ago=timedelta(days=400))
    sweep_twice_at_once_then_twice_more(sender, TaskName.DELETE_EXPIRED_ARCHIVES, worker)
    assert statuses(engine, expired) == {} and set(statuses(engine, kept)) == set(kept)
    with engine.connect() as conn:
        audited = conn.execute(select(DeletionAudit.contract_id, DeletionAudit.sweep)).all()
    assert sorted(cid for cid, _ in audited) == sorted(expired)
    assert {sweep for _, sweep in audited} == {"archive_retention"}


# --- last: these stop the module's worker -------------------------------------------------------


def test_chunk_size_one_runs_each_contract_in_a_transaction_of_its_own(
    client: TestClient, engine: Engine, tmp_path: Path, worker: WorkerProcess
) -> None:
    """`[batch] chunk_size = 1`: one transaction per contract, and a failure is still one contract's."""
    admin = token(engine)
    ids = make(engine, 6, Status.COMPLETED)
    refused = make(engine, 1, Status.ACTIVE)
    broken = ids[2]
    worker.stop()  # only the worker under test consumes the batch queue
    lone = start_worker(tmp_path, queues="batch", extra_env={**WORKER_ENV, "MAKIMA_BATCH__CHUNK_SIZE": "1"})
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION refuse_one() RETURNS trigger AS $$ BEGIN"
                f" IF NEW.id = '{broken}' THEN RAISE EXCEPTION 'disk says no for %', NEW.id; END IF;"
                " RETURN NEW; END $$ LANGUAGE plpgsql;"
                " CREATE TRIGGER refuse_one BEFORE UPDATE ON contracts"
                " FOR EACH ROW EXECUTE FUNCTION refuse_one()"
            )
        )
    try:
        lone.wait_ready()
        accepted = client.post(
            BATCH,
            json={"operation": "archive_old", "olderThanHours": 1, "statusFilter": ["completed", "active"]},
            headers=admin,
        )
        result = finished(client, admin, accepted.json()["batchId"])
    finally:
        lone.stop()
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_one ON contracts; DROP FUNCTION refuse_one()"))
    moved = [cid for cid in ids if cid != broken]
    assert sorted(result["affectedIds"]) == sorted(str(i) for i in moved)
    assert {e["contractId"]: e["code"] for e in result["errors"]} == {
        str(broken): "INTERNAL_ERROR",
        str(refused[0]): "INVALID_TRANSITION",
    }
    assert transactions_of(engine, "status_changed") == [1] * len(moved)
    with engine.connect() as conn:
        chunks = conn.scalars(text("SELECT cardinality(affected_ids) FROM batch_chunks")).all()
    assert chunks == [1] * len(moved)
    assert recorded(engine) == len(ids) + 1


def test_a_worker_killed_mid_batch_leaves_a_batch_that_completes_acting_on_each_contract_once(
    client: TestClient, engine: Engine, sender: Any, tmp_path: Path, worker: WorkerProcess
) -> None:
    admin = token(engine)
    ids = make(engine, 4000, Status.COMPLETED)
    worker.stop()  # only the worker under test consumes the batch queue
    env = {**WORKER_ENV, "MAKIMA_BATCH__CHUNK_SIZE": "1000"}
    # Each updated row takes a millisecond, so a chunk of 1000 takes about a second.
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION slow_down() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(0.001);"
                " RETURN NEW; END $$ LANGUAGE plpgsql;"
                " CREATE TRIGGER slow_down BEFORE UPDATE ON contracts"
                " FOR EACH ROW EXECUTE FUNCTION slow_down()"
            )
        )
    victim = start_worker(tmp_path, queues="batch", extra_env=env)
    rescuer: WorkerProcess | None = None
    try:
        victim.wait_ready()
        batch_id = client.post(
            BATCH, json={"operation": "archive_old", "olderThanHours": 1}, headers=admin
        ).json()["batchId"]

        def progress() -> int:
            done: int = client.get(f"{BATCH}/{batch_id}", headers=admin).json()["progress"]["done"]
            return done

        wait_for(lambda: progress() >= 1000, timeout=60, what="the first chunk committed")
        time.sleep(0.3)  # into the next chunk
        victim.kill()
        assert progress() < len(ids), "the batch finished before the kill"
        rescuer = start_worker(tmp_path, queues="batch,sweeps", extra_env=env)
        rescuer.wait_ready()
        sender(TaskName.RESUME_STALLED_BATCHES, None)  # what beat sends; redelivery also resumes it
        result = finished(client, admin, batch_id, timeout=120)
    finally:
        victim.kill()
        if rescuer is not None:
            rescuer.stop()
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER slow_down ON contracts; DROP FUNCTION slow_down()"))
    assert result["affectedCount"] == len(ids) and result["errors"] == []
    assert len(set(result["affectedIds"])) == len(ids)
    assert events_of(engine, "status_changed") == dict.fromkeys(ids, 1)
    assert recorded(engine) == len(ids)
