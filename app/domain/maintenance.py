"""Scheduled maintenance and batch operations as pure rules: who is stale, whose input timed
out, what retention may delete, which contracts a batch operation acts on and how.

Every rule takes the clock (`now`) and the thresholds as arguments and reads plain values,
so the sweeps, the batch runner, the list's `stale` filter and the dashboard all judge a
contract by the same definition; their SQL translates these rules (`app.sweeps`,
`app.batch`) and re-checks each contract here once it holds its row lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from app.domain.errors import ValidationFailed
from app.domain.lifecycle import Status

# --- staleness (seed 1.5, 4.2) ---------------------------------------------------------------

# A contract is stale when its supervisor is expected to be working and nothing has been
# heard for longer than the threshold: `active`, or `created` (its supervisor never started).
# Paused, blocked, waiting and completing contracts wait on a person or a timer, and their
# own rules (input timeout, completion grace) deal with them; finished ones never are stale.
STALE_STATUSES: Final = frozenset({Status.ACTIVE, Status.CREATED})


def stale_cutoff(now: datetime, threshold: timedelta) -> datetime:
    """Last activity before this instant is stale."""
    return now - threshold


def is_stale(status: Status, last_activity_at: datetime, now: datetime, threshold: timedelta) -> bool:
    return status in STALE_STATUSES and last_activity_at < stale_cutoff(now, threshold)


class StaleStep(StrEnum):
    """What the stale sweep does about one contract."""

    NONE = "none"
    DETECT = "detect"  # a new episode: record `stale_detected` once
    CLEAR = "clear"  # activity returned (or the contract left the stale statuses): `stale_cleared`


def stale_step(
    *,
    stale_now: bool,
    episode_activity: datetime | None,
    last_activity_at: datetime,
) -> StaleStep:
    """One stale episode per silence: detected once, cleared once when activity returns.

    `episode_activity` is the last activity recorded when the open episode was detected
    (None when no episode is open). Activity since then ends the episode, even if the
    contract would be stale again by now: the next run opens a new episode for the new
    silence, so the history shows both.
    """
    if episode_activity is None:
        return StaleStep.DETECT if stale_now else StaleStep.NONE
    if last_activity_at > episode_activity or not stale_now:
        return StaleStep.CLEAR
    return StaleStep.NONE


# --- input timeout (seed 1.4: WaitingForInput -> Paused on timeout) --------------------------


def input_timed_out(status: Status, waiting_since: datetime, now: datetime, timeout: timedelta) -> bool:
    """Waiting for a person longer than the timeout: the contract is paused (seed table 1.4)."""
    return status is Status.WAITING_FOR_INPUT and waiting_since <= now - timeout


def input_timeout_reason(timeout: timedelta) -> str:
    hours = timeout.total_seconds() / 3600
    return f"input timeout: no answer within {hours:g} h"


# --- retention -------------------------------------------------------------------------------


def retention_cutoff(now: datetime, retention: timedelta) -> datetime:
    return now - retention


def may_delete(status: Status, archived_at: datetime, now: datetime, retention: timedelta) -> bool:
    """Only an archived contract, archived longer ago than the retention, is ever deleted."""
    return status is Status.ARCHIVED and archived_at < retention_cutoff(now, retention)


# --- batch operations (seed 4.3, plan 5.3) ---------------------------------------------------


class Operation(StrEnum):
    ARCHIVE_OLD = "archive_old"
    PAUSE_ALL = "pause_all"
    RESUME_ALL = "resume_all"
    CLEANUP_ARCHIVED = "cleanup_archived"
    RESTART_STALE = "restart_stale"


MAX_HOURS: Final = 3650 * 24.0  # ten years, like the list's threshold
DEFAULT_ARCHIVE_STATUSES: Final = (Status.COMPLETED, Status.FAILED)


@dataclass(frozen=True, slots=True)
class ContractFacts:
    """What a batch rule reads of one contract."""

    status: Status
    status_changed_at: datetime
    last_activity_at: datetime


@dataclass(frozen=True, slots=True)
class BatchOperation:
    """One batch request, judged against `as_of` (the time it was accepted), so a batch that
    resumes after a crash selects by the same cut-off it started with."""

    operation: Operation
    older_than: timedelta | None = None
    statuses: tuple[Status, ...] = ()
    reason: str | None = None
    stale_threshold: timedelta | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> Status | None:
        """The status each contract is moved to; None where the action is not a move."""
        return {
            Operation.ARCHIVE_OLD: Status.ARCHIVED,
            Operation.PAUSE_ALL: Status.PAUSED,
            Operation.RESUME_ALL: Status.ACTIVE,
        }.get(self.operation)

    @property
    def selected_statuses(self) -> tuple[Status, ...]:
        """The statuses a contract must be in to be selected at all."""
        match self.operation:
            case Operation.ARCHIVE_OLD:
                return self.statuses
            case Operation.PAUSE_ALL:
                return (Status.ACTIVE,)
            case Operation.RESUME_ALL:
                return (Status.PAUSED,)
            case Operation.CLEANUP_ARCHIVED:
                return (Status.ARCHIVED,)
            case Operation.RESTART_STALE:
                return tuple(sorted(STALE_STATUSES))
        raise AssertionError(self.operation)  # pragma: no cover

    def cutoff(self, as_of: datetime) -> datetime | None:
        """Contracts must have changed status (or, for restart_stale, been active) before this."""
        if self.operation is Operation.RESTART_STALE and self.stale_threshold is not None:
            return stale_cutoff(as_of, self.stale_threshold)
        if self.older_than is not None:
            return as_of - self.older_than
        return None

    @property
    def cutoff_column(self) -> str | None:
        """Which timestamp the cut-off applies to."""
        if self.operation is Operation.RESTART_STALE:
            return "last_activity_at"
        return "status_changed_at" if self.older_than is not None else None

    def selects(self, facts: ContractFacts, as_of: datetime) -> bool:
        """Does the contract (as it is now, under its lock) still belong to this batch?"""
        if facts.status not in self.selected_statuses:
            return False
        cutoff = self.cutoff(as_of)
        if cutoff is None:
            return True
        if self.operation is Operation.RESTART_STALE:
            return facts.last_activity_at < cutoff
        return facts.status_changed_at < cutoff

    def event_reason(self, batch_id: object) -> str:
        """The reason recorded on each contract's status change."""
        if self.operation is Operation.PAUSE_ALL and self.reason:
            return self.reason
        return f"batch {self.operation.value} ({batch_id})"


def _duration(raw: Any, name: str, unit: str = "hours") -> timedelta:
    """A positive number of hours (or minutes) up to ten years, or a refusal naming the field."""
    limit = MAX_HOURS if unit == "hours" else MAX_HOURS * 60
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 < raw <= limit:
        raise ValidationFailed(
            f"{name} must be a number of {unit} above 0 and at most {limit:g}.",
            details={"field": name, "given": raw},
        )
    return timedelta(**{unit: float(raw)})


def parse_batch_operation(operation: str, parameters: Mapping[str, Any]) -> BatchOperation:
    """A batch request from its stored (camelCase) parameters; refuses what makes no sense."""
    try:
        op = Operation(operation)
    except ValueError:
        raise ValidationFailed(
            f"'{operation}' is not a batch operation. Operations: {', '.join(o.value for o in Operation)}.",
            details={"operation": operation, "validOperations": [o.value for o in Operation]},
        ) from None
    params = dict(parameters)
    match op:
        case Operation.ARCHIVE_OLD:
            raw = params.get("statusFilter") or [s.value for s in DEFAULT_ARCHIVE_STATUSES]
            statuses = tuple(dict.fromkeys(Status(s) for s in raw))
            older_than = _duration(params.get("olderThanHours"), "olderThanHours")
            return BatchOperation(op, older_than=older_than, statuses=statuses, parameters=params)
        case Operation.PAUSE_ALL:
            reason = params.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                raise ValidationFailed("pause_all needs a reason.", missing=["reason"])
            return BatchOperation(op, reason=reason, parameters=params)
        case Operation.RESUME_ALL:
            return BatchOperation(op, parameters=params)
        case Operation.CLEANUP_ARCHIVED:
            older_than = _duration(params.get("olderThanHours"), "olderThanHours")
            return BatchOperation(op, older_than=older_than, parameters=params)
        case Operation.RESTART_STALE:
            threshold = _duration(params.get("staleThresholdMinutes"), "staleThresholdMinutes", "minutes")
            return BatchOperation(op, stale_threshold=threshold, parameters=params)
    raise AssertionError(op)  # pragma: no cover


__all__ = [
    "DEFAULT_ARCHIVE_STATUSES",
    "STALE_STATUSES",
    "BatchOperation",
    "ContractFacts",
    "Operation",
    "StaleStep",
    "input_timed_out",
    "input_timeout_reason",
    "is_stale",
    "may_delete",
    "parse_batch_operation",
    "retention_cutoff",
    "stale_cutoff",
    "stale_step",
]
