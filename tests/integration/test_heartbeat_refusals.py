"""A daemon whose heartbeats the worker refused for another contract's task id is told.

Two first heartbeats naming one new task id on two contracts, judged by two groups of the
fronts before either is stored, both pass and are answered 202; the worker stores the first
and refuses the other. Its daemon reads a `heartbeat_refused` command on its own queue, once
however often the list is delivered, and the winner's supervisor is left as it was. The race
is made deterministic by capturing what the HTTP front sends (`http_flush`) and delivering it
to a real worker in order; the rules are also checked on both dialects in-process.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select

from app import heartbeats
from app.api import ContractsAPI
from app.auth import Role, create_token
from app.broker import send_task
from app.config import get_settings
from app.db import get_engine, migrate, unit_of_work
from app.heartbeat_buffer import http_flush, parse_submission
from app.heartbeat_messages import message_of
from app.heartbeat_refusals import REFUSED_COMMAND
from app.heartbeat_store import STATE_CHANGED
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
from tests.integration.helpers import commands_received
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("hb-refused"), queues="heartbeats,contracts", concurrency=2)
    proc.wait_ready()
    yield proc
    proc.stop()


def hb(cid: uuid.UUID, task: uuid.UUID, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "taskId": str(task),
        "contractId": str(cid),
        "state": "working",
        "phase": "plan",
        "currentActivity": "planning",
        "progress": 10,
        "timestamp": at.isoformat(),
        **extra,
    }


def refused_commands(contract_id: uuid.UUID, engine: Engine | None = None) -> list[DaemonCommand]:
    with unit_of_work(engine=engine) as uow:
        return list(
            uow.session.scalars(
                select(DaemonCommand).where(
                    DaemonCommand.contract_id == contract_id, DaemonCommand.command == REFUSED_COMMAND
                )
            )
        )


def supervisor_row(task: uuid.UUID, engine: Engine | None = None) -> dict[str, Any] | None:
    """Every column of a supervisor's row, to show it did not move."""
    with unit_of_work(engine=engine) as uow:
        row = uow.session.get(Supervisor, task)
        return None if row is None else {c.key: getattr(row, c.key) for c in Supervisor.__table__.columns}


def refused_lists_naming(contract_id: uuid.UUID) -> int:
    """Ingestions of heartbeat lists holding a refusal on this contract: each parks its refused
    heartbeats as a dead letter (the same ones again count one more attempt of it)."""
    with unit_of_work() as uow:
        letters = uow.session.execute(
            select(DeadLetter.raw_body, DeadLetter.attempts).where(
                DeadLetter.task_name == TaskName.INGEST_HEARTBEATS.value
            )
        )
        return sum(attempts for body, attempts in letters if str(contract_id) in body)


def test_the_losing_daemon_of_a_race_past_the_fronts_is_told_once_even_when_its_list_comes_twice(
    worker: WorkerProcess, make_caller
) -> None:
    token, me = make_caller(role="supervisor")
    api = ContractsAPI(token)
    won, lost = (uuid.UUID(str(api.create_contract(n, "simple").id)) for n in ("won", "lost"))
    task, t0 = uuid.uuid4(), utcnow()
    winner, loser = f"d-win-{uuid.uuid4().hex[:6]}", f"d-lose-{uuid.uuid4().hex[:6]}"

    # Two HTTP groups judge their first heartbeat naming the new task id before either is
    # stored: both pass, so both senders are answered 202.
    sent: list[dict[str, Any]] = []
    flush = http_flush(
        None, get_settings(), lambda _task, payload, _countdown=None: sent.append(payload) or ""
    )
    groups = [
        parse_submission(api.caller, [hb(won, task, t0, daemonId=winner)]),
        parse_submission(api.caller, [hb(lost, task, t0 + timedelta(seconds=1), daemonId=loser)]),
    ]
    for group in groups:
        flush([group])
    assert [r.accepted for g in groups for r in g.results] == [True, True]
    assert len(sent) == 2
    refused_id = groups[1].parsed[0][1]["id"]

    send_task(TaskName.INGEST_HEARTBEATS.value, sent[0])
    wait_for(lambda: supervisor_row(task), what="the winner's supervisor stored")
    before = supervisor_row(task)
    assert before is not None and (before["contract_id"], before["daemon_id"]) == (won, winner)

    # The loser's list, delivered twice (a redelivery after its worker died, say).
    for deliveries in (1, 2):
        send_task(TaskName.INGEST_HEARTBEATS.value, sent[1])
        wait_for(lambda n=deliveries: refused_lists_naming(lost) == n, what=f"delivery {deliveries} ingested")

    told = wait_for(
        lambda: [c for c in commands_received(loser, owner=me.owner_id) if c["contractId"] == str(lost)],
        what="the losing daemon's command",
    )
    assert [c["command"] for c in told] == [REFUSED_COMMAND]
    assert len(refused_commands(lost)) == 1  # the second delivery queued nothing more
    payload = told[0]["payload"]
    assert payload == {
        "contractId": str(lost),
        "taskId": str(task),
        "heartbeatIds": [refused_id],
        "daemonId": loser,
        "heldBy": str(won),  # both contracts are this owner's: the holder is named
        "reason": f"Task id {task} already belongs to contract {won} (as its supervisor); start this "
        f"supervisor with a new task id: heartbeats naming {task} on contract {lost} are refused.",
    }
    assert told[0]["daemonId"] == loser
    said = f"heartbeat(s) {refused_id} on contract {lost} refused: task id {task} is held by contract {won}; "
    assert (
        f"{said}heartbeat_refused queued for the command queue of daemon '{loser}': {payload['reason']}"
        in (worker.log())
    )
    assert f"{said}already told on the command queue of daemon '{loser}': {payload['reason']}" in worker.log()

    # The winner is untouched: its row, its daemon's queue, its contract's commands.
    assert supervisor_row(task) == before
    assert [c for c in commands_received(winner, owner=me.owner_id) if c["contractId"] == str(won)] == []
    assert refused_commands(won) == []
    with unit_of_work() as uow:
        assert (
            uow.session.scalars(
                select(SupervisorHeartbeat).where(SupervisorHeartbeat.contract_id == lost)
            ).all()
            == []
        )


def embedded(tmp_path: Any) -> Engine:
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    return get_engine(url)


def owner_api(engine: Engine | None, owner: str) -> ContractsAPI:
    with unit_of_work(engine=engine) as uow:
        token = create_token(uow.session, owner, Role.SUPERVISOR)
    if engine is None:
        return ContractsAPI(token)
    return ContractsAPI(token, engine=engine, sender=lambda *args, **kwargs: "")


def test_a_refused_claim_is_told_once_to_its_daemon_on_both_dialects(
    worker: WorkerProcess, tmp_path: Any
) -> None:
    """Each worker path (the PostgreSQL fold, the SQLite plan) tells the daemon once per task id
    and contract, names the holder only to the owner of both, tells a heartbeat without a
    daemon id to the daemon heard last for its contract, and explains an ordinary task's id."""
    local = embedded(tmp_path)
    try:
        for engine in (None, local):
            alice, bob = owner_api(engine, f"alice-{uuid.uuid4().hex[:6]}"), owner_api(engine, "bob")
            hers, mine, his = (
                uuid.UUID(str(api.create_contract(name, "simple").id))
                for api, name in ((alice, "hers"), (alice, "mine"), (bob, "his"))
            )
            task, own, t0 = uuid.uuid4(), uuid.uuid4(), utcnow()

            def ingest(api: ContractsAPI, *items: dict[str, Any], engine: Engine | None = engine) -> Any:
                message = message_of({api.caller.principal_id: list(items)})
                return heartbeats.ingest(message, engine=engine, sender=send_task if engine is None else None)

            ingest(alice, hb(hers, task, t0, daemonId="d-hers"))
            ingest(alice, hb(mine, own, t0, daemonId="d-mine"))  # mine's supervisor runs on d-mine
            before = supervisor_row(task, engine)
            same_owner = hb(mine, task, t0 + timedelta(seconds=1))  # no daemonId
            stranger = hb(his, task, t0 + timedelta(seconds=1), daemonId="d-his")
            for _ in range(2):  # the same lists again: a redelivery
                assert len(ingest(alice, same_owner).refused) == 1
                assert len(ingest(bob, stranger).refused) == 1

            (to_mine,) = refused_commands(mine, engine)
            # Sent without a daemon id: for the daemon heard last for its contract.
            assert (to_mine.daemon_id, to_mine.payload["daemonId"]) == ("d-mine", "d-mine"), engine
            assert to_mine.payload["heldBy"] == str(hers)
            assert to_mine.payload["heartbeatIds"] == [same_owner["id"]]
            (to_his,) = refused_commands(his, engine)
            assert (to_his.daemon_id, to_his.payload["heldBy"]) == ("d-his", None), engine
            assert to_his.payload["reason"] == (
                f"Task id {task} cannot be used on contract {his}; start this supervisor with a new task "
                f"id: heartbeats naming {task} on this contract are refused."
            )
            assert str(hers) not in to_his.payload["reason"]
            assert refused_commands(hers, engine) == []
            assert supervisor_row(task, engine) == before, engine
            with unit_of_work(engine=engine) as uow:
                changes = uow.session.scalars(
                    select(ContractEvent.contract_id).where(ContractEvent.type == STATE_CHANGED)
                ).all()
                assert mine in changes and hers in changes and his not in changes, engine

            # Another contract's ordinary task (reported started there) is explained as such.
            started = uuid.uuid4()
            with unit_of_work(engine=engine) as uow:
                uow.session.add(
                    ContractTask(id=started, contract_id=hers, name="build", status="running", phase="plan")
                )
            ingest(alice, hb(mine, started, t0, daemonId="d-mine"))
            (about_task,) = [c for c in refused_commands(mine, engine) if c.payload["taskId"] == str(started)]
            assert "(as a task reported started there)" in about_task.payload["reason"], engine
            assert supervisor_row(started, engine) is None
    finally:
        local.dispose()


def test_a_heartbeat_without_a_daemon_id_that_loses_to_a_task_report_is_told_on_its_owners_queue(
    worker: WorkerProcess, make_caller
) -> None:
    """The fronts accept a first heartbeat naming a new task id; before the worker ingests it,
    a task report naming that id on another contract commits. The worker refuses the
    heartbeat, and since it names no daemon and no daemon was ever heard for its contract, its
    owner's own command queue carries the notice a daemon's queue would; the worker's log
    tells a person the same, with the holder."""
    token, me = make_caller(role="supervisor")
    api = ContractsAPI(token)
    quiet, busy = (uuid.UUID(str(api.create_contract(n, "simple").id)) for n in ("quiet", "busy"))
    task = uuid.uuid4()

    sent: list[dict[str, Any]] = []
    flush = http_flush(
        None, get_settings(), lambda _task, payload, _countdown=None: sent.append(payload) or ""
    )
    group = parse_submission(api.caller, [hb(quiet, task, utcnow())])  # no daemonId
    flush([group])
    assert [r.accepted for r in group.results] == [True]
    refused_id = group.parsed[0][1]["id"]

    # Between the 202 and the ingestion, a task report claims the id on the other contract.
    report = api.report_task_started(busy, task, "build")
    wait_for(lambda: api.message_status(report).status == "applied", what="the task report applied")

    send_task(TaskName.INGEST_HEARTBEATS.value, sent[0])
    wait_for(lambda: refused_lists_naming(quiet) == 1, what="the heartbeat list ingested")

    told = wait_for(
        lambda: [c for c in commands_received(None, owner=me.owner_id) if c["contractId"] == str(quiet)],
        what="the owner's queue's command",
    )
    assert [c["command"] for c in told] == [REFUSED_COMMAND]
    assert told[0]["daemonId"] is None
    reason = (
        f"Task id {task} already belongs to contract {busy} (as a task reported started there); start "
        f"this supervisor with a new task id: heartbeats naming {task} on contract {quiet} are refused."
    )
    assert told[0]["payload"] == {
        "contractId": str(quiet),
        "taskId": str(task),
        "heartbeatIds": [refused_id],
        "daemonId": None,
        "heldBy": str(busy),
        "reason": reason,
    }
    assert supervisor_row(task) is None
    assert (
        f"heartbeat(s) {refused_id} on contract {quiet} refused: task id {task} is held by contract "
        f"{busy}; heartbeat_refused queued for the owner's own command queue: {reason}"
    ) in worker.log()


def test_a_refusal_no_other_contract_explains_is_logged_with_nothing_queued(
    make_caller, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that saw a supervisor's row skips making it again; when the row was removed
    since (its contract deleted, say), the fold refuses the heartbeat that would have started
    it, yet no other contract holds the id, so there is nothing to tell a daemon: the log says
    so for a person."""
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    contract = uuid.UUID(str(api.create_contract("row removed", "simple").id))
    task = uuid.uuid4()

    def ingest(item: dict[str, Any]) -> Any:
        return heartbeats.ingest(message_of({api.caller.principal_id: [item]}), sender=send_task)

    assert ingest(hb(contract, task, utcnow(), daemonId="d-gone")).stored == 1
    with unit_of_work() as uow:
        uow.session.execute(delete(SupervisorHeartbeat).where(SupervisorHeartbeat.task_id == task))
        uow.session.execute(delete(Supervisor).where(Supervisor.task_id == task))

    again = hb(contract, task, utcnow(), daemonId="d-gone")
    with caplog.at_level(logging.WARNING, logger="app.heartbeats"):
        assert len(ingest(again).refused) == 1
    assert refused_commands(contract) == []
    assert caplog.messages == [
        f"heartbeat {again['id']} on contract {contract} refused: task id {task} may start a supervisor "
        "whose row was removed meanwhile, and no other contract holds it; nothing queued"
    ]
