"""The completion flow's decisions on the real schema, run in-process (no worker needed)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import select

from app import agent_reports, completion_flow, contracts, worktrees
from app.db import Dispatch, unit_of_work
from app.domain.errors import PhaseGuardRequired
from app.domain.lifecycle import Status
from app.models import Contract, ContractEvent, utcnow
from app.queues import TaskName
from tests.integration.helpers import contract_row


def events(contract_id: uuid.UUID) -> list[ContractEvent]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(
                select(ContractEvent)
                .where(ContractEvent.contract_id == contract_id)
                .order_by(ContractEvent.id)
            )
        )


pytestmark = pytest.mark.integration


class Outbox:
    """Collects what a unit of work would have enqueued, so the test can assert on it."""

    def __init__(self) -> None:
        self.sent: list[Dispatch] = []

    def __call__(self, task: str, payload: dict, countdown: float | None = None) -> str:
        self.sent.append(Dispatch(task, payload, countdown))
        return "captured"


def active_contract(caller, outbox: Outbox, **options: object) -> uuid.UUID:
    """A new contract (type `simple` unless `contract_type` says otherwise), moved to active."""
    now = utcnow()
    options.setdefault("contract_type", "simple")
    with unit_of_work(outbox) as uow:
        cid = contracts.create_contract(uow, caller, name="c", now=now, **options).id  # type: ignore[arg-type]
    with unit_of_work(outbox) as uow:
        contracts.change_status(uow, caller, cid, Status.ACTIVE, now=now)
    return cid


def completing_contract(caller, outbox: Outbox) -> uuid.UUID:
    now = utcnow()
    cid = active_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=now)
        completion_flow.evaluate_progress(uow, cid, now=now)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "pull-request", now=now)
        completion_flow.evaluate_progress(uow, cid, now=now)
    return cid


def test_terminal_gate_met_begins_completion_and_schedules_finalisation_after_the_grace(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    with unit_of_work() as uow:
        row = uow.session.get(Contract, cid)
        assert row is not None
        assert (row.phase, row.status) == ("execute", "completing")
        assert row.completion_detected_at is not None
    finals = [m for m in outbox.sent if m.task == TaskName.FINALIZE_COMPLETION]
    assert len(finals) == 1 and finals[0].countdown is not None and finals[0].countdown > 0


def test_finalisation_before_the_grace_is_over_does_nothing_and_reschedules(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    outbox.sent.clear()
    with unit_of_work(outbox) as uow:
        assert completion_flow.finalize_completion(uow, cid, now=utcnow()) is False
    assert [m.task for m in outbox.sent] == [TaskName.FINALIZE_COMPLETION]


def test_a_rejected_completion_returns_to_active_and_is_never_finalised(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        previous, row = contracts.change_status(
            uow, caller, cid, Status.ACTIVE, reason="not done yet", now=utcnow()
        )
        assert previous is Status.COMPLETING and row.completion_detected_at is None
    later = utcnow() + timedelta(hours=1)
    with unit_of_work(outbox) as uow:
        assert completion_flow.finalize_completion(uow, cid, now=later) is False
        row = uow.session.get(Contract, cid)
        assert row is not None and row.status == "active"


def test_finalisation_runs_once_however_often_it_is_delivered(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        worktrees.record_worktree(uow, caller, cid, path="/tmp/wt-1", now=utcnow())
    later = utcnow() + timedelta(hours=1)
    results = []
    for _ in range(3):
        with unit_of_work(outbox) as uow:
            results.append(completion_flow.finalize_completion(uow, cid, now=later))
    assert results == [True, False, False]
    with unit_of_work() as uow:
        row = uow.session.get(Contract, cid)
        assert row is not None and row.status == "completed"
    # Nobody confirmed it: the record says the grace period ran out with no rejection.
    (completed,) = [
        e for e in events(cid) if e.type == "status_changed" and e.payload.get("newStatus") == "completed"
    ]
    assert "nobody rejected" in completed.payload["reason"] and "confirmed" not in completed.payload["reason"]


def test_completing_by_hand_needs_the_terminal_phase_with_its_gate_met(make_caller) -> None:
    from app.domain.errors import ValidationFailed

    _, caller = make_caller()
    outbox = Outbox()
    now = utcnow()
    cid = active_contract(caller, outbox)
    with pytest.raises(ValidationFailed) as err, unit_of_work(outbox) as uow:
        contracts.change_status(uow, caller, cid, Status.COMPLETING, now=now)
    assert "terminal phase 'execute'" in err.value.missing[0]


def test_confirming_completion_by_hand_runs_the_cleanup_at_once(make_caller) -> None:
    from sqlalchemy import select

    from app.models import DaemonCommand

    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        worktrees.record_worktree(uow, caller, cid, path="/tmp/wt-2", now=utcnow())
    with unit_of_work(outbox) as uow:
        previous, row = contracts.change_status(uow, caller, cid, Status.COMPLETED, now=utcnow())
        assert previous is Status.COMPLETING and row.status == "completed"
    with unit_of_work() as uow:
        commands = uow.session.scalars(
            select(DaemonCommand.command).where(DaemonCommand.contract_id == cid)
        ).all()
    assert commands == ["remove_worktree"]
    assert TaskName.PUBLISH_DAEMON_COMMANDS in [m.task for m in outbox.sent]


def test_a_ready_phase_without_automation_is_announced_once_however_often_it_is_judged(make_caller) -> None:
    from sqlalchemy import func, select

    from app.models import ContractEvent

    _, caller = make_caller()
    outbox = Outbox()
    now = utcnow()
    cid = active_contract(caller, outbox, auto_complete_enabled=False)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=now)
    for _ in range(3):
        with unit_of_work(outbox) as uow:
            decision = completion_flow.evaluate_progress(uow, cid, now=now)
            assert decision.step.value == "notify"
    with unit_of_work() as uow:
        told = uow.session.scalar(
            select(func.count())
            .select_from(ContractEvent)
            .where(ContractEvent.contract_id == cid, ContractEvent.type == "phase_ready")
        )
    assert told == 1


def test_a_rejected_completion_is_not_begun_again_until_new_progress_arrives(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = completing_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        contracts.change_status(uow, caller, cid, Status.ACTIVE, reason="needs another look", now=utcnow())
    with unit_of_work(outbox) as uow:
        assert completion_flow.evaluate_progress(uow, cid, now=utcnow()).step.value == "wait"
        assert uow.session.get(Contract, cid).status == "active"  # type: ignore[union-attr]
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "execution-notes", now=utcnow())
    with unit_of_work(outbox) as uow:
        assert completion_flow.evaluate_progress(uow, cid, now=utcnow()).step.value == "begin_completion"
        assert uow.session.get(Contract, cid).status == "completing"  # type: ignore[union-attr]


def test_a_forced_move_back_is_not_undone_by_automation(make_caller) -> None:
    from app.domain.phase_change import PhaseChangeRequest

    _, caller = make_caller()
    outbox = Outbox()
    now = utcnow()
    cid = active_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=now)
        completion_flow.evaluate_progress(uow, cid, now=now)
    outbox.sent.clear()
    with unit_of_work(outbox) as uow:
        row = contracts.change_phase(uow, caller, cid, PhaseChangeRequest("plan", force=True), now=now)
        assert row.phase == "plan"
    assert TaskName.EVALUATE_PROGRESS not in [m.task for m in outbox.sent]


def test_a_supervisor_starting_asks_for_the_gate_to_be_judged(make_caller) -> None:
    _, caller = make_caller(role="supervisor")
    outbox = Outbox()
    now = utcnow()
    with unit_of_work(outbox) as uow:
        cid = contracts.create_contract(uow, caller, name="c", contract_type="simple", now=now).id
    with unit_of_work(outbox) as uow:
        agent_reports.record_task_started(
            uow, caller, cid, task_id=uuid.uuid4(), task_name="supervisor", is_supervisor=True, now=now
        )
    assert [m.task for m in outbox.sent] == [TaskName.EVALUATE_PROGRESS]


def test_a_closed_contract_accepts_no_more_work(make_caller) -> None:
    from app.domain.errors import ValidationFailed

    _, caller = make_caller()
    outbox = Outbox()
    now = utcnow()
    with unit_of_work(outbox) as uow:
        cid = contracts.create_contract(uow, caller, name="c", contract_type="simple", now=now).id
    with unit_of_work(outbox) as uow:
        contracts.change_status(uow, caller, cid, Status.FAILED, reason="disk gone", now=now)
    with pytest.raises(ValidationFailed, match="'failed': no more deliverables"), unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=now)


def test_a_terminal_phase_without_a_gate_can_be_completed_by_hand(make_caller) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    now = utcnow()
    config = {"phases": [{"id": "only", "gate": None}]}
    cid = active_contract(caller, outbox, contract_type="custom", phase_config=config)
    with unit_of_work(outbox) as uow:
        _, row = contracts.change_status(uow, caller, cid, Status.COMPLETING, now=now)
        assert row.status == "completing"


def test_a_task_reported_failed_and_then_done_counts_as_done(make_caller) -> None:
    """A failed task may be retried: its later `done` report completes it; `done` is final."""
    _, caller = make_caller()
    outbox = Outbox()
    cid = active_contract(caller, outbox)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
        completion_flow.evaluate_progress(uow, cid, now=utcnow())
    t1, t2 = uuid.uuid4(), uuid.uuid4()

    def report(task: uuid.UUID, success: bool) -> None:
        with unit_of_work(outbox) as uow:
            agent_reports.record_task_completed(
                uow,
                caller,
                cid,
                task_id=task,
                task_name=f"task-{task.hex[:4]}",
                success=success,
                message_id=str(uuid.uuid4()),
                now=utcnow(),
            )

    report(t1, False)
    report(t1, True)  # the retry
    report(t1, False)  # too late: done is final
    report(t2, True)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "pull-request", now=utcnow())
        completion_flow.evaluate_progress(uow, cid, now=utcnow())
    row = contract_row(cid)
    assert (row.phase, row.status) == ("execute", "completing")
    reports = [e for e in events(cid) if e.type == "task_completed" and e.payload["taskId"] == str(t1)]
    assert [e.payload["success"] for e in reports] == [False, True]


def waiting_for_confirmation(caller, outbox: Outbox) -> uuid.UUID:
    cid = active_contract(caller, outbox, phase_guard=True)
    with unit_of_work(outbox) as uow:
        contracts.mark_deliverable(uow, caller, cid, "plan-document", now=utcnow())
        completion_flow.evaluate_progress(uow, cid, now=utcnow())
    row = contract_row(cid)
    assert (row.status, row.waiting_for) == ("waiting_for_input", "phase_confirmation")
    return cid


def test_declining_a_phase_confirmation_keeps_the_phase_and_automation_does_not_ask_again(
    make_caller,
) -> None:
    _, caller = make_caller()
    outbox = Outbox()
    cid = waiting_for_confirmation(caller, outbox)
    with unit_of_work(outbox) as uow:
        contracts.change_status(
            uow, caller, cid, Status.ACTIVE, reason="plan needs another pass", now=utcnow()
        )
    for _ in range(3):  # however often automation looks again
        with unit_of_work(outbox) as uow:
            completion_flow.evaluate_progress(uow, cid, now=utcnow())
    row = contract_row(cid)
    assert (row.phase, row.status) == ("plan", "active")
    declined = [e for e in events(cid) if e.type == "phase_confirmation_declined"]
    assert len(declined) == 1 and declined[0].payload["reason"] == "plan needs another pass"

    # New progress in the phase: automation asks again.
    with unit_of_work(outbox) as uow:
        agent_reports.record_task_completed(
            uow, caller, cid, task_id=uuid.uuid4(), task_name="revise plan", success=True, now=utcnow()
        )
    row = contract_row(cid)
    assert (row.status, row.waiting_for) == ("waiting_for_input", "phase_confirmation")


def test_a_persons_completion_check_after_a_rejection_starts_the_completion_again(make_caller) -> None:
    _, person = make_caller()
    outbox = Outbox()
    cid = completing_contract(person, outbox)
    with unit_of_work(outbox) as uow:
        contracts.change_status(uow, person, cid, Status.ACTIVE, reason="not yet", now=utcnow())
    with unit_of_work(outbox) as uow:
        done = completion_flow.check_completion(uow, person, cid, now=utcnow())
    assert done.action.value == "completion_started" and done.status is Status.COMPLETING
    assert contract_row(cid).status == "completing"


def test_a_supervisors_completion_check_does_not_override_a_persons_rejection(make_caller) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    _, person = make_caller(owner)
    _, supervisor = make_caller(owner, role="supervisor")
    outbox = Outbox()
    cid = completing_contract(person, outbox)
    with unit_of_work(outbox) as uow:
        contracts.change_status(uow, person, cid, Status.ACTIVE, reason="not yet", now=utcnow())
    with unit_of_work(outbox) as uow:
        done = completion_flow.check_completion(uow, supervisor, cid, now=utcnow())
    assert done.action.value == "none" and "rejected" in done.note
    assert contract_row(cid).status == "active"


def test_a_supervisor_cannot_decline_a_phase_confirmation(make_caller) -> None:
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    _, person = make_caller(owner)
    _, supervisor = make_caller(owner, role="supervisor")
    outbox = Outbox()
    cid = waiting_for_confirmation(person, outbox)
    with pytest.raises(PhaseGuardRequired) as refused, unit_of_work(outbox) as uow:
        contracts.change_status(uow, supervisor, cid, Status.ACTIVE, reason="skip it", now=utcnow())
    assert refused.value.details["personRequired"] is True
    row = contract_row(cid)
    assert (row.status, row.waiting_for) == ("waiting_for_input", "phase_confirmation")
