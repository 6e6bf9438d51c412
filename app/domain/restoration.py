"""Restoring a supervisor (seed 3.6): the decision and what the restoring daemon is told, as pure rules.

When a daemon restarts, the server decides how its supervisor carries on; everything here
takes and returns plain values (stdlib only), so the service (`app.restoration`) and the
tests judge alike. The stored state and checkpoint it judges are parsed by
`app.domain.state_snapshots` (`parse_snapshot`), which owns their shape.

- **Restoration** (`decide_restoration`, `next_step`): the protocol's branch — `fresh` when
  nothing is stored, `resume` when the stored state agrees with the contract and its history,
  `checkpoint` when it does not but the last checkpoint does, `fresh` again when neither is
  usable — with every inconsistency named, then the first step of 5-8 that applies. The
  stored conversation is checked in one streamed pass (`HistoryScanner`) up to the longest
  length either candidate claims (`claimed_history_length`).
- **Context** (`restoration_context`): a compact plain-text summary a supervisor can be
  given, bounded at `CONTEXT_LIMIT` bytes.
- **Notices** (`claim_notices`, `restart_notice`): what a daemon given a new incarnation must
  do from then on, worded once for the restoration and the restart that issue one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from app.domain.history_messages import Message, parse_message
from app.domain.state_snapshots import Snapshot, parse_snapshot
from app.domain.state_values import InvalidValue

# The restoration context: small enough to hand to a model as one message.
CONTEXT_LIMIT: Final = 8192
# How many ids or messages an inconsistency's detail quotes before it says "and N more".
QUOTED: Final = 5


# --- the decision ---------------------------------------------------------------------------


class Branch(StrEnum):
    FRESH = "fresh"
    CHECKPOINT = "checkpoint"
    RESUME = "resume"


class NextStep(StrEnum):
    """The protocol's steps 5-8: the first that applies."""

    START_FRESH = "start_fresh"
    REDELIVER_QUESTIONS = "redeliver_questions"
    RESUME_WAITING = "resume_waiting"
    RESUME = "resume"


class InconsistencyKind(StrEnum):
    PHASE_MISMATCH = "phase_mismatch"
    UNKNOWN_WAITED_TASKS = "unknown_waited_tasks"
    HISTORY_TRUNCATED = "history_truncated"
    HISTORY_MALFORMED = "history_malformed"
    STATE_MALFORMED = "state_malformed"


@dataclass(frozen=True, slots=True)
class Inconsistency:
    kind: InconsistencyKind
    detail: str


@dataclass(frozen=True, slots=True)
class HistoryScan:
    """What a pass over the stored conversation found, below `scanned` (the longest length
    any candidate claims): the first position with no row, and the positions whose row is not
    a valid message (the first few, with their problem, and how many in all)."""

    scanned: int
    first_missing: int | None = None
    malformed: tuple[tuple[int, str], ...] = ()
    malformed_count: int = 0

    def missing_before(self, length: int) -> int | None:
        return self.first_missing if self.first_missing is not None and self.first_missing < length else None

    def malformed_before(self, length: int) -> list[tuple[int, str]]:
        return [(seq, problem) for seq, problem in self.malformed if seq < length]


@dataclass
class HistoryScanner:
    """Builds a `HistoryScan` from rows seen in position order (one pass, bounded memory)."""

    scanned: int
    expected: int = 0
    first_missing: int | None = None
    malformed: list[tuple[int, str]] = field(default_factory=list)
    malformed_count: int = 0

    def see(self, seq: int, raw: Any) -> Message | None:
        """One stored row; returns the message, or None when it is not a valid one."""
        if seq >= self.scanned:
            return None
        if seq > self.expected and self.first_missing is None:
            self.first_missing = self.expected
        self.expected = seq + 1
        try:
            return parse_message(raw, f"message {seq}")
        except InvalidValue as exc:
            self.malformed_count += 1
            if len(self.malformed) < QUOTED:
                self.malformed.append((seq, str(exc)[:200]))
            return None

    def done(self) -> HistoryScan:
        first_missing = self.first_missing
        if first_missing is None and self.expected < self.scanned:
            first_missing = self.expected
        return HistoryScan(self.scanned, first_missing, tuple(self.malformed), self.malformed_count)


def _quote(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:QUOTED])
    return shown if len(ids) <= QUOTED else f"{shown} and {len(ids) - QUOTED} more"


def check_snapshot(
    raw: Mapping[str, Any],
    contract_phase: str,
    known_tasks: frozenset[str],
    scan: HistoryScan,
    history_intact: bool = True,
) -> tuple[Snapshot | None, list[Inconsistency]]:
    """Is this stored state restorable? The parsed snapshot (None if it does not parse) and
    every way it disagrees with the contract or with the stored conversation."""
    try:
        snapshot = parse_snapshot(raw)
    except InvalidValue as exc:
        return None, [Inconsistency(InconsistencyKind.STATE_MALFORMED, str(exc)[:300])]
    found: list[Inconsistency] = []
    if snapshot.phase != contract_phase:
        found.append(
            Inconsistency(
                InconsistencyKind.PHASE_MISMATCH,
                f"the state is in phase '{snapshot.phase}' but the contract is in '{contract_phase}'",
            )
        )
    unknown = [t for t in snapshot.waiting_on_task_ids if t not in known_tasks]
    if unknown:
        found.append(
            Inconsistency(
                InconsistencyKind.UNKNOWN_WAITED_TASKS,
                f"{len(unknown)} waited-on task(s) are not tasks of this contract: {_quote(unknown)}",
            )
        )
    missing = scan.missing_before(snapshot.history_length)
    if missing is not None:
        found.append(
            Inconsistency(
                InconsistencyKind.HISTORY_TRUNCATED,
                f"the state has {snapshot.history_length} history messages but message {missing} is missing",
            )
        )
    elif not history_intact:
        found.append(
            Inconsistency(
                InconsistencyKind.HISTORY_TRUNCATED,
                "a later save rewrote the history this checkpoint covers",
            )
        )
    bad = scan.malformed_before(snapshot.history_length)
    if bad:
        found.append(
            Inconsistency(
                InconsistencyKind.HISTORY_MALFORMED,
                "; ".join(problem for _, problem in bad)
                + (
                    f" (and {scan.malformed_count - len(bad)} more)"
                    if scan.malformed_count > len(bad)
                    else ""
                ),
            )
        )
    return snapshot, found


@dataclass(frozen=True, slots=True)
class RestorationDecision:
    """The branch taken, what is restored, and why."""

    branch: Branch
    snapshot: Snapshot | None
    inconsistencies: tuple[Inconsistency, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def history_length(self) -> int:
        return self.snapshot.history_length if self.snapshot is not None else 0


def decide_restoration(
    state: Mapping[str, Any] | None,
    checkpoint: Mapping[str, Any] | None,
    contract_phase: str,
    known_tasks: frozenset[str],
    scan: HistoryScan,
) -> RestorationDecision:
    """Steps 2-4 of the protocol: load, validate, fall back to the last checkpoint.

    `state` is the stored save (camelCase, as `snapshot_of` shapes it), `checkpoint` the
    stored checkpoint, `known_tasks` the contract's task ids, `scan` the stored conversation
    checked up to the longest length either claims.
    """
    if state is None:
        return RestorationDecision(
            Branch.FRESH,
            None,
            warnings=("No supervisor state is stored for this contract: start fresh.",),
        )
    snapshot, found = check_snapshot(state, contract_phase, known_tasks, scan)
    if snapshot is not None and not found:
        return RestorationDecision(Branch.RESUME, snapshot)
    if checkpoint is None:
        return RestorationDecision(
            Branch.FRESH,
            None,
            tuple(found),
            ("The stored state is inconsistent and no checkpoint was taken: start fresh.",),
        )
    intact = checkpoint.get("historyIntact", True) is True if isinstance(checkpoint, Mapping) else True
    marked, problems = check_snapshot(checkpoint, contract_phase, known_tasks, scan, intact)
    if marked is not None and not problems:
        return RestorationDecision(
            Branch.CHECKPOINT,
            marked,
            tuple(found),
            (
                f"The stored state is inconsistent: restored from checkpoint '{marked.checkpoint_id}' "
                f"(state version {marked.state_version}, {marked.history_length} history messages).",
            ),
        )
    why = "; ".join(f"{p.kind.value}: {p.detail}" for p in problems)
    return RestorationDecision(
        Branch.FRESH,
        None,
        tuple(found),
        (
            f"The stored state is inconsistent and the last checkpoint is not usable either ({why}): "
            "start fresh.",
        ),
    )


@dataclass(frozen=True, slots=True)
class WaitedTask:
    """A waited-on task and what the contract knows of it now."""

    task_id: str
    name: str | None
    status: str | None
    exists: bool

    @property
    def unfinished(self) -> bool:
        return self.exists and self.status == "running"


def next_step(decision: RestorationDecision, open_questions: int, waiting: Sequence[WaitedTask]) -> NextStep:
    """Steps 5-8: re-deliver open questions, else resume waiting on unfinished tasks, else resume.

    A restoration that found nothing to restore starts fresh (step 2's "not found" branch,
    taken by `fresh` whatever the reason).
    """
    if decision.snapshot is None:
        return NextStep.START_FRESH
    if open_questions:
        return NextStep.REDELIVER_QUESTIONS
    if any(t.unfinished for t in waiting):
        return NextStep.RESUME_WAITING
    return NextStep.RESUME


# --- the restoration context ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenQuestion:
    question: str
    question_type: str
    options: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReceivedAnswer:
    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class ContextFacts:
    """Everything the context summarises, as plain values."""

    contract_name: str
    contract_type: str
    status: str
    phase: str
    version: int
    deliverables_done: tuple[str, ...]
    deliverables_missing: tuple[str, ...]
    decision: RestorationDecision
    next: NextStep
    waiting: tuple[WaitedTask, ...] = ()
    questions: tuple[OpenQuestion, ...] = ()
    answers: tuple[ReceivedAnswer, ...] = ()
    history_kept: int = 0
    # How many questions are open in all; `questions` are the ones the restoration carries
    # (the oldest, bounded by count and size). None: `questions` are all of them.
    open_question_count: int | None = None


def _clip(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _listed(items: Sequence[str], per_item: int, most: int = 10) -> str:
    shown = [_clip(i, per_item) for i in items[:most]]
    rest = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(shown) + rest if shown else "none"


def _open_questions(facts: ContextFacts) -> str:
    """How many questions are open, and where the ones the restoration does not carry are."""
    carried = len(facts.questions)
    count = facts.open_question_count if facts.open_question_count is not None else carried
    if count <= carried:
        return str(count)
    return (
        f"{count}; {carried} in pendingQuestions, read the others with "
        "GET .../questions?open=true&after=<pendingQuestionsNextAfter>"
    )


_NEXT_TEXT: Final = {
    NextStep.START_FRESH: "Start fresh: plan the current phase from the contract's state.",
    NextStep.REDELIVER_QUESTIONS: "Re-deliver the open questions to the user and wait for their answers.",
    NextStep.RESUME_WAITING: "Resume waiting for the unfinished tasks above.",
    NextStep.RESUME: "Resume from the last state.",
}


def restoration_context(facts: ContextFacts) -> str:
    """A compact plain-text summary of where the supervisor stands, ≤ CONTEXT_LIMIT bytes."""
    d = facts.decision
    lines = [
        f"Contract: {_clip(facts.contract_name, 200)} (type {_clip(facts.contract_type, 100)}), status "
        f"{facts.status}, phase {facts.phase}, version {facts.version}.",
        f"Deliverables of {facts.phase}: done: {_listed(facts.deliverables_done, 100)}; "
        f"missing: {_listed(facts.deliverables_missing, 100)}.",
    ]
    snap = d.snapshot
    if d.branch is Branch.RESUME and snap is not None:
        lines.append(
            f"Restored: the last saved state (incarnation {snap.incarnation}, version {snap.state_version})."
        )
    elif d.branch is Branch.CHECKPOINT and snap is not None:
        lines.append(
            f"Restored: checkpoint '{_clip(snap.checkpoint_id or '', 100)}' (version {snap.state_version}); "
            "the later state was inconsistent."
        )
    else:
        lines.append("Restored: nothing (starting fresh).")
    for problem in d.inconsistencies[:QUOTED]:
        lines.append(f"Inconsistent: {problem.kind.value}: {_clip(problem.detail, 300)}")
    if snap is not None:
        lines.append(
            f"Your state: {snap.state.value} in phase {snap.phase}, progress {snap.progress}%, "
            f"activity: {_clip(snap.current_activity, 300) or '(none)'}."
        )
        if snap.error:
            lines.append(f"Error: {_clip(snap.error, 300)}")
        lines.append(f"Tasks you spawned: {len(snap.spawned_task_ids)}.")
    if facts.waiting:
        shown = [
            f"{_clip(t.name or t.task_id, 80)} ({t.status if t.exists else 'unknown task'})"
            for t in facts.waiting
        ]
        lines.append(f"Waiting on {len(facts.waiting)} task(s): {_listed(shown, 120)}.")
    if facts.questions:
        lines.append(f"Open questions ({_open_questions(facts)}):")
        for q in facts.questions[:QUOTED]:
            options = f" [options: {_listed(q.options, 60, 8)}]" if q.options else ""
            lines.append(f"- ({q.question_type}) {_clip(q.question, 300)}{options}")
    if facts.answers:
        lines.append(f"Answers received ({len(facts.answers)}):")
        for a in facts.answers[:QUOTED]:
            lines.append(f"- {_clip(a.question, 200)} -> {_clip(a.answer, 300)}")
    if snap is not None:
        lines.append(
            f"History: {snap.history_length} messages restored ({facts.history_kept} sent with this "
            "restoration; read older ones from .../supervisor/history)."
        )
    lines.append(f"Next: {_NEXT_TEXT[facts.next]}")
    text = "\n".join(lines)
    encoded = text.encode("utf-8")
    if len(encoded) <= CONTEXT_LIMIT:
        return text
    return encoded[: CONTEXT_LIMIT - 4].decode("utf-8", "ignore") + "\n…"


# --- what the stored state claims -----------------------------------------------------------


def claimed_history_length(raw: Any) -> int:
    """How many history messages a stored state (or checkpoint) says it has; 0 when it says
    nothing usable (the scan then reads no further than the other candidate claims)."""
    value = raw.get("historyLength") if isinstance(raw, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def waited_task_ids(raw: Any) -> list[str]:
    """The task ids a stored state (or checkpoint) says it waits on, unchecked: the service
    looks them up among the contract's tasks before the decision judges them."""
    ids = raw.get("waitingOnTaskIds") if isinstance(raw, dict) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []


# --- what the daemon is told ----------------------------------------------------------------


def claim_notices(
    incarnation: int, daemon_id: str | None, redirected: int, questions_pending: bool
) -> list[str]:
    """What a daemon that claimed its supervisor must do from now on: send the incarnation it
    was issued, and where the answers to pending questions go (to it, once it named itself)."""
    notices = [
        f"Send incarnation {incarnation} with every heartbeat and state save: saves without it, or "
        "with an older one, are fenced (SUPERVISOR_FENCED)."
    ]
    if daemon_id is not None:
        if redirected:
            notices.append(
                f"The answers to {redirected} pending question(s) will come to daemon {daemon_id}."
            )
    elif questions_pending:
        notices.append(
            "Name your daemon (daemonId) when restoring, so answers to pending questions come to you."
        )
    return notices


def restart_notice(new: int) -> str:
    """What a restarted supervisor must do: the older incarnation is fenced from now on."""
    return (
        f"The restarted supervisor sends incarnation {new} with every heartbeat and state save; "
        "saves without it, or with an older one, are fenced (SUPERVISOR_FENCED)."
    )


__all__ = [
    "CONTEXT_LIMIT",
    "QUOTED",
    "Branch",
    "ContextFacts",
    "HistoryScan",
    "HistoryScanner",
    "Inconsistency",
    "InconsistencyKind",
    "NextStep",
    "OpenQuestion",
    "ReceivedAnswer",
    "RestorationDecision",
    "WaitedTask",
    "check_snapshot",
    "claim_notices",
    "claimed_history_length",
    "decide_restoration",
    "next_step",
    "restart_notice",
    "restoration_context",
    "waited_task_ids",
]
