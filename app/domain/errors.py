"""Domain errors: one family, each carrying a stable code and the details a caller acts on.

    ContractError
    ├── ContractNotFound          CONTRACT_NOT_FOUND
    ├── InvalidTransition         INVALID_TRANSITION
    ├── VersionConflict           VERSION_CONFLICT
    ├── PhaseGuardRequired        PHASE_GUARD_REQUIRED
    ├── InvalidDeliverable        INVALID_DELIVERABLE
    ├── ValidationFailed          VALIDATION_FAILED
    ├── SupervisorNotFound        SUPERVISOR_NOT_FOUND
    ├── SupervisorDead            SUPERVISOR_DEAD
    └── Forbidden                 FORBIDDEN (the caller's role may not do this)

HTTP status codes and CLI exit codes are assigned at the edges (`app.http`, `app.cli`), never
here, so the same error reads the same to a worker, a daemon and a person.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final


class ContractError(Exception):
    """Base of every rule violation a caller can be told about."""

    code: str = "CONTRACT_ERROR"

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its class and what it holds, not its constructor's arguments.

        Most errors here take other arguments than the message (a contract id, a status and
        its allowed targets...), which the default pickling cannot replay; Celery's failure
        handling then swaps the error for the nearest class it *can* rebuild (this one), and a
        report refused with INVALID_DELIVERABLE was recorded as CONTRACT_ERROR."""
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[ContractError], args: tuple[Any, ...]) -> ContractError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    return error


class ContractNotFound(ContractError):
    code = "CONTRACT_NOT_FOUND"

    def __init__(self, contract_id: object) -> None:
        super().__init__(
            f"Contract {contract_id} does not exist or is not visible to you; "
            "check the id, or list your contracts with GET /api/v1/contracts.",
            {"contractId": str(contract_id)},
        )


class InvalidTransition(ContractError):
    code = "INVALID_TRANSITION"

    def __init__(self, current: str, target: str, allowed: Sequence[str]) -> None:
        allowed_text = ", ".join(allowed) if allowed else "none (it is final)"
        super().__init__(
            f"A contract cannot move from '{current}' to '{target}'. "
            f"From '{current}' it may move to: {allowed_text}.",
            {"currentStatus": current, "targetStatus": target, "allowedTargets": list(allowed)},
        )


class VersionConflict(ContractError):
    code = "VERSION_CONFLICT"

    def __init__(self, expected: int, actual: int, current_phase: str) -> None:
        super().__init__(
            f"The contract changed since you read it: you expected version {expected}, "
            f"it is at version {actual} in phase '{current_phase}'. "
            "Reload it and decide again.",
            {"expected": expected, "actual": actual, "currentPhase": current_phase},
        )


class PhaseGuardRequired(ContractError):
    code = "PHASE_GUARD_REQUIRED"

    def __init__(
        self, current_phase: str, next_phase: str, deliverables: Sequence[Mapping[str, Any]]
    ) -> None:
        super().__init__(
            f"Phase guard is enabled: moving from '{current_phase}' to '{next_phase}' needs "
            "a person's confirmation. Review the deliverables and repeat the request with "
            "confirmed=true.",
            {
                "currentPhase": current_phase,
                "nextPhase": next_phase,
                "deliverables": [dict(d) for d in deliverables],
            },
        )


class InvalidDeliverable(ContractError):
    code = "INVALID_DELIVERABLE"

    def __init__(self, deliverable_id: str, phase: str, valid_ids: Sequence[str]) -> None:
        valid_text = ", ".join(valid_ids) if valid_ids else "none"
        super().__init__(
            f"'{deliverable_id}' is not a deliverable of the '{phase}' phase. "
            f"Valid deliverable ids for '{phase}': {valid_text}.",
            {"deliverableId": deliverable_id, "phase": phase, "validIds": list(valid_ids)},
        )


class ValidationFailed(ContractError):
    code = "VALIDATION_FAILED"

    def __init__(
        self,
        message: str,
        missing: Sequence[str] = (),
        details: Mapping[str, Any] | None = None,
    ) -> None:
        merged: dict[str, Any] = {"missing": list(missing)}
        merged.update(details or {})
        super().__init__(message, merged)
        self.missing = list(missing)


class SupervisorNotFound(ContractError):
    code = "SUPERVISOR_NOT_FOUND"

    def __init__(self, contract_id: object, message: str | None = None) -> None:
        super().__init__(
            message
            or f"Contract {contract_id} has no supervisor: none has sent a heartbeat for it. "
            "Start its supervisor, then retry.",
            {"contractId": str(contract_id)},
        )


class SupervisorDead(ContractError):
    """The supervisor is not alive: silent past the timeout, declared dead, or restarted and its
    new incarnation not heard from yet. The message says which, and what will change it."""

    code = "SUPERVISOR_DEAD"

    def __init__(
        self,
        contract_id: object,
        task_id: object,
        last_received_at: datetime | None,
        dead_at: datetime | None,
        incarnation: int,
        restart_requested_at: datetime | None = None,
    ) -> None:
        heard = last_received_at.isoformat() if last_received_at else None
        last = f"its last heartbeat was received at {heard or 'an unknown time'}"
        if restart_requested_at is not None:
            why = (
                f"A restart was requested at {restart_requested_at.isoformat()}; waiting for "
                f"incarnation {incarnation} to report ({last}). Retry once it has."
            )
        elif dead_at is not None:
            why = (
                f"It was declared dead at {dead_at.isoformat()} ({last}); incarnation {incarnation} is "
                "in force and no daemon runs it. Restart it (POST .../supervisor/restart) or let its "
                "daemon restore it, then retry."
            )
        else:
            why = f"{last.capitalize()}, longer ago than the heartbeat timeout. Restart it and retry."
        super().__init__(
            f"The supervisor of contract {contract_id} is not alive. {why}",
            {
                "contractId": str(contract_id),
                "taskId": str(task_id),
                "lastReceivedAt": heard,
                "deadAt": dead_at.isoformat() if dead_at else None,
                "incarnation": incarnation,
                "restartRequestedAt": restart_requested_at.isoformat() if restart_requested_at else None,
            },
        )


class FeatureDisabled(ContractError):
    """A feature switched off in `[feature_flags]`; the HTTP front answers 503."""

    code = "FEATURE_DISABLED"

    def __init__(self, flag: str) -> None:
        super().__init__(
            f"This feature is disabled on this server (feature flag '{flag}' is off). An operator "
            f"can turn it on with [feature_flags] {flag} = true or "
            f"MAKIMA_FEATURE_FLAGS__{flag.upper()}=true.",
            {"featureFlag": flag},
        )


# Roles are always listed in this order (a person, a daemon, an operator), whoever builds the list.
ROLE_ORDER: Final = ("user", "supervisor", "admin")


def _in_role_order(roles: Sequence[str]) -> list[str]:
    known = [r for r in ROLE_ORDER if r in roles]
    return known + sorted(set(roles) - set(known))


def who_to_ask(allowed: Sequence[str]) -> str:
    """What a refused caller can do next: who holds a role that may.

    A person's decision goes to a person of the owner; a daemon's call to the owner's daemon;
    only what is the operators' alone goes to an operator.
    """
    if "user" in allowed:
        return "A person of the owner decides this (a user token)."
    if "supervisor" in allowed:
        return "It is the owner's daemon's call (a supervisor token)."
    return "Ask an operator."


class Forbidden(ContractError):
    """The caller is authenticated, but its role may not do this (batch operations: admin).

    `allowedRoles` is listed in `ROLE_ORDER`; the message ends with who to ask (`who_to_ask`,
    or the `hint` given)."""

    code = "FORBIDDEN"

    def __init__(self, action: str, role: str, allowed: Sequence[str], hint: str | None = None) -> None:
        ordered = _in_role_order(allowed)
        super().__init__(
            f"Your role '{role}' may not {action}; only {', '.join(ordered)} may. "
            f"{hint or who_to_ask(ordered)}",
            {"role": role, "allowedRoles": ordered},
        )


class SupervisorFenced(ContractError):
    """A save or report from an incarnation the server has replaced (declared dead, restarted),
    or a save naming no incarnation once the server has issued one (it cannot be told apart
    from the replaced daemon's)."""

    code = "SUPERVISOR_FENCED"

    def __init__(self, contract_id: object, task_id: object, sent: int | None, current: int) -> None:
        if sent is None:
            what = (
                f"The server issued incarnation {current} of supervisor {task_id} (a restoration, "
                "restart or declared death): a save must name the incarnation it speaks for; one "
                "without it could be the replaced daemon's and changes nothing."
            )
        else:
            what = (
                f"Incarnation {sent} of supervisor {task_id} was replaced by incarnation {current}: "
                "nothing it sends changes state."
            )
        super().__init__(
            f"{what} Restore (GET .../supervisor/restoration) to get the current incarnation.",
            {
                "contractId": str(contract_id),
                "taskId": str(task_id),
                "incarnation": sent,
                "currentIncarnation": current,
            },
        )


class IncarnationNotIssued(ContractError):
    """A save naming an incarnation the server never issued (above the one in force): only a
    restoration, a restart or a declared death issues incarnations.

    With `limit`: the incarnation a restoration's claim or a restart would issue (`sent`) is
    past the highest one there is (`app.domain.incarnations.MAX_INCARNATION`), so it is not
    issued either; the one in force goes on."""

    code = "INCARNATION_NOT_ISSUED"

    def __init__(
        self, contract_id: object, task_id: object, sent: int, current: int, *, limit: int | None = None
    ) -> None:
        details: dict[str, Any] = {
            "contractId": str(contract_id),
            "taskId": str(task_id),
            "incarnation": sent,
            "currentIncarnation": current,
        }
        if limit is None:
            super().__init__(
                f"Incarnation {sent} of supervisor {task_id} was never issued: incarnation {current} "
                "is in force. Send the incarnation you were issued; a daemon that does not know it "
                "restores (GET .../supervisor/restoration), which issues the next one.",
                details,
            )
            return
        super().__init__(
            f"Supervisor {task_id} cannot be issued incarnation {sent}: incarnation {current} is in "
            f"force and {limit} is the highest incarnation there is, so no restart or restoration "
            f"can replace it. Incarnation {current} goes on (its daemon names it with every "
            "heartbeat and save); to run the supervisor anew, start the contract's supervisor "
            "under a new task id, whose incarnations start again at 1.",
            details | {"maxIncarnation": limit},
        )


class StaleState(ContractError):
    """A state save older than the one stored: it never overwrites the newer one."""

    code = "STALE_STATE"

    def __init__(self, task_id: object, sent: tuple[int, int], stored: tuple[int, int]) -> None:
        if sent[0] < stored[0]:
            what = (
                f"Incarnation {sent[0]} of supervisor {task_id} is older than the stored save's "
                f"incarnation {stored[0]} (state version {stored[1]}): no stateVersion of incarnation "
                f"{sent[0]} can apply; it was not applied. Restore (GET .../supervisor/restoration) to "
                "get the current incarnation."
            )
        else:
            what = (
                f"State version {sent[1]} (incarnation {sent[0]}) of supervisor {task_id} is older than "
                f"the stored version {stored[1]} (incarnation {stored[0]}); it was not applied. Send a "
                "higher stateVersion."
            )
        super().__init__(
            what,
            {
                "taskId": str(task_id),
                "incarnation": sent[0],
                "stateVersion": sent[1],
                "storedIncarnation": stored[0],
                "storedStateVersion": stored[1],
            },
        )


class StateVersionReused(ContractError):
    """A save under the stored (incarnation, stateVersion) whose content is not the stored save's.

    The same key is safe only as a resend of the same save (a lost answer); a daemon whose
    state changed counts a new stateVersion, or the change would be dropped in silence.
    """

    code = "STATE_VERSION_REUSED"

    def __init__(self, task_id: object, incarnation: int, state_version: int, differs: Sequence[str]) -> None:
        super().__init__(
            f"State version {state_version} (incarnation {incarnation}) of supervisor {task_id} was "
            f"already saved with different content ({', '.join(differs)}). Resending a save must "
            "repeat it exactly; save a changed state with a higher stateVersion.",
            {
                "taskId": str(task_id),
                "incarnation": incarnation,
                "stateVersion": state_version,
                "differs": list(differs),
            },
        )


class HistoryGap(ContractError):
    """An append that starts past the end of the stored history: the messages between are missing."""

    code = "HISTORY_GAP"

    def __init__(self, task_id: object, history_from: int, stored_length: int) -> None:
        super().__init__(
            f"historyFrom is {history_from} but supervisor {task_id} has {stored_length} stored "
            f"messages: resend the history from {stored_length} (any value from 0 to "
            f"{stored_length} is accepted).",
            {"taskId": str(task_id), "historyFrom": history_from, "storedLength": stored_length},
        )


class QuestionNotFound(ContractError):
    code = "QUESTION_NOT_FOUND"

    def __init__(self, contract_id: object, question_id: object) -> None:
        super().__init__(
            f"Contract {contract_id} has no question {question_id}. List its questions with "
            f"GET /api/v1/contracts/{contract_id}/questions.",
            {"contractId": str(contract_id), "questionId": str(question_id)},
        )


class QuestionClosed(ContractError):
    """The question was answered already (with another answer) or cancelled."""

    code = "QUESTION_CLOSED"

    def __init__(self, question_id: object, status: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(
            f"Question {question_id} is {status}: it takes no other answer.",
            {"questionId": str(question_id), "status": status, **(details or {})},
        )


class QuestionIdReused(ContractError):
    """A question id asked again with other content, or the id of another contract's question.

    Asking again with the same `questionId` is safe only as a repeat of the same question; a
    new question needs a new id.
    """

    code = "QUESTION_ID_REUSED"

    def __init__(self, question_id: object, differs: Sequence[str]) -> None:
        what = f"with different content ({', '.join(differs)})" if differs else "on another contract"
        super().__init__(
            f"Question id {question_id} was already asked {what}. Asking again with the same id "
            "must repeat the same question, type, options and context; ask a new question with a "
            "new questionId.",
            {"questionId": str(question_id), "differs": list(differs)},
        )


__all__ = [
    "ContractError",
    "ContractNotFound",
    "FeatureDisabled",
    "Forbidden",
    "HistoryGap",
    "IncarnationNotIssued",
    "InvalidDeliverable",
    "InvalidTransition",
    "PhaseGuardRequired",
    "QuestionClosed",
    "QuestionIdReused",
    "QuestionNotFound",
    "StaleState",
    "StateVersionReused",
    "SupervisorDead",
    "SupervisorFenced",
    "SupervisorNotFound",
    "ValidationFailed",
    "VersionConflict",
]
