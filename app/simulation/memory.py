"""A simulated supervisor's memory: what a crash loses, and how a restoration rebuilds it.

The observer's records (the ledger and `Acknowledged`) are never forgotten; this is the other
side, the supervisor's own, which a crash throws away and the service's restoration
(`GET …/supervisor/restoration`) gives back. Pure: nothing here talks to the service.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.simulation.plan import DELIVERABLES, FIRST_PHASE, STEPS_BEFORE_DELIVERING
from app.simulation.reconciliation import (
    pending_question_ids,
    restored_history_length,
    restored_state,
    restored_version,
)


@dataclass(slots=True)
class Memory:
    """What a supervisor holds locally; a crash loses all of it."""

    incarnation: int = 1
    state_version: int = 0  # the last one the service acknowledged
    history: list[dict[str, Any]] = field(default_factory=list)  # messages from `history_base` on
    history_base: int = 0
    history_acked: int = 0  # how many messages the service holds
    phase: str = FIRST_PHASE
    moving_to: str | None = None  # a phase the contract should reach, not yet seen
    steps_in_phase: int = 0
    delivered: set[str] = field(default_factory=set)
    spawned: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)  # started (confirmed), not completed
    starting: dict[str, str] = field(default_factory=dict)  # task id → its start's message id
    task_names: dict[str, str] = field(default_factory=dict)
    open_questions: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    questions_asked: int = 0
    saves: int = 0
    activity: str = "starting"
    full_save: bool = False

    @property
    def history_length(self) -> int:
        return self.history_base + len(self.history)

    def say(self, role: str, content: str) -> None:
        self.history.append({"role": role, "content": content})


def question_id_of(payload: Any) -> str | None:
    """A question's id in a command payload or a question view, however it is spelt."""
    if not isinstance(payload, dict):
        return None
    for key in ("questionId", "id"):
        if isinstance(payload.get(key), str):
            return str(payload[key])
    nested = payload.get("question")
    return question_id_of(nested) if isinstance(nested, dict) else None


def restored_memory(restoration: dict[str, Any], incarnation: int) -> Memory:
    """Rebuild the memory from a restoration: the daemon's new incarnation (`incarnation` when
    the restoration names none), the stored state and history, the questions still open, the
    tasks still running."""
    m = Memory()
    restored_incarnation = restoration.get("incarnation")
    m.incarnation = restored_incarnation if isinstance(restored_incarnation, int) else incarnation
    state = restored_state(restoration) or {}
    m.state_version = restored_version(restoration) or 0
    length = restored_history_length(restoration)
    history = [h for h in restoration.get("history") or [] if isinstance(h, dict)]
    m.history, m.history_base, m.history_acked = history, max(0, length - len(history)), length
    contract = restoration.get("contract") if isinstance(restoration.get("contract"), dict) else {}
    assert isinstance(contract, dict)
    m.phase = str(contract.get("phase") or state.get("phase") or FIRST_PHASE)
    if state.get("phase") and state.get("phase") != m.phase:
        m.full_save = True  # the state's phase is behind the contract's: save it now
    m.delivered = {
        str(d.get("id"))
        for d in contract.get("deliverables") or []
        if isinstance(d, dict) and d.get("completed")
    } & set(DELIVERABLES.get(m.phase, ()))
    m.spawned = [str(t) for t in state.get("spawnedTaskIds") or []]
    finished = {
        str(t.get("taskId", t.get("id")))
        for t in restoration.get("waitingTasks") or []
        if isinstance(t, dict) and t.get("status") in ("done", "failed", "completed")
    }
    m.running = {str(t) for t in state.get("waitingOnTaskIds") or []} - finished
    m.open_questions = pending_question_ids(restoration)
    m.answered = {
        qid
        for qid in (question_id_of(q) for q in restoration.get("answeredQuestions") or [])
        if qid is not None
    }
    m.questions_asked = len(m.open_questions) + len(m.answered)
    m.steps_in_phase = STEPS_BEFORE_DELIVERING
    m.activity = "restored"
    m.say("system", f"Restored (incarnation {m.incarnation}); continue from the last state.")
    return m


__all__ = ["Memory", "question_id_of", "restored_memory"]
