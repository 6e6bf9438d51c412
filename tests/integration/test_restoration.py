"""Restoration of a supervisor, one test per case of plan Task 3.4, end to end: the API module and
HTTP front → PostgreSQL, with a real `celery worker` applying task reports, ingesting heartbeats
and publishing daemon commands, and (for the crash) a real daemon process killed with SIGKILL.

- after a clean shutdown: the last save resumed with its whole history;
- after a crash mid-conversation: everything up to the last acknowledged save, and the dead
  incarnation's next save fenced;
- with corrupted state (rows damaged with SQL): the last checkpoint, naming what was wrong;
  without a checkpoint, a fresh start naming it too;
- with pending questions: re-deliver them, with the answers received since the save;
- with waiting tasks: each with its current status, resume waiting while one runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text

from app.api import ContractsAPI
from app.db import unit_of_work
from app.domain.errors import SupervisorFenced
from app.http import create_app
from app.models import ContractTask, Supervisor, SupervisorHeartbeat
from tests.integration.helpers import event_types, new_contract
from tests.integration.worker_processes import ROOT, WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("restore"), queues="contracts,heartbeats,sweeps", concurrency=2
    )
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture
def daemon(make_caller: Any, worker: WorkerProcess) -> tuple[str, ContractsAPI]:
    """A supervisor token (a daemon of its owner) and its API module."""
    token = make_caller(role="supervisor")[0]
    return token, ContractsAPI(token)


def person_of(api: ContractsAPI, make_caller: Any) -> ContractsAPI:
    return ContractsAPI(make_caller(owner=api.caller.owner_id, role="user")[0])


def turn(i: int) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": f"turn {i} question"},
        {"role": "assistant", "content": f"turn {i} answer"},
    ]


def contents(messages: list[Any]) -> list[str]:
    return [m.content for m in messages]


def expected(turns: int) -> list[str]:
    return [f"turn {i} {part}" for i in range(1, turns + 1) for part in ("question", "answer")]


def supervisor_row(task: uuid.UUID) -> Supervisor | None:
    with unit_of_work() as uow:
        return uow.session.get(Supervisor, task)


# --- after a clean shutdown ---------------------------------------------------------------------


def test_after_a_clean_shutdown_the_last_save_is_resumed_with_its_whole_history(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="clean shutdown")
    task = uuid.uuid4()
    for i in range(1, 4):  # three turns, each saved at its LLM response
        api.save_supervisor_state(
            cid, task, state_version=i, state="working", phase="plan", current_activity=f"turn {i}",
            history_append=turn(i), daemon_id="d-clean",
        )  # fmt: skip
    api.save_supervisor_state(
        cid, task, state_version=4, state="idle", phase="plan", current_activity="stopped"
    )

    person_token = make_caller(owner=api.caller.owner_id, role="user")[0]
    preview = ContractsAPI(person_token).restore_supervisor(cid, task)
    assert (preview.branch, preview.claimed, preview.incarnation) == ("resume", False, 1)
    assert "supervisor_restored" not in event_types(cid)

    restored = api.restore_supervisor(cid, task, daemon_id="d-clean-2", host="gpu-2")
    assert (restored.branch, restored.next, restored.claimed) == ("resume", "resume", True)
    assert (restored.previous_incarnation, restored.incarnation) == (1, 2)
    assert restored.inconsistencies == [] and restored.warnings == []
    assert restored.state is not None
    assert (restored.state.state, restored.state.state_version, restored.state.current_activity) == (
        "idle",
        4,
        "stopped",
    )
    assert (restored.history_from, restored.history_length) == (0, 6)
    assert contents(restored.history) == expected(3)
    assert restored.contract.phase == "plan" and restored.contract.status == "active"
    assert "Restored: the last saved state" in restored.context and "Next: Resume" in restored.context
    assert event_types(cid).count("supervisor_restored") == 1
    sup = supervisor_row(task)
    assert sup is not None and (sup.incarnation, sup.alive, sup.state, sup.daemon_id) == (
        2,
        True,
        "initializing",
        "d-clean-2",
    )
    # Only the newest messages when asked for fewer, saying where they start.
    with TestClient(create_app()) as client:
        short = client.get(
            f"{BASE}/{cid}/supervisor/restoration?taskId={task}&historyLimit=2",
            headers={"Authorization": f"Bearer {person_token}"},
        ).json()
    assert (short["historyFrom"], [m["content"] for m in short["history"]]) == (4, expected(3)[4:])
    # The new incarnation counts its versions afresh; the old one is fenced.
    assert api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", incarnation=2
    ).applied
    with pytest.raises(SupervisorFenced):
        api.save_supervisor_state(cid, task, state_version=5, state="working", phase="plan", incarnation=1)


def test_nothing_saved_starts_fresh_with_a_warning_and_still_issues_an_incarnation(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = api.create_contract("never saved", "simple").id
    task = uuid.uuid4()
    restored = api.restore_supervisor(cid, task, daemon_id="d-new")
    assert (restored.branch, restored.next, restored.state, restored.history) == (
        "fresh",
        "start_fresh",
        None,
        [],
    )
    assert "start fresh" in restored.warnings[0]
    assert (restored.claimed, restored.previous_incarnation, restored.incarnation) == (True, None, 1)
    assert "Restored: nothing" in restored.context


# --- after a crash ------------------------------------------------------------------------------

DAEMON_SCRIPT = """
import json, sys, time, uuid
from app.api import ContractsAPI

cid, token, task, daemon = uuid.UUID(sys.argv[1]), sys.argv[2], uuid.UUID(sys.argv[3]), sys.argv[4]
api = ContractsAPI(token)
restored = api.restore_supervisor(cid, task, daemon_id=daemon, host="crash-host")
incarnation, length, version = restored.incarnation, restored.history_length, 0
while True:
    version += 1
    messages = [{"role": "user", "content": f"turn {version} question"},
                {"role": "assistant", "content": f"turn {version} answer"}]
    saved = api.save_supervisor_state(
        cid, task, state_version=version, incarnation=incarnation, state="working", phase="plan",
        current_activity=f"turn {version}", history_from=length, history_append=messages,
        daemon_id=daemon, checkpoint={"id": f"turn-{version}"} if version % 5 == 0 else None)
    length = saved.history_length
    api.send_heartbeat(cid, task, "working", "plan", current_activity=f"turn {version}",
                       incarnation=incarnation, daemon_id=daemon)
    api.flush()
    print(json.dumps({"version": version, "historyLength": length, "incarnation": incarnation}), flush=True)
    time.sleep(0.02)
"""


def test_after_a_crash_mid_conversation_everything_acknowledged_is_restored_and_the_dead_incarnation_fenced(
    daemon: tuple[str, ContractsAPI], tmp_path: Any
) -> None:
    token, api = daemon
    cid = new_contract(api, name="crash")
    task = uuid.uuid4()
    errors = tmp_path / "daemon.err"
    with errors.open("wb") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", DAEMON_SCRIPT, str(cid), token, str(task), "d-crash"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=err,
        )
    acks: list[dict[str, int]] = []

    def read_acks() -> None:
        assert child.stdout is not None
        for line in iter(child.stdout.readline, b""):
            acks.append(json.loads(line))

    reader = threading.Thread(target=read_acks, daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(acks) >= 12 or child.poll() is not None, what="the daemon's saves acknowledged")
        assert child.poll() is None, errors.read_text()
        wait_for(
            lambda: supervisor_row(task) is not None and _heartbeats(task) > 0, what="heartbeats ingested"
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)  # mid-conversation: no clean shutdown
        child.wait(timeout=10)
        reader.join(timeout=10)
    last = acks[-1]
    assert last["incarnation"] == 1

    restored = api.restore_supervisor(cid, task, daemon_id="d-after-crash")
    assert (restored.branch, restored.next, restored.claimed) == ("resume", "resume", True)
    assert restored.state is not None
    version = restored.state.state_version
    assert version >= last["version"], "an acknowledged save was lost"
    assert version <= last["version"] + 1  # at most the save that committed as it was killed
    assert restored.history_length == 2 * version
    page = api.supervisor_history(cid, task, start=0, limit=1000)
    assert contents(page.messages) == expected(version) and page.missing == [] and page.malformed == []
    assert (restored.previous_incarnation, restored.incarnation) == (1, 2)

    # The killed incarnation's next save (had it survived) and its heartbeats are fenced.
    with pytest.raises(SupervisorFenced) as fenced:
        api.save_supervisor_state(
            cid, task, state_version=version + 1, incarnation=1, state="working", phase="plan",
            history_from=2 * version, history_append=turn(version + 1),
        )  # fmt: skip
    assert fenced.value.details["currentIncarnation"] == 2
    late = api.send_heartbeat(cid, task, "working", "plan", incarnation=1, daemon_id="d-crash")
    api.flush()
    wait_for(lambda: _heartbeat_fenced(late), what="the late heartbeat stored, fenced")
    sup = supervisor_row(task)
    assert sup is not None and (sup.incarnation, sup.daemon_id) == (2, "d-after-crash")
    assert api.supervisor_history(cid, task).history_length == 2 * version  # nothing written since


def _heartbeats(task: uuid.UUID) -> int:
    with unit_of_work() as uow:
        return len(
            uow.session.scalars(
                select(SupervisorHeartbeat.id).where(SupervisorHeartbeat.task_id == task)
            ).all()
        )


def _heartbeat_fenced(heartbeat_id: uuid.UUID) -> bool:
    with unit_of_work() as uow:
        found = uow.session.scalar(
            select(SupervisorHeartbeat.fenced).where(SupervisorHeartbeat.id == heartbeat_id)
        )
    return bool(found)


# --- with corrupted state -----------------------------------------------------------------------

DAMAGE = {
    "history_truncated": "DELETE FROM supervisor_conversation WHERE task_id = :task AND seq = 5",
    "history_malformed": "UPDATE supervisor_conversation SET message = '{\"garbage\": true}' "
    "WHERE task_id = :task AND seq = 4",
    "phase_mismatch": "UPDATE supervisor_states SET phase = 'execute' WHERE task_id = :task",
    "unknown_waited_tasks": "UPDATE supervisor_states SET waiting_on_task_ids = "
    "'[\"00000000-0000-4000-8000-000000000001\"]' WHERE task_id = :task",
    "state_malformed": "UPDATE supervisor_states SET state = 'exploded' WHERE task_id = :task",
}


def damage(kind: str, task: uuid.UUID) -> None:
    with unit_of_work() as uow:
        uow.session.execute(text(DAMAGE[kind]), {"task": task})


def saved_with_a_checkpoint(api: ContractsAPI, cid: uuid.UUID, task: uuid.UUID, *, checkpoint: bool) -> None:
    """Two turns and a checkpoint (4 messages), then a third turn (6 messages)."""
    api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", history_append=turn(1)
    )
    api.save_supervisor_state(
        cid, task, state_version=2, state="working", phase="plan", current_activity="plan agreed",
        history_append=turn(2), checkpoint={"id": "plan-agreed", "note": "two turns"} if checkpoint else None,
    )  # fmt: skip
    api.save_supervisor_state(
        cid, task, state_version=3, state="working", phase="plan", history_append=turn(3)
    )


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_corrupted_state_restores_the_last_checkpoint_and_names_what_was_inconsistent(
    daemon: tuple[str, ContractsAPI], kind: str
) -> None:
    _, api = daemon
    cid = api.create_contract(f"corrupted: {kind}", "simple").id
    task = uuid.uuid4()
    saved_with_a_checkpoint(api, cid, task, checkpoint=True)
    damage(kind, task)

    restored = api.restore_supervisor(cid, task)
    assert restored.branch == "checkpoint", restored.warnings
    assert [i.kind for i in restored.inconsistencies] == [kind]
    assert restored.state is not None
    assert (restored.state.checkpoint_id, restored.state.state_version, restored.state.current_activity) == (
        "plan-agreed",
        2,
        "plan agreed",
    )
    assert (restored.history_length, contents(restored.history)) == (4, expected(2))
    assert "checkpoint 'plan-agreed'" in restored.warnings[0]
    assert f"Inconsistent: {kind}" in restored.context

    # The restored daemon carries on from the checkpoint: its first save rewrites the tail,
    # and the next restoration finds the state whole again.
    api.save_supervisor_state(
        cid, task, state_version=0, incarnation=restored.incarnation, state="working", phase="plan",
        history_from=4, history_append=turn(3),
    )  # fmt: skip
    again = api.restore_supervisor(cid, task)
    assert (again.branch, again.history_length, contents(again.history)) == ("resume", 6, expected(3))


def test_corrupted_state_without_a_checkpoint_starts_fresh_naming_every_inconsistency(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = api.create_contract("corrupted, no checkpoint", "simple").id
    task = uuid.uuid4()
    saved_with_a_checkpoint(api, cid, task, checkpoint=False)
    damage("phase_mismatch", task)
    damage("history_truncated", task)
    restored = api.restore_supervisor(cid, task)
    assert (restored.branch, restored.next, restored.state, restored.history) == (
        "fresh",
        "start_fresh",
        None,
        [],
    )
    assert [i.kind for i in restored.inconsistencies] == ["phase_mismatch", "history_truncated"]
    assert "no checkpoint" in restored.warnings[0]
    assert restored.claimed and restored.incarnation == 2


# --- with pending questions ---------------------------------------------------------------------


def test_pending_questions_are_redelivered_with_the_answers_received_since_the_save(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="questions")
    task = uuid.uuid4()
    which, _ = api.ask_question(cid, "Which database?", "single_choice", options=["PostgreSQL", "SQLite"])
    friday, _ = api.ask_question(cid, "Deploy on Friday?", "confirmation")
    api.save_supervisor_state(
        cid, task, state_version=1, state="waiting_for_user", phase="plan", history_append=turn(1)
    )
    person_of(api, make_caller).answer_question(cid, friday.id, False)

    restored = api.restore_supervisor(cid, task)
    assert (restored.branch, restored.next) == ("resume", "redeliver_questions")
    assert [(q.id, q.question, q.type, q.options) for q in restored.pending_questions] == [
        (which.id, "Which database?", "single_choice", ["PostgreSQL", "SQLite"])
    ]
    assert [(q.id, q.question, q.answer) for q in restored.answered_questions] == [
        (friday.id, "Deploy on Friday?", False)
    ]
    assert "Which database?" in restored.context and "Deploy on Friday? -> false" in restored.context


# --- with waiting tasks -------------------------------------------------------------------------


def test_waited_on_tasks_come_back_with_their_status_and_the_supervisor_resumes_waiting(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = new_contract(api, name="waiting")
    task, research, tests = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    api.report_task_started(cid, research, "research")
    api.report_task_started(cid, tests, "write tests")
    wait_for(lambda: _task_status(tests) == _task_status(research) == "running", what="tasks started")
    api.report_task_completed(cid, tests, "write tests", success=True)
    wait_for(lambda: _task_status(tests) == "done", what="tests done")
    api.save_supervisor_state(
        cid, task, state_version=1, state="waiting_for_tasks", phase="plan",
        spawned_task_ids=[research, tests], waiting_on_task_ids=[research, tests],
    )  # fmt: skip

    restored = api.restore_supervisor(cid, task)
    assert (restored.branch, restored.next) == ("resume", "resume_waiting")
    assert [(t.task_id, t.name, t.status, t.exists) for t in restored.waiting_tasks] == [
        (str(research), "research", "running", True),
        (str(tests), "write tests", "done", True),
    ]
    assert "research (running)" in restored.context and "write tests (done)" in restored.context

    api.report_task_completed(cid, research, "research", success=False)
    wait_for(lambda: _task_status(research) == "failed", what="research failed")
    after = api.restore_supervisor(cid, task)
    assert after.next == "resume"  # nothing left running: the supervisor handles the results
    assert [t.status for t in after.waiting_tasks] == ["failed", "done"]


def _task_status(task_id: uuid.UUID) -> str | None:
    with unit_of_work() as uow:
        return uow.session.scalar(select(ContractTask.status).where(ContractTask.id == task_id))
