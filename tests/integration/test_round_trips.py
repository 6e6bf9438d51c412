"""Round trips on the hot paths, counted, so a change that adds one fails here loudly.

Counted are the statements the database driver executes (SQLAlchemy's
`before_cursor_execute`); psycopg2's own BEGIN and COMMIT are not among them. Budgets: a
guarded phase change inside a unit of work at most 6, a task-completed message (through the
worker task's own code, in-process) at most 8. The phase change on its own
(`change_phase_now`, what the HTTP front runs) sends its BEGIN and COMMIT itself, with its
two statements, so they are counted: exactly two round trips, the whole transaction.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.exc import OperationalError

from app import contracts
from app.api import ContractsAPI
from app.auth import Role, create_token
from app.db import get_engine, migrate, unit_of_work
from app.domain.errors import ContractNotFound, ValidationFailed, VersionConflict
from app.domain.lifecycle import Status, WaitingFor
from app.domain.phase_change import PhaseChangeRequest
from app.message_outcomes import _ACCEPT_CHECKED_SQL
from app.models import utcnow
from app.outbox import sent_rows
from app.prepared import statement_name

pytestmark = pytest.mark.integration

PHASE_CHANGE_BUDGET = 6
PHASE_CHANGE_ON_ITS_OWN = 2
TASK_COMPLETED_BUDGET = 8
TASK_COMPLETED_PLAIN = 2


def _no_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    return "not-sent"


@contextmanager
def counted_statements() -> Iterator[list[str]]:
    """This thread's statements only: a background flush (retiring outbox rows, heartbeats)
    of an earlier test may run on the same engine meanwhile."""
    statements: list[str] = []
    me = threading.get_ident()

    def count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if threading.get_ident() == me:
            statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


def _short(statements: list[str]) -> list[str]:
    return [s.split("\n", 1)[0][:120] for s in statements]


def _active_contract(caller: Any) -> uuid.UUID:
    api = ContractsAPI(caller=caller, sender=_no_send)
    cid = uuid.UUID(str(api.create_contract("round trips", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    return cid


def test_a_guarded_phase_change_costs_at_most_six_statements(make_caller) -> None:
    _, caller = make_caller()
    cid = _active_contract(caller)
    with unit_of_work(_no_send) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
    with counted_statements() as statements, unit_of_work(_no_send) as uow:
        contracts.change_phase(
            uow, caller, cid, PhaseChangeRequest("execute", expected_version=1), now=utcnow()
        )
    print(f"guarded phase change: {len(statements)} statements", *_short(statements), sep="\n  ")
    assert 0 < len(statements) <= PHASE_CHANGE_BUDGET, statements


def test_a_phase_change_on_its_own_is_two_round_trips_begin_and_commit_included(make_caller) -> None:
    _, caller = make_caller()
    cid = _active_contract(caller)
    with unit_of_work(_no_send) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
    request = PhaseChangeRequest("execute", expected_version=1)
    with counted_statements() as statements:
        row = contracts.change_phase_now(caller, cid, request, now=utcnow(), sender=_no_send)
    print(f"phase change on its own: {len(statements)} statements", *_short(statements), sep="\n  ")
    assert (row.phase, row.version) == ("execute", 2)
    assert len(statements) == PHASE_CHANGE_ON_ITS_OWN, statements
    assert statements[0].startswith("BEGIN;") and statements[-1].endswith("; COMMIT"), statements
    events = ContractsAPI(caller=caller).events(cid).events
    assert [e.type for e in events][-1] == "phase_changed"


def test_a_connection_once_used_in_autocommit_adds_no_round_trip_to_a_phase_change(make_caller) -> None:
    """SQLAlchemy hands a connection back from AUTOCOMMIT with READ COMMITTED set by name, and
    psycopg2 then sends `SET default_transaction_isolation` each time its autocommit switch is
    turned off: a third round trip the statement count above cannot see. Read at the server
    instead: the last statement of the backend that made the change is the change's COMMIT."""
    _, caller = make_caller()
    cid = _active_contract(caller)
    with unit_of_work(_no_send) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
    engine = get_engine()
    # Every pooled connection (and one more) goes through AUTOCOMMIT once, so the change gets one.
    held = [engine.connect() for _ in range(engine.pool.checkedin() + 1)]
    pids = []
    for conn in held:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("SELECT 1"))
        pids.append(conn.connection.dbapi_connection.get_backend_pid())
    for conn in held:
        conn.close()
    # The outbox-retiring thread stopped (the change's follow-up starts it again, a quarter
    # second later): it could otherwise take the change's connection and leave its DELETE last.
    sent_rows(engine).close()
    request = PhaseChangeRequest("execute", expected_version=1)
    row = contracts.change_phase_now(caller, cid, request, now=utcnow(), sender=_no_send)
    assert (row.phase, row.version) == ("execute", 2)
    observer = create_engine(engine.url)
    try:
        with observer.connect() as conn:
            last = conn.execute(
                text("SELECT pid, query FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": pids}
            ).all()
    finally:
        observer.dispose()
    assert not any(q.startswith("SET default_transaction_isolation") for _, q in last), last
    # The change's connection is among them, its last statement the change's write (prepared
    # with it on a connection new to it; the text is cut at track_activity_query_size).
    assert any(
        (q.startswith(("EXECUTE mk_", "PREPARE mk_")) and "COMMIT" in q) or "UPDATE contracts" in q
        for _, q in last
    ), last


def test_the_apis_phase_change_answers_with_one_more_statement_the_same_view_as_a_read(make_caller) -> None:
    """`ContractsAPI.change_phase` (what `POST .../phase` runs) builds its answer, the contract
    with its new phase's progress, from one statement after the change's two round trips
    (`views.contract_view_now`), and that answer is what reading the contract says."""
    from app.models import CompletedDeliverable, ContractTask

    _, caller = make_caller()
    cid = _active_contract(caller)
    api = ContractsAPI(caller=caller, sender=_no_send)
    api.complete_deliverable(cid, "plan-document")
    # Progress already recorded in the phase being entered: a deliverable, tasks in three states.
    with unit_of_work(_no_send) as uow:
        uow.session.add(CompletedDeliverable(contract_id=cid, phase="execute", deliverable_id="pull-request"))
        for status in ("running", "running", "done", "failed"):
            uow.session.add(
                ContractTask(
                    id=uuid.uuid4(), contract_id=cid, name=f"t-{status}", status=status, phase="execute"
                )
            )
    with counted_statements() as statements:
        answer = api.change_phase(cid, "execute", expected_version=1)
    assert len(statements) == PHASE_CHANGE_ON_ITS_OWN + 1, _short(statements)
    assert answer == api.get_contract(cid)
    assert (answer.phase, answer.version) == ("execute", 2)
    assert {(d.id, d.completed) for d in answer.deliverables} == {
        ("pull-request", True),
        ("execution-notes", False),
    }
    assert all((d.completed_at is not None) == d.completed for d in answer.deliverables)
    assert (answer.tasks.total, answer.tasks.running, answer.tasks.done, answer.tasks.failed) == (4, 2, 1, 1)


def test_a_confirmed_phase_change_moves_the_status_with_every_rule_of_a_status_move(make_caller) -> None:
    """Out of waiting_for_input the status moves too: `set_status` makes that move, as everywhere."""
    _, caller = make_caller()
    cid = _active_contract(caller)
    api = ContractsAPI(caller=caller, sender=_no_send)
    api.complete_deliverable(cid, "plan-document")
    api.change_status(cid, Status.WAITING_FOR_INPUT, waiting_for=WaitingFor.PHASE_CONFIRMATION)
    request = PhaseChangeRequest("execute", expected_version=1, confirmed=True)
    row = contracts.change_phase_now(caller, cid, request, now=utcnow(), sender=_no_send)
    assert (row.phase, row.status, row.waiting_for, row.version) == ("execute", "active", None, 2)
    types = [e.type for e in api.events(cid).events]
    assert types[-2:] == ["phase_changed", "status_changed"]
    assert types.count("phase_changed") == 1


def test_without_prepared_statements_the_same_paths_send_plain_text(make_caller) -> None:
    """Behind a transaction-pooling proxy (`database_prepared_statements = false`): no PREPARE."""
    from app.config import get_settings

    settings = get_settings().model_copy(update={"database_prepared_statements": False})
    token, caller = make_caller(role="user")
    cid = _active_contract(caller)
    api = ContractsAPI(token, sender=_no_send, settings=settings)
    api.complete_deliverable(cid, "plan-document")
    with counted_statements() as statements:
        changed = api.change_phase(cid, "execute", expected_version=1)
        api.report_task_completed(cid, uuid.uuid4(), "write tests", success=True)
    assert (changed.phase, changed.version) == ("execute", 2)
    assert not any("PREPARE" in s or "EXECUTE mk_" in s for s in statements), _short(statements)
    assert statements[0].startswith("BEGIN; SELECT 1 FROM contracts"), _short(statements)


def test_a_refused_phase_change_releases_the_row_and_leaves_the_pool_transactional(make_caller) -> None:
    """The Core path opens its transaction itself, so it must close it itself on a refusal."""
    _, caller = make_caller()
    cid = _active_contract(caller)
    stale = PhaseChangeRequest("execute", expected_version=7)
    with counted_statements() as statements, pytest.raises(VersionConflict):
        contracts.change_phase_now(caller, cid, stale, now=utcnow(), sender=_no_send)
    assert statements[-1] == "ROLLBACK", statements
    _, stranger = make_caller()
    with pytest.raises(ContractNotFound):
        contracts.change_phase_now(
            stranger, cid, PhaseChangeRequest("execute"), now=utcnow(), sender=_no_send
        )

    # Nobody holds the row: another connection locks it without waiting.
    other = create_engine(get_engine().url)
    try:
        with other.begin() as conn:
            conn.execute(text("SELECT 1 FROM contracts WHERE id = :id FOR UPDATE NOWAIT"), {"id": cid})
    except OperationalError as exc:  # pragma: no cover - the failure this test exists for
        pytest.fail(f"the refused change left the row locked: {exc}")
    finally:
        other.dispose()
    # Every pooled connection is back to transactions managed by the driver.
    engine = get_engine()
    held = [engine.connect() for _ in range(engine.pool.checkedin())]
    try:
        assert all(c.connection.dbapi_connection.autocommit is False for c in held)
    finally:
        for c in held:
            c.close()


def test_the_guarded_change_on_its_own_keeps_its_rules_on_sqlite(tmp_path) -> None:
    """The embedded default takes the same function: its own lock (BEGIN IMMEDIATE) and statements."""
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    engine = get_engine(url)
    with unit_of_work(engine=engine) as uow:
        token = create_token(uow.session, "sqlite-owner", Role.USER)
    api = ContractsAPI(token, engine=engine, sender=_no_send)
    cid = uuid.UUID(str(api.create_contract("embedded", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    api.complete_deliverable(cid, "plan-document")
    with pytest.raises(VersionConflict):
        api.change_phase(cid, "execute", expected_version=5)
    changed = api.change_phase(cid, "execute", expected_version=1)
    assert (changed.phase, changed.version) == ("execute", 2)
    types = [e.type for e in api.events(cid).events]
    assert types[-1] == "phase_changed" and types.count("phase_changed") == 1
    engine.dispose()


def test_a_report_is_accepted_in_one_statement_with_the_same_refusals(make_caller) -> None:
    """The sender's side of a report: visibility, closed, foreign task and the receipt, one statement."""
    token, caller = make_caller(role="supervisor")
    cid = _active_contract(caller)
    sent: list[dict[str, Any]] = []
    api = ContractsAPI(token, sender=lambda task, payload, countdown=None: sent.append(payload) or "")
    task = uuid.uuid4()
    with counted_statements() as statements:
        message_id = api.report_task_completed(cid, task, "write tests", success=True)
    # Its text on a connection's first use (PREPARE name AS ...), only its name once the
    # connection has prepared it (an earlier test may have used this pooled connection).
    accept = ("message_outcomes", statement_name(_ACCEPT_CHECKED_SQL))
    assert len(statements) == 1 and any(s in statements[0] for s in accept), _short(statements)
    assert api.message_status(message_id).status == "pending" and len(sent) == 1

    # The same report again is the same receipt, sent again; the id for another report is refused.
    assert api.report_task_completed(cid, task, "write tests", success=True, message_id=message_id)
    assert len(sent) == 2
    with pytest.raises(ValidationFailed) as reused:
        api.report_task_completed(cid, task, "other work", success=True, message_id=message_id)
    assert reused.value.details["usedFor"] == "contracts.task_completed"

    # Another owner's contract is a missing one; another owner's task id cannot be used, unnamed.
    _, stranger = make_caller()
    hidden = _active_contract(stranger)
    with pytest.raises(ContractNotFound):
        api.report_task_completed(hidden, uuid.uuid4(), "x", success=True)
    ContractsAPI(caller=stranger, sender=_no_send).report_task_started(hidden, task := uuid.uuid4(), "theirs")
    from workers.contracts import task_started

    task_started.run(
        {
            "messageId": str(uuid.uuid4()),
            "principalId": str(stranger.principal_id),
            "contractId": str(hidden),
            "taskId": str(task),
            "taskName": "theirs",
        }
    )
    with pytest.raises(ValidationFailed, match="cannot be used on this contract"):
        api.report_task_completed(cid, task, "theirs", success=True)
    assert len(sent) == 2  # nothing refused was sent


def _report(caller: Any, cid: uuid.UUID, **fields: Any) -> dict[str, Any]:
    return {
        "messageId": str(uuid.uuid4()),
        "principalId": str(caller.principal_id),
        "contractId": str(cid),
        "taskId": str(uuid.uuid4()),
        "taskName": "write tests",
        "success": True,
        **fields,
    }


def test_a_plain_task_completed_message_is_two_round_trips_begin_and_commit_included(make_caller) -> None:
    """The common case (a first delivery, an open contract, the gate not met) on its Core path."""
    from workers.contracts import task_completed

    _, caller = make_caller(role="supervisor")
    cid = _active_contract(caller)
    task_completed.run(_report(caller, cid))  # warms the principal cache, as a running worker's is
    report = _report(caller, cid)
    with counted_statements() as statements:
        task_completed.run(report)
    print(f"task completed: {len(statements)} statements", *_short(statements), sep="\n  ")
    assert len(statements) == TASK_COMPLETED_PLAIN, _short(statements)
    assert statements[0].startswith("BEGIN; ") and statements[-1].endswith("; COMMIT"), _short(statements)
    api = ContractsAPI(caller=caller)
    last = api.events(cid).events[-1]
    assert (last.type, last.payload["taskId"]) == ("task_completed", report["taskId"])
    outcome = api.message_status(report["messageId"])
    assert (outcome.status, outcome.event_ids) == ("applied", [last.id])


def test_a_repeat_delivery_changes_nothing_and_stays_within_the_budget(make_caller) -> None:
    """A case off the plain path is rolled back and made by the unit of work: still once-only."""
    from workers.contracts import task_completed

    _, caller = make_caller(role="supervisor")
    cid = _active_contract(caller)
    report = _report(caller, cid)
    task_completed.run(report)
    api = ContractsAPI(caller=caller)
    before = [e.id for e in api.events(cid).events]
    with counted_statements() as statements:
        task_completed.run(report)
    print(f"repeat delivery: {len(statements)} statements", *_short(statements), sep="\n  ")
    assert 0 < len(statements) <= TASK_COMPLETED_BUDGET, _short(statements)
    assert [e.id for e in api.events(cid).events] == before


def test_the_report_that_meets_the_gate_begins_completion_on_the_general_path(make_caller) -> None:
    """The last task of the terminal phase: the Core path gives way, the unit of work decides."""
    from app import agent_reports
    from workers.contracts import task_completed

    _, caller = make_caller(role="supervisor")
    cid = _active_contract(caller)
    task = uuid.uuid4()
    with unit_of_work(_no_send) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
        contracts.change_phase(uow, caller, cid, PhaseChangeRequest("execute"), now=utcnow())
    with unit_of_work(_no_send) as uow:
        agent_reports.record_task_started(
            uow, caller, cid, task_id=task, task_name="build", is_supervisor=False, now=utcnow()
        )
        contracts.mark_deliverable(uow, caller, cid, "pull-request", now=utcnow())
    task_completed.run(_report(caller, cid, taskName="warm the principal cache"))
    assert ContractsAPI(caller=caller).get_contract(cid).status == "active"
    with counted_statements() as statements:
        task_completed.run(_report(caller, cid, taskId=str(task), taskName="build"))
    print(f"gate met: {len(statements)} statements", *_short(statements), sep="\n  ")
    assert any(s.startswith("ROLLBACK") for s in statements), _short(statements)
    assert ContractsAPI(caller=caller).get_contract(cid).status == "completing"
    types = [e.type for e in ContractsAPI(caller=caller).events(cid).events]
    tail = types[types.index("task_completed", -3) :]
    assert tail.count("completion_detected") == 1 and types.count("completion_detected") == 1, types
