"""A new task id raced by a task report on one contract and a first heartbeat on another ends
with one holder.

A task id belongs to one contract: as an ordinary task (a `contract_tasks` row, made by a
task report) or as a supervisor (a `supervisors` row, made by its first heartbeat). Each path
refuses an id the other table holds on another contract, but when both name a new id at the
same moment each once saw the other table empty and both wrote: two holders, and the
supervisor refused its own heartbeats from then on. Now the report path and the fold's
first sight of a supervisor take the task id's locks before they look (PostgreSQL,
`app.foreign_tasks`), and SQLite's writers are serial already (BEGIN IMMEDIATE).

Every round starts both operations at a barrier on a fresh task id, the start of one of them
shifted by up to a few milliseconds, differently each round, so the rounds sweep the window;
afterwards exactly one contract holds the id, and the loser was refused the way the product
refuses it when it comes second: the report refused (VALIDATION_FAILED, its receipt
`refused` and the message parked as a dead letter), or the heartbeat refused (`FOREIGN_TASK`,
its daemon told with a `heartbeat_refused` command, nothing stored). What the locks cost is
checked too: which a list's fold and a report hold, and that only taking a new id takes any.

The database is the real PostgreSQL (and SQLite), with the real statements; the worker's tasks
run in this process (`Task.apply`: the same trace, failure handler and dead-lettering a worker
runs) because a race needs both sides started at one barrier, which a broker's delivery delay
would smear. The same refusals through real worker processes are in
`test_task_reports_naming_supervisors.py` and `test_heartbeat_refusals.py`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from unittest.mock import patch

import pytest
from sqlalchemy import Engine, event, select

from app import agent_reports, heartbeat_store_pg, heartbeats
from app.api import ContractsAPI
from app.auth import Role, authenticate, create_token
from app.db import get_engine, migrate, unit_of_work
from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status
from app.foreign_tasks import MOST_TASK_LOCKS, NEW_TASKS_SPACE, TASK_LOCK_SPACE
from app.heartbeat_messages import message_of
from app.heartbeat_outcomes import FOREIGN_TASK, IngestReport
from app.heartbeat_refusals import REFUSED_COMMAND
from app.heartbeat_sql import FOLD, SUP_FIRST
from app.models import (
    ContractEvent,
    ContractTask,
    DaemonCommand,
    DeadLetter,
    Supervisor,
    SupervisorHeartbeat,
    SupervisorStateRow,
    utcnow,
)
from app.prepared import statement_name
from app.queues import TaskName
from tests.integration.helpers import no_send
from workers.contracts import task_completed, task_started

pytestmark = pytest.mark.integration

ROUNDS = 60
CROWD = MOST_TASK_LOCKS + 6
# The start of one side is delayed by up to this (in steps of a tenth of it), alternating
# sides, so the rounds cover the window where both have checked and neither has committed.
SHIFT_SECONDS = 0.004

# What each kind of report sends after the fields every report has.
REPORTS: dict[str, tuple[TaskName, dict[str, Any]]] = {
    "started": (TaskName.TASK_STARTED, {"taskName": "w", "isSupervisor": False}),
    "started as supervisor": (TaskName.TASK_STARTED, {"taskName": "supervisor", "isSupervisor": True}),
    "completed": (TaskName.TASK_COMPLETED, {"taskName": "w", "success": True}),
}


def heartbeat(contract_id: uuid.UUID, task_id: uuid.UUID, daemon_id: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "taskId": str(task_id),
        "contractId": str(contract_id),
        "state": "working",
        "phase": "plan",
        "currentActivity": "racing",
        "progress": 10,
        "timestamp": utcnow().isoformat(),
        "daemonId": daemon_id,
    }


def holders(task_id: uuid.UUID, engine: Engine | None = None) -> set[tuple[str, uuid.UUID]]:
    """Every row that holds `task_id`, as (how, contract)."""
    with unit_of_work(engine=engine) as uow:
        session = uow.session
        found = {
            ("supervisor", c)
            for c in session.scalars(select(Supervisor.contract_id).where(Supervisor.task_id == task_id))
        }
        found |= {
            ("saved state", c)
            for c in session.scalars(
                select(SupervisorStateRow.contract_id).where(SupervisorStateRow.task_id == task_id)
            )
        }
        found |= {
            ("task", c)
            for c in session.scalars(select(ContractTask.contract_id).where(ContractTask.id == task_id))
        }
        return found


def events_naming(contract_id: uuid.UUID, task_id: uuid.UUID, engine: Engine | None = None) -> list[str]:
    with unit_of_work(engine=engine) as uow:
        events = uow.session.scalars(select(ContractEvent).where(ContractEvent.contract_id == contract_id))
        return [e.type for e in events if str(task_id) in str(e.payload)]


def refused_commands(contract_id: uuid.UUID, task_id: uuid.UUID, engine: Engine | None = None) -> int:
    with unit_of_work(engine=engine) as uow:
        commands = uow.session.scalars(
            select(DaemonCommand).where(
                DaemonCommand.contract_id == contract_id, DaemonCommand.command == REFUSED_COMMAND
            )
        )
        return sum(1 for c in commands if c.payload.get("taskId") == str(task_id))


def stored_heartbeats(contract_id: uuid.UUID, task_id: uuid.UUID, engine: Engine | None = None) -> int:
    with unit_of_work(engine=engine) as uow:
        rows = uow.session.scalars(
            select(SupervisorHeartbeat.id).where(
                SupervisorHeartbeat.contract_id == contract_id, SupervisorHeartbeat.task_id == task_id
            )
        )
        return len(rows.all())


def parked(message_id: str) -> DeadLetter | None:
    with unit_of_work() as uow:
        letters = uow.session.scalars(select(DeadLetter).where(DeadLetter.raw_body.contains(message_id)))
        return letters.first()


class Retried(Exception):
    """A report the worker would have retried (its error was transient)."""


def not_retried(*_args: Any, exc: BaseException | None = None, **_kwargs: Any) -> None:
    raise Retried(repr(exc))


@dataclass
class Race:
    """Two operations released together; what each answered or raised."""

    results: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)

    def run(self, shift: float, **operations: Callable[[], Any]) -> None:
        """Run the operations in threads released by one barrier; the first waits `shift`
        seconds after the barrier (a negative shift delays the second instead)."""
        barrier = threading.Barrier(len(operations))
        names = list(operations)

        def side(name: str) -> None:
            delay = shift if name == names[0] else -shift
            try:
                barrier.wait(timeout=30)
                if delay > 0:
                    time.sleep(delay)
                self.results[name] = operations[name]()
            except BaseException as error:  # reported by the test, not lost in the thread
                self.errors[name] = error

        threads = [threading.Thread(target=side, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a side of the race never finished"


def shift_of(round_: int) -> float:
    """-SHIFT .. +SHIFT in tenths, changing every round."""
    step = round_ % 21 - 10
    return SHIFT_SECONDS * step / 10


# -- PostgreSQL: the worker's report against the worker's ingestion ----------------------------


def test_a_report_and_a_first_heartbeat_racing_for_a_new_task_id_leave_one_holder_on_postgresql(
    make_caller: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The reports as the API module accepts them (their receipts pending), captured instead of
    # sent and applied by the worker's tasks in this process: Celery's eager run calls the same
    # failure handler as a worker's, which parks a refused report and marks its receipt.
    sent: list[dict[str, Any]] = []
    token, caller = make_caller(role="supervisor")

    def capture(_task: str, payload: dict[str, Any], _countdown: float | None = None) -> str:
        sent.append(payload)
        return ""

    api = ContractsAPI(token, sender=capture)
    # X's supervisor heartbeats; tasks are reported on Y.
    x, y = (uuid.UUID(str(api.create_contract(name, "simple").id)) for name in ("X", "Y"))
    for cid in (x, y):
        api.change_status(cid, Status.ACTIVE)
    warm = api.report_task_completed(y, uuid.uuid4(), "warm-up", success=True)
    task_completed.apply(args=[sent[-1]])  # the principal is cached: a completion takes its Core path
    assert api.message_status(warm).status == "applied"
    workers = {TaskName.TASK_STARTED: task_started, TaskName.TASK_COMPLETED: task_completed}
    for worker in workers.values():
        # A transient error (a deadlock the locks' order should make impossible, say) would be
        # retried and hidden by the next run: here it fails the report instead.
        monkeypatch.setattr(worker, "retry", not_retried)
    daemon = f"d-{uuid.uuid4().hex[:8]}"
    winners: dict[str, int] = {"heartbeat": 0, "report": 0}

    for round_ in range(ROUNDS):
        kind = list(REPORTS)[round_ % len(REPORTS)]
        name, fields = REPORTS[kind]
        task = uuid.uuid4()
        if name is TaskName.TASK_STARTED:
            message_id = api.report_task_started(
                y, task, fields["taskName"], is_supervisor=fields["isSupervisor"]
            )
        else:
            message_id = api.report_task_completed(y, task, fields["taskName"], success=True)
        payload = sent[-1]
        assert payload["messageId"] == message_id
        # Every other pair of rounds the heartbeat comes in a list of more new supervisors than
        # the fold locks one by one: it takes the new-ids gate alone, exclusive, instead.
        crowd = [heartbeat(x, uuid.uuid4(), daemon) for _ in range(CROWD if round_ // 3 % 2 else 0)]
        beats = [heartbeat(x, task, daemon), *crowd]
        race = Race()
        race.run(
            shift_of(round_),
            report=partial(workers[name].apply, args=[payload]),
            heartbeat=partial(heartbeats.ingest, message_of({caller.principal_id: beats}), sender=no_send),
        )
        where = f"round {round_} ({kind}, {len(beats)} new supervisor(s))"
        assert race.errors == {}, (where, race.errors)
        report_result, ingested = race.results["report"], race.results["heartbeat"]
        assert report_result.state in ("SUCCESS", "FAILURE"), (where, report_result.state)
        assert not isinstance(report_result.result, Retried), (where, report_result.result)
        assert isinstance(ingested, IngestReport)

        held = holders(task)
        assert len(held) == 1, (where, held)
        status = api.message_status(message_id)
        if held == {("supervisor", x)}:
            winners["heartbeat"] += 1
            assert (ingested.stored, ingested.refused) == (len(beats), []), where
            assert report_result.state == "FAILURE" and isinstance(report_result.result, ValidationFailed), (
                where
            )
            assert (status.status, status.error and status.error.code) == ("refused", "VALIDATION_FAILED"), (
                where
            )
            assert status.error is not None and str(task) in status.error.message, where
            letter = parked(message_id)
            assert letter is not None and letter.task_name == name.value, where
            assert events_naming(y, task) == [], where
        else:
            assert held == {("task", y)}, (where, held)
            winners["report"] += 1
            assert report_result.state == "SUCCESS" and status.status == "applied", where
            assert [(r.field, r.problem) for r in ingested.refused] == [("taskId", FOREIGN_TASK)], where
            assert ingested.stored == len(crowd), where
            assert refused_commands(x, task) == 1, where
            assert stored_heartbeats(x, task) == 0, where
            assert events_naming(x, task) == [], where

    print(f"winners over {ROUNDS} rounds: {winners}")


def test_only_new_ids_are_locked_and_a_fleets_first_list_takes_the_gate_not_a_lock_each(
    make_caller: Any,
) -> None:
    """What a list's fold holds when it runs: no lock at all for supervisors that have their row
    (known to this process: not even the first-sight round trip; unknown, after a restart: the
    round trip, no lock), the gate and a lock per new supervisor up to `MOST_TASK_LOCKS`, and
    past that the gate alone (the server's lock table would not hold thousands per list). A
    report's transaction takes the two locks for a task id new to its contract, none for one
    it holds already."""
    token, caller = make_caller(role="supervisor")
    api = ContractsAPI(token, sender=no_send)
    x = uuid.UUID(str(api.create_contract("X", "simple").id))
    api.change_status(x, Status.ACTIVE)
    engine = get_engine()
    seen: list[tuple[str, int]] = []  # (statement, advisory task locks this backend holds)
    me = threading.get_ident()

    def locks_held(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if threading.get_ident() != me:
            return
        probe = conn.connection.dbapi_connection.cursor()
        probe.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
            "AND classid IN (%s, %s)",
            (NEW_TASKS_SPACE, TASK_LOCK_SPACE),
        )
        seen.append((statement, int(probe.fetchone()[0])))
        probe.close()

    def fold_of(items: list[dict[str, Any]]) -> tuple[bool, int]:
        """(whether the list's first sight was sent, task locks held when its fold was sent)."""
        seen.clear()
        event.listen(engine, "before_cursor_execute", locks_held)
        try:
            done = heartbeats.ingest(message_of({caller.principal_id: items}), sender=no_send)
        finally:
            event.remove(engine, "before_cursor_execute", locks_held)
        assert (done.stored, done.refused) == (len(items), [])
        (fold,) = [held for statement, held in seen if statement_name(FOLD) in statement]
        return any(statement_name(SUP_FIRST) in statement for statement, _ in seen), fold

    few = [heartbeat(x, uuid.uuid4(), "d-few") for _ in range(3)]
    many = [heartbeat(x, uuid.uuid4(), "d-many") for _ in range(MOST_TASK_LOCKS + 1)]
    assert fold_of(few) == (True, 1 + len(few))  # the gate (shared) and a lock per new supervisor
    assert fold_of(many) == (True, 1)  # the gate alone (exclusive)
    later = [{**b, "id": str(uuid.uuid4()), "timestamp": utcnow().isoformat()} for b in few + many]
    assert fold_of(later) == (False, 0)  # known: no first sight, no lock
    forgotten = [{**b, "id": str(uuid.uuid4()), "timestamp": utcnow().isoformat()} for b in later]
    with patch.object(heartbeat_store_pg, "_known_tasks", set()):  # a worker just restarted
        assert fold_of(forgotten) == (True, 0)  # they have their rows: no lock

    y = uuid.UUID(str(api.create_contract("Y", "simple").id))
    own = uuid.uuid4()

    def report_locks(task_id: uuid.UUID) -> int:
        with unit_of_work(no_send) as uow:
            agent_reports.record_task_started(
                uow, caller, y, task_id=task_id, task_name="w", is_supervisor=False, now=utcnow()
            )
            connection = uow.session.connection()
            return int(
                connection.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                    f"AND classid IN ({NEW_TASKS_SPACE}, {TASK_LOCK_SPACE})"
                ).scalar_one()
            )

    assert report_locks(own) == 2  # a new id: the gate (shared) and its own lock
    assert report_locks(own) == 0  # Y's already: nobody else can take it


# -- SQLite: BEGIN IMMEDIATE already makes one writer at a time -------------------------------


def test_the_same_race_on_sqlite_leaves_one_holder_too(tmp_path: Any) -> None:
    """The embedded default: both writers take the database's write lock at BEGIN, so the
    second reads what the first committed and is refused by the ordinary check."""
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    engine = get_engine(url)
    try:
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "sqlite-owner", Role.SUPERVISOR)
        with unit_of_work(engine=engine) as uow:
            caller = authenticate(uow.session, token)
        api = ContractsAPI(token, engine=engine, sender=no_send)
        x, y = (uuid.UUID(str(api.create_contract(name, "simple").id)) for name in ("X", "Y"))
        for cid in (x, y):
            api.change_status(cid, Status.ACTIVE)
        winners: dict[str, int] = {"heartbeat": 0, "report": 0}

        def report(kind: str, task: uuid.UUID) -> None:
            with unit_of_work(no_send, engine=engine) as uow:
                if kind == "completed":
                    agent_reports.record_task_completed(
                        uow, caller, y, task_id=task, task_name="w", success=True,
                        message_id=str(uuid.uuid4()), now=utcnow(),
                    )  # fmt: skip
                else:
                    agent_reports.record_task_started(
                        uow, caller, y, task_id=task, task_name="w", is_supervisor=kind != "started",
                        message_id=str(uuid.uuid4()), now=utcnow(),
                    )  # fmt: skip

        for round_ in range(ROUNDS // 3):
            kind = list(REPORTS)[round_ % len(REPORTS)]
            task = uuid.uuid4()
            beat = heartbeat(x, task, "d-embedded")
            race = Race()
            race.run(
                shift_of(round_ * 3),
                report=partial(report, kind, task),
                heartbeat=partial(
                    heartbeats.ingest,
                    message_of({caller.principal_id: [beat]}),
                    engine=engine,
                    sender=no_send,
                ),
            )
            where = f"round {round_} ({kind})"
            ingested = race.results.get("heartbeat")
            assert isinstance(ingested, IngestReport), (where, race.errors)
            held = holders(task, engine)
            assert len(held) == 1, (where, held)
            if held == {("supervisor", x)}:
                winners["heartbeat"] += 1
                assert ingested.refused == [], where
                refused = race.errors.get("report")
                assert isinstance(refused, ValidationFailed), (where, race.errors)
                assert (refused.details["field"], refused.details["taskId"]) == ("taskId", str(task)), where
                assert events_naming(y, task, engine) == [], where
            else:
                assert held == {("task", y)}, (where, held)
                winners["report"] += 1
                assert race.errors == {}, (where, race.errors)
                assert [(r.field, r.problem) for r in ingested.refused] == [("taskId", FOREIGN_TASK)], where
                assert refused_commands(x, task, engine) == 1, where
                assert stored_heartbeats(x, task, engine) == 0, where
        print(f"winners over {ROUNDS // 3} rounds: {winners}")
    finally:
        engine.dispose()
