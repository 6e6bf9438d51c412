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
from app.domain.errors import SupervisorDead, SupervisorFenced, ValidationFailed
from app.domain.incarnations import MAX_INCARNATION
from app.domain.lifecycle import Status
from app.domain.questions import MAX_CONTEXT, MAX_FREE_TEXT_ANSWER, MAX_OPTION, MAX_OPTIONS, MAX_QUESTION
from app.history_reads import HISTORY_BYTES
from app.http import create_app
from app.models import ContractTask, DaemonCommand, Supervisor, SupervisorHeartbeat
from app.restoration import ANSWERED_QUESTION_BYTES, PENDING_QUESTION_BYTES, WAITING_TASK_BYTES
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
    cid = new_contract(api, name="never saved")
    task = _supervisor_task(cid)  # started as the supervisor, never heard from, nothing saved
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
    task = _supervisor_task(cid)
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
    # Nor can it take the supervisor back by leaving its incarnation out, or by naming one the
    # server never issued.
    unnamed = api.send_heartbeat(cid, task, "failed", "plan", daemon_id="d-crash")
    invented = api.send_heartbeat(cid, task, "failed", "plan", incarnation=50, daemon_id="d-crash")
    api.flush()
    for hb in (late, unnamed, invented):
        wait_for(lambda hb=hb: _heartbeat_fenced(hb), what="the replaced daemon's heartbeat stored, fenced")
    sup = supervisor_row(task)
    assert sup is not None and (sup.incarnation, sup.daemon_id) == (2, "d-after-crash")
    assert sup.state != "failed"
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
    assert restored.pending_question_count == 1


def test_a_restoration_carries_at_most_fifty_open_questions_and_counts_them_all(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = new_contract(api, name="many questions")
    task = uuid.uuid4()
    asked = [api.ask_question(cid, f"Question {i}?", "free_text")[0].id for i in range(53)]
    api.save_supervisor_state(cid, task, state_version=1, state="waiting_for_user", phase="plan")

    restored = api.restore_supervisor(cid, task)
    assert [q.id for q in restored.pending_questions] == asked[:50]  # the oldest first
    assert restored.pending_question_count == 53
    assert restored.next == "redeliver_questions"
    # The count, not the size, ended the list: the questions endpoint reads on from the last.
    assert (restored.pending_questions_truncated, restored.pending_questions_next_after) == (False, asked[49])
    assert "Open questions (53; 50 in pendingQuestions" in restored.context


def largest_question(i: int) -> dict[str, Any]:
    """A question of the largest allowed size, in 4-byte UTF-8 characters: about 88 KB of JSON."""
    wide = "\U0001d11e"  # 𝄞, four bytes in UTF-8
    return {
        "question": f"{i:02d}" + wide * (MAX_QUESTION - 2),
        "type_": "multiple_choice",
        "options": [f"{i:02d}{n:02d}" + wide * (MAX_OPTION - 4) for n in range(MAX_OPTIONS)],
        "context": wide * MAX_CONTEXT,
    }


def json_size(value: Any) -> int:
    """Bytes of `value` as the service's answers carry it (compact UTF-8 JSON)."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def test_a_restoration_carries_open_questions_within_a_mebibyte_and_says_where_to_read_on(
    daemon: tuple[str, ContractsAPI],
) -> None:
    """Fifteen open questions of the largest size are 1.3 MB: the restoration carries the oldest
    that fit in 1 MiB beside its 4 MiB of history, counts them all, and the questions endpoint
    reads on from `pendingQuestionsNextAfter`, none lost or repeated."""
    token, api = daemon
    cid = new_contract(api, name="large questions")
    task = uuid.uuid4()
    asked = [str(api.ask_question(cid, **largest_question(i))[0].id) for i in range(15)]
    api.save_supervisor_state(cid, task, state_version=1, state="waiting_for_user", phase="plan")
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app()) as client:
        resp = client.get(
            f"{BASE}/{cid}/supervisor/restoration", params={"taskId": str(task)}, headers=headers
        )
        assert resp.status_code == 200, resp.text[:500]
        restored = resp.json()
        carried = [q["id"] for q in restored["pendingQuestions"]]
        assert 0 < len(carried) < 15
        assert json_size(restored["pendingQuestions"]) <= PENDING_QUESTION_BYTES
        assert (restored["pendingQuestionCount"], restored["pendingQuestionsTruncated"]) == (15, True)
        assert restored["pendingQuestionsNextAfter"] == carried[-1]
        assert restored["next"] == "redeliver_questions"
        assert f"Open questions (15; {len(carried)} in pendingQuestions" in restored["context"]
        rest = client.get(
            f"{BASE}/{cid}/questions",
            params={"open": "true", "after": restored["pendingQuestionsNextAfter"]},
            headers=headers,
        ).json()
    assert carried + [q["id"] for q in rest["questions"]] == asked
    assert rest["nextAfter"] is None


def test_a_restoration_carries_the_newest_answers_within_a_mebibyte(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    """Twenty questions and answers of the largest size since the save are 1.1 MB: the
    restoration carries the newest that fit in 1 MiB, oldest first, and says some were left out."""
    token, api = daemon
    cid = new_contract(api, name="large answers")
    task = uuid.uuid4()
    wide = "\U0001d11e"  # 𝄞, four bytes in UTF-8
    asked = [
        api.ask_question(cid, f"{i:02d}" + wide * (MAX_QUESTION - 2), "free_text")[0].id for i in range(20)
    ]
    api.save_supervisor_state(cid, task, state_version=1, state="waiting_for_user", phase="plan")
    person = person_of(api, make_caller)
    for qid in asked:
        person.answer_question(cid, qid, wide * MAX_FREE_TEXT_ANSWER)
    with TestClient(create_app()) as client:
        resp = client.get(
            f"{BASE}/{cid}/supervisor/restoration",
            params={"taskId": str(task)},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 200, resp.text[:500]
    restored = resp.json()
    carried = [q["id"] for q in restored["answeredQuestions"]]
    assert 0 < len(carried) < 20
    assert carried == [str(q) for q in asked[-len(carried) :]]  # the newest, oldest first
    assert json_size(restored["answeredQuestions"]) <= ANSWERED_QUESTION_BYTES
    assert restored["answeredQuestionsTruncated"] is True
    assert restored["next"] == "resume"


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
    assert restored.waiting_tasks_truncated is False

    api.report_task_completed(cid, research, "research", success=False)
    wait_for(lambda: _task_status(research) == "failed", what="research failed")
    after = api.restore_supervisor(cid, task)
    assert after.next == "resume"  # nothing left running: the supervisor handles the results
    assert [t.status for t in after.waiting_tasks] == ["failed", "done"]


def test_a_restoration_carries_waited_on_tasks_within_a_mebibyte_and_says_the_rest_were_left_out(
    daemon: tuple[str, ContractsAPI],
) -> None:
    """Six hundred waited-on tasks with names of the largest size (500 four-byte characters) are
    1.2 MB: the restoration carries the first that fit in 1 MiB, in the state's order, flags the
    cut, and still answers 200; the state names them all, and `next` judges them all."""
    token, api = daemon
    cid = new_contract(api, name="many waited-on tasks")
    task = uuid.uuid4()
    waited = [uuid.uuid4() for _ in range(600)]
    wide = "\U0001d11e"  # 𝄞, four bytes in UTF-8
    with unit_of_work() as uow:  # as reported, without 600 reports through the worker
        phase = uow.session.scalar(text("SELECT phase FROM contracts WHERE id = :c"), {"c": cid})
        uow.session.add_all(
            ContractTask(id=t, contract_id=cid, name=f"{i:03d}" + wide * 497, status="running", phase=phase)
            for i, t in enumerate(waited)
        )
    api.save_supervisor_state(
        cid, task, state_version=1, state="waiting_for_tasks", phase="plan",
        spawned_task_ids=waited, waiting_on_task_ids=waited,
    )  # fmt: skip
    with TestClient(create_app()) as client:
        resp = client.get(
            f"{BASE}/{cid}/supervisor/restoration",
            params={"taskId": str(task)},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 200, resp.text[:500]
    restored = resp.json()
    carried = [t["taskId"] for t in restored["waitingTasks"]]
    assert 0 < len(carried) < len(waited)
    assert carried == [str(t) for t in waited[: len(carried)]]
    assert all(t["status"] == "running" and t["exists"] for t in restored["waitingTasks"])
    assert json_size(restored["waitingTasks"]) <= WAITING_TASK_BYTES
    assert restored["waitingTasksTruncated"] is True
    assert restored["state"]["waitingOnTaskIds"] == [str(t) for t in waited]
    assert restored["next"] == "resume_waiting"


def _task_status(task_id: uuid.UUID) -> str | None:
    with unit_of_work() as uow:
        return uow.session.scalar(select(ContractTask.status).where(ContractTask.id == task_id))


# --- fencing, closed contracts and bounds (what an attack on the running service found) ---------


def _supervisor_task(cid: uuid.UUID) -> uuid.UUID:
    """The supervisor task `new_contract` started."""
    with unit_of_work() as uow:
        found = uow.session.scalar(
            select(ContractTask.id).where(
                ContractTask.contract_id == cid, ContractTask.is_supervisor.is_(True)
            )
        )
    assert found is not None
    return found


def _supervisors_of(cid: uuid.UUID) -> int:
    with unit_of_work() as uow:
        return len(uow.session.scalars(select(Supervisor.task_id).where(Supervisor.contract_id == cid)).all())


def test_once_the_server_issued_an_incarnation_a_save_without_one_is_fenced(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = new_contract(api, name="omitted incarnation")
    task = _supervisor_task(cid)
    # Before any restoration, restart or death, incarnation 1 is in force and may go unnamed.
    assert api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", history_append=turn(1)
    ).applied
    restored = api.restore_supervisor(cid, task, daemon_id="d-new")
    assert restored.incarnation == 2
    assert any("incarnation 2" in notice for notice in restored.notices)
    assert api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", incarnation=2, history_append=turn(2)
    ).applied

    with pytest.raises(SupervisorFenced) as fenced:  # the replaced daemon leaves it out
        api.save_supervisor_state(
            cid, task, state_version=99, state="failed", phase="plan", history_from=0, history_append=[]
        )
    assert fenced.value.details["incarnation"] is None
    assert fenced.value.details["currentIncarnation"] == 2
    assert "must name" in str(fenced.value)
    kept = api.supervisor_state(cid, task)
    assert (kept.incarnation, kept.state_version, kept.state, kept.history_length) == (2, 1, "working", 4)


def test_a_save_naming_an_incarnation_never_issued_is_refused_and_the_real_one_keeps_saving(
    daemon: tuple[str, ContractsAPI],
) -> None:
    token, api = daemon
    cid = new_contract(api, name="future incarnation")
    task = _supervisor_task(cid)
    api.save_supervisor_state(cid, task, state_version=100, state="working", phase="plan")
    with TestClient(create_app()) as client:
        resp = client.post(
            f"{BASE}/{cid}/supervisor/state",
            json={
                "taskId": str(task),
                "incarnation": 50,
                "stateVersion": 1,
                "state": "working",
                "phase": "plan",
            },
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "INCARNATION_NOT_ISSUED"
    assert (error["details"]["incarnation"], error["details"]["currentIncarnation"]) == (50, 1)
    assert "restoration" in error["message"]
    saved = api.save_supervisor_state(cid, task, state_version=101, state="idle", phase="plan", incarnation=1)
    assert (saved.applied, saved.incarnation, saved.state_version) == (True, 1, 101)


def test_a_claim_past_the_last_incarnation_is_refused_and_the_one_in_force_goes_on(
    daemon: tuple[str, ContractsAPI],
) -> None:
    """A claim issued incarnation + 1 whatever it was: past MAX_INCARNATION (2147483647) no
    heartbeat or save could name it. Now 409 INCARNATION_NOT_ISSUED names the limit and what to
    do, nothing is claimed, and the incarnation in force keeps saving."""
    token, api = daemon
    cid = new_contract(api, name="the last incarnation")
    task = _supervisor_task(cid)
    api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", history_append=turn(1)
    )
    api.send_heartbeat(cid, task, "working", "plan", daemon_id="d-last")
    api.flush()
    wait_for(lambda: supervisor_row(task), what="the heartbeat ingested")
    with unit_of_work() as uow:  # as though every incarnation but the last had been issued
        uow.session.execute(
            text("UPDATE supervisors SET incarnation = :last WHERE task_id = :t"),
            {"last": MAX_INCARNATION, "t": task},
        )
    with TestClient(create_app()) as client:
        resp = client.get(
            f"{BASE}/{cid}/supervisor/restoration",
            params={"taskId": str(task), "daemonId": "d-next"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "INCARNATION_NOT_ISSUED"
    assert (error["details"]["currentIncarnation"], error["details"]["maxIncarnation"]) == (
        MAX_INCARNATION,
    ) * 2
    assert "no restart or restoration can replace it" in error["message"]
    row = supervisor_row(task)
    assert row is not None and (row.incarnation, row.daemon_id) == (MAX_INCARNATION, "d-last")
    assert "supervisor_restored" not in event_types(cid)
    saved = api.save_supervisor_state(
        cid, task, state_version=2, state="idle", phase="plan", incarnation=MAX_INCARNATION
    )
    assert (saved.applied, saved.incarnation) == (True, MAX_INCARNATION)


def test_a_closed_contract_takes_no_save_claim_restart_or_sync_but_a_person_may_still_preview(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="closed")
    task = _supervisor_task(cid)
    api.save_supervisor_state(
        cid, task, state_version=1, state="working", phase="plan", history_append=turn(1)
    )
    person = person_of(api, make_caller)
    person.change_status(cid, Status.FAILED, reason="abandoned")

    with pytest.raises(ValidationFailed) as save:
        api.save_supervisor_state(cid, task, state_version=2, state="working", phase="plan")
    assert save.value.details["status"] == "failed"
    with pytest.raises(ValidationFailed):
        api.restore_supervisor(cid, task, daemon_id="d-late")
    with pytest.raises(ValidationFailed):
        person.restart_supervisor(cid, task)
    with pytest.raises(ValidationFailed):
        person.request_supervisor_sync(cid)
    preview = person.restore_supervisor(cid, task)
    assert (preview.claimed, preview.branch, preview.history_length) == (False, "resume", 2)
    assert supervisor_row(task) is None, "nothing was claimed or restarted"
    assert "supervisor_restored" not in event_types(cid)


def test_only_a_task_the_contract_knows_as_its_supervisor_may_be_claimed(
    daemon: tuple[str, ContractsAPI],
) -> None:
    token, api = daemon
    cid = new_contract(api, name="phantoms")
    task = _supervisor_task(cid)
    with TestClient(create_app()) as client:
        for _ in range(3):
            resp = client.get(
                f"{BASE}/{cid}/supervisor/restoration?taskId={uuid.uuid4()}&daemonId=d-phantom",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert resp.status_code == 404, resp.text
            error = resp.json()["error"]
            assert error["code"] == "SUPERVISOR_NOT_FOUND"
            assert error["details"]["supervisorTaskIds"] == [str(task)]
    assert _supervisors_of(cid) == 0
    restored = api.restore_supervisor(cid, task, daemon_id="d-real")  # the started supervisor task
    assert restored.claimed and restored.task_id == task and _supervisors_of(cid) == 1


def test_a_restoration_for_a_new_daemon_sends_the_answers_to_open_questions_there(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="answers follow")
    task = _supervisor_task(cid)
    mine, _ = api.ask_question(cid, "Which region?", "free_text", task_id=task, daemon_id="d-old")
    anyone, _ = api.ask_question(cid, "Ship it?", "confirmation", daemon_id="d-old")
    other, _ = api.ask_question(cid, "Other's?", "confirmation", task_id=uuid.uuid4(), daemon_id="d-other")
    api.save_supervisor_state(cid, task, state_version=1, state="waiting_for_user", phase="plan")

    restored = api.restore_supervisor(cid, task, daemon_id="d-new")
    assert restored.questions_redirected == 2
    assert any("d-new" in notice and "answers" in notice for notice in restored.notices)
    # The replaced daemon asking its question again does not pull the answer back.
    repeated, _ = api.ask_question(
        cid, "Which region?", "free_text", question_id=mine.id, task_id=task, daemon_id="d-old"
    )
    assert repeated.daemon_id == "d-new"
    person = person_of(api, make_caller)
    answered = person.answer_question(cid, mine.id, "eu-west")
    assert answered.question.daemon_id == "d-new" and _command_daemon(answered.command_id) == "d-new"
    assert _command_daemon(person.answer_question(cid, anyone.id, True).command_id) == "d-new"
    assert _command_daemon(person.answer_question(cid, other.id, True).command_id) == "d-other"


def _command_daemon(command_id: int | None) -> str | None:
    assert command_id is not None
    with unit_of_work() as uow:
        command = uow.session.get(DaemonCommand, command_id)
        assert command is not None
        return command.daemon_id


def test_history_answers_are_bounded_by_size_and_say_where_to_read_on(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="big history")
    task = _supervisor_task(cid)
    big = "x" * 65_536
    for version in range(4):  # 80 messages of 64 KiB: 5 MiB in all
        api.save_supervisor_state(
            cid, task, state_version=version, state="working", phase="plan",
            history_append=[{"role": "assistant", "content": f"{i}:{big}"[:65_536]} for i in range(20)],
        )  # fmt: skip
    page = api.supervisor_history(cid, task, 0, 1000)
    assert page.truncated and 0 < len(page.messages) < 80
    assert sum(len(m.content) for m in page.messages) <= HISTORY_BYTES
    assert page.next_from == len(page.messages)
    rest = api.supervisor_history(cid, task, page.next_from, 1000)
    assert (rest.truncated, rest.next_from) == (False, None)
    assert len(page.messages) + len(rest.messages) == 80

    restored = person_of(api, make_caller).restore_supervisor(cid, task, history_limit=1000)
    assert restored.history_truncated and restored.history_length == 80
    assert restored.history_from == 80 - len(restored.history) > 0
    assert [m.seq for m in restored.history] == list(range(restored.history_from, 80))


def test_a_sync_during_a_pending_restart_says_the_restart_is_awaited(
    daemon: tuple[str, ContractsAPI], make_caller: Any
) -> None:
    _, api = daemon
    cid = new_contract(api, name="sync after restart")
    task = _supervisor_task(cid)
    api.send_heartbeat(cid, task, "working", "plan", daemon_id="d-sync")
    api.flush()
    wait_for(lambda: supervisor_row(task), what="the heartbeat ingested")
    person = person_of(api, make_caller)
    restarted = person.restart_supervisor(cid, task)
    assert "incarnation 2" in restarted.notice
    with pytest.raises(SupervisorDead) as dead:
        person.request_supervisor_sync(cid)
    message = str(dead.value)
    assert "A restart was requested at" in message and "incarnation 2 to report" in message
    assert "next incarnation" not in message
    assert dead.value.details["incarnation"] == 2 and dead.value.details["restartRequestedAt"]


def test_the_daemon_list_comes_in_pages(daemon: tuple[str, ContractsAPI]) -> None:
    token, api = daemon
    for i in range(3):  # three daemons, each restoring its own contract's supervisor
        cid = new_contract(api, name=f"daemon page {i}")
        api.restore_supervisor(cid, _supervisor_task(cid), daemon_id=f"d-page-{i}")
    first = api.daemons(limit=2)
    assert len(first.daemons) == 2 and first.next_cursor == 2
    rest = api.daemons(limit=2, cursor=first.next_cursor)
    assert len(rest.daemons) == 1 and rest.next_cursor is None
    assert {d.daemon_id for d in first.daemons + rest.daemons} == {"d-page-0", "d-page-1", "d-page-2"}
    with TestClient(create_app()) as client:
        auth = {"Authorization": f"Bearer {token}"}
        assert len(client.get("/api/v1/daemons?limit=1", headers=auth).json()["daemons"]) == 1
        too_many = client.get("/api/v1/daemons?limit=1001", headers=auth)
        assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "INVALID_REQUEST"


def test_a_daemon_id_that_could_not_name_a_queue_is_refused_as_heartbeats_refuse_it(
    daemon: tuple[str, ContractsAPI],
) -> None:
    _, api = daemon
    cid = new_contract(api, name="daemon ids")
    task = _supervisor_task(cid)
    for bad in ("d\x07bell", "d\ufffd", " ", "d" * 201):
        with pytest.raises(ValidationFailed) as restoring:
            api.restore_supervisor(cid, task, daemon_id=bad)
        assert restoring.value.details["field"] == "daemonId"
        with pytest.raises(ValidationFailed) as saving:
            api.save_supervisor_state(
                cid, task, state_version=1, state="working", phase="plan", daemon_id=bad
            )
        assert saving.value.details["field"] == "daemonId"
    assert supervisor_row(task) is None and api.daemons().daemons == []
