"""Contract statuses and the one table of moves between them (seed section 1.4).

The table is plain data so it can be read, rendered and checked by tests; the guards that
need stored facts (a blocker named, a failure reason given) are checked by `check_transition`
from the values passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from app.domain.errors import InvalidTransition, ValidationFailed


class Status(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    WAITING_FOR_INPUT = "waiting_for_input"
    PAUSED = "paused"
    BLOCKED = "blocked"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    ARCHIVED = "archived"

    @classmethod
    def terminal(cls) -> frozenset[Status]:
        """Statuses where work is over: nothing but archiving may follow."""
        return frozenset({cls.COMPLETED, cls.FAILED, cls.ARCHIVED})

    @classmethod
    def open(cls) -> frozenset[Status]:
        """Statuses of a contract still being worked on; `failed` is reachable from each."""
        return frozenset(set(cls) - cls.terminal())

    @classmethod
    def accepting_phase_changes(cls) -> frozenset[Status]:
        """A phase moves only while work is live: not before a supervisor starts, not paused."""
        return frozenset({cls.ACTIVE, cls.WAITING_FOR_INPUT})


class WaitingFor(StrEnum):
    QUESTION = "question"
    PHASE_CONFIRMATION = "phase_confirmation"
    COMPLETION_CONFIRMATION = "completion_confirmation"


_S = Status

ALLOWED: Final[Mapping[Status, frozenset[Status]]] = MappingProxyType(
    {
        _S.CREATED: frozenset({_S.ACTIVE, _S.FAILED}),
        _S.ACTIVE: frozenset({_S.WAITING_FOR_INPUT, _S.PAUSED, _S.BLOCKED, _S.COMPLETING, _S.FAILED}),
        _S.WAITING_FOR_INPUT: frozenset({_S.ACTIVE, _S.PAUSED, _S.FAILED}),
        _S.PAUSED: frozenset({_S.ACTIVE, _S.FAILED}),
        _S.BLOCKED: frozenset({_S.ACTIVE, _S.FAILED}),
        _S.COMPLETING: frozenset({_S.COMPLETED, _S.ACTIVE, _S.FAILED}),
        _S.COMPLETED: frozenset({_S.ARCHIVED}),
        _S.FAILED: frozenset({_S.ARCHIVED}),
        _S.ARCHIVED: frozenset(),
    }
)


def allowed_targets(current: Status) -> list[str]:
    """The statuses reachable from `current`, sorted so messages and details are stable."""
    return sorted(s.value for s in ALLOWED[current])


def check_transition(
    current: Status,
    target: Status,
    *,
    reason: str | None = None,
    blocker: str | None = None,
) -> None:
    """Raise unless `current → target` is in the table and its guard's facts are present.

    `blocked` must name what blocks it and `failed` must say why: a contract stuck without
    that sentence is one nobody can unstick.
    """
    current, target = Status(current), Status(target)
    if target not in ALLOWED[current]:
        raise InvalidTransition(current.value, target.value, allowed_targets(current))
    if target is Status.BLOCKED and not (blocker and blocker.strip()):
        raise ValidationFailed(
            "Moving a contract to 'blocked' needs a 'blocker' naming what blocks it.",
            missing=["blocker"],
        )
    if target is Status.FAILED and not (reason and reason.strip()):
        raise ValidationFailed(
            "Moving a contract to 'failed' needs a 'reason' saying what went wrong.",
            missing=["reason"],
        )


def decision_for_a_person(current: Status, target: Status) -> str | None:
    """Which moves settle something a person was asked to decide; None for any other move.

    A contract `completing` waits for a person to confirm early or reject (`completed` /
    `active`); one `waiting_for_input` waits for a person's answer (leaving to `active` or
    `paused` settles or sets aside that question). A supervisor may still
    report failure (`failed`) from either: that is a fact about the work, not a decision.
    """
    if current is Status.COMPLETING and target in (Status.COMPLETED, Status.ACTIVE):
        return "confirm or reject a completion"
    if current is Status.WAITING_FOR_INPUT and target in (Status.ACTIVE, Status.PAUSED):
        return "answer or set aside what the contract is waiting for"
    return None


# The closed statuses as stored (text), for the hot paths that judge a status per heartbeat.
CLOSED_STATUSES: Final = frozenset(s.value for s in Status.terminal())


def closed_refusal(status: str, what: str, field: str | None = None) -> ValidationFailed | None:
    """The refusal of more `what` (e.g. "supervisor state saves") on a contract whose stored
    `status` is closed (completed, failed, archived: its work is over), else None. `field`
    names the request field that chose the contract, where one did (a heartbeat's
    contractId). Every writer that refuses closed contracts words it this way."""
    if status not in CLOSED_STATUSES:
        return None
    details: dict[str, str] = {"status": status}
    if field is not None:
        details["field"] = field
    return ValidationFailed(
        f"The contract is '{status}': no more {what} can be recorded on it.", details=details
    )


def render_table() -> str:
    """The transition table as markdown, for the README and for people reading a failure."""
    lines = ["| from | may move to |", "|---|---|"]
    for status in Status:
        targets = ", ".join(allowed_targets(status)) or "(nothing; deleted by retention)"
        lines.append(f"| {status.value} | {targets} |")
    return "\n".join(lines)


__all__ = [
    "ALLOWED",
    "CLOSED_STATUSES",
    "Status",
    "WaitingFor",
    "allowed_targets",
    "check_transition",
    "closed_refusal",
    "render_table",
]
