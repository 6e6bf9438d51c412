"""The answers the service gives, as typed models: one class per response body.

Why a module of its own: every caller of the API module (the HTTP front, the CLI, a daemon's
Python client, the tests) reads the same objects, and the HTTP front publishes exactly these
classes in its OpenAPI schema, so what the documentation promises is what the code returns.
Field names are snake_case in Python and camelCase on the wire (`alias_generator=to_camel`,
`serialize_by_alias`); `.model_dump(mode="json")` gives the JSON a client receives.

Timestamps leave as `datetime.isoformat()` (`+00:00`, not pydantic's `Z`), the format the
service has always answered, so a client that compares or parses them sees no change.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema
from pydantic.alias_generators import to_camel

from app.domain.completion import CompletionAction, Readiness
from app.domain.lifecycle import Status, WaitingFor


def _iso(value: datetime) -> str:
    return value.isoformat()


Timestamp = Annotated[
    datetime,
    PlainSerializer(_iso, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


class Schema(BaseModel):
    """Base of every response model: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )


# --- errors -----------------------------------------------------------------------------


class ErrorCode(StrEnum):
    """Every `error.code` the service answers; stable, so clients may switch on them."""

    # The domain's rules (the same codes a worker, the CLI and a daemon see).
    CONTRACT_NOT_FOUND = "CONTRACT_NOT_FOUND"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    PHASE_GUARD_REQUIRED = "PHASE_GUARD_REQUIRED"
    INVALID_DELIVERABLE = "INVALID_DELIVERABLE"
    VALIDATION_FAILED = "VALIDATION_FAILED"
    SUPERVISOR_NOT_FOUND = "SUPERVISOR_NOT_FOUND"
    SUPERVISOR_DEAD = "SUPERVISOR_DEAD"
    SUPERVISOR_FENCED = "SUPERVISOR_FENCED"
    INCARNATION_NOT_ISSUED = "INCARNATION_NOT_ISSUED"
    STALE_STATE = "STALE_STATE"
    STATE_VERSION_REUSED = "STATE_VERSION_REUSED"
    HISTORY_GAP = "HISTORY_GAP"
    QUESTION_NOT_FOUND = "QUESTION_NOT_FOUND"
    QUESTION_CLOSED = "QUESTION_CLOSED"
    QUESTION_ID_REUSED = "QUESTION_ID_REUSED"
    # The HTTP edge's, for requests that never reach a rule.
    INVALID_REQUEST = "INVALID_REQUEST"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    # The broker (Redis) did not take the message: nothing was sent, retry after Retry-After.
    BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
    # The database connection broke (restart, failover): nothing was applied, retry.
    DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"
    # A capability switched off in `[feature_flags]` (e.g. monitoring_dashboard): 404.
    FEATURE_DISABLED = "FEATURE_DISABLED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class ErrorDetail(Schema):
    code: ErrorCode = Field(description="Stable machine-readable code, e.g. VERSION_CONFLICT.")
    message: str = Field(description="A sentence a person can act on.")
    details: dict[str, Any] = Field(
        description="What the caller needs to act: valid ids, missing requirements, versions, problems."
    )


class ErrorBody(Schema):
    """The shape of every error this service answers."""

    error: ErrorDetail


# --- contracts --------------------------------------------------------------------------


class DeliverableState(Schema):
    """One deliverable of the contract's current phase, and whether it is done."""

    id: str
    name: str
    required: bool = Field(description="The phase's gate needs it before the phase can be left.")
    completed: bool
    completed_at: Timestamp | None = None


class TaskCounts(Schema):
    """The tasks spawned in the contract's current phase, by state."""

    total: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0


class Contract(Schema):
    """A contract as its owner sees it, with the progress of its current phase."""

    id: uuid.UUID
    owner_id: str
    name: str
    contract_type: str
    phase_config: dict[str, Any] | None = Field(
        description="The contract's own phases, when it brought them. Left out (null) in a page "
        "of contracts; read the contract itself for it."
    )
    phase: str
    status: Status
    version: int = Field(description="Bumped by every phase change; send it as expectedVersion.")
    phase_guard: bool
    auto_complete_enabled: bool
    status_changed_at: Timestamp
    last_activity_at: Timestamp
    waiting_for: WaitingFor | None
    blocked_reason: str | None
    failure_reason: str | None
    completion_detected_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    deliverables: list[DeliverableState] = Field(
        default_factory=list, description="The current phase's deliverables, in the phase's order."
    )
    tasks: TaskCounts = Field(
        default_factory=TaskCounts, description="The current phase's tasks, counted by state."
    )


class ContractPage(Schema):
    """One page of contracts, newest first."""

    contracts: list[Contract]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last.")
    truncated: bool = Field(
        False,
        description="True when the page stopped early at the size bound (4 MiB of JSON) before "
        "`limit` contracts: read on from `nextCursor`.",
    )


class ChangeStatusResponse(Schema):
    """The outcome of a status change, with the contract as it now is."""

    success: bool
    previous_status: Status
    new_status: Status
    rejection_reason: str | None = None
    contract: Contract


class DeliverableCompletion(Schema):
    """A deliverable was marked complete (or already was)."""

    deliverable_id: str
    phase: str
    already_complete: bool = Field(description="It was complete before this call; nothing changed.")
    contract: Contract


class PhaseReadiness(Schema):
    """Whether the current phase's gate is met, and what is still missing."""

    phase: str
    ready: bool
    readiness: Readiness
    missing: list[str]
    auto_advance_enabled: bool = Field(description="The contract would move on by itself once ready.")


class CompletionCheck(Schema):
    """The gate judged now, and what the check did about it (`action`, explained in `note`)."""

    ready: bool
    would_complete: bool
    missing: list[str]
    action: CompletionAction = Field(
        description="completion_started: the contract is now `completing`; evaluation_queued: "
        "a worker will advance the phase; none: nothing to do (see `note`)."
    )
    status: str = Field(description="The contract's status after the check.")
    note: str = Field(description="Why this action, in a sentence a person can act on.")


class Event(Schema):
    """One entry of a contract's history."""

    id: int = Field(description="Increases with every event; pass the last one you saw as `after`.")
    contract_id: uuid.UUID
    type: str = Field(description="snake_case, e.g. status_changed, phase_changed, deliverable_completed.")
    payload: dict[str, Any]
    created_at: Timestamp


class EventPage(Schema):
    """Events in id order, and the id to continue after."""

    events: list[Event]
    last_event_id: int = Field(description="The last event's id, or `after` when there was none.")


class Accepted(Schema):
    """The report was queued and will be applied shortly; resending the same messageId is harmless."""

    message_id: str


# --- the service itself -----------------------------------------------------------------


class Liveness(Schema):
    """The process is up and serving."""

    status: Literal["ok"] = "ok"


class DependencyCheck(Schema):
    """One dependency's probe: reachable or not, and why not."""

    ok: bool
    error: str | None = Field(None, description="Why the dependency is unreachable; null when ok.")


class DependencyChecks(Schema):
    database: DependencyCheck
    broker: DependencyCheck


class ServiceReadiness(Schema):
    """Whether the service can do its work now: its database and broker both answer."""

    status: Literal["ready", "unavailable"]
    checks: DependencyChecks


class ServiceIndex(Schema):
    """Where to go from the root: the documentation, the schema and the probes."""

    name: str
    docs: str
    redoc: str
    openapi: str
    health: str
    ready: str


__all__ = [
    "Accepted",
    "ChangeStatusResponse",
    "CompletionCheck",
    "Contract",
    "ContractPage",
    "DeliverableCompletion",
    "DeliverableState",
    "DependencyCheck",
    "DependencyChecks",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "Event",
    "EventPage",
    "Liveness",
    "PhaseReadiness",
    "Schema",
    "ServiceIndex",
    "ServiceReadiness",
    "TaskCounts",
    "Timestamp",
]


# --- dashboard (seed 4.4, `app.dashboard`) ----------------------------------------------------


class StaleContractInfo(Schema):
    """A contract the stale rule picks (active or created, silent longer than the threshold)."""

    id: uuid.UUID
    name: str
    phase: str
    status: Status
    last_activity: Timestamp
    stale_duration_secs: int = Field(description="Seconds since the last activity.")


class OpenQuestion(Schema):
    """An open question of a waiting contract: what a person needs to answer it."""

    id: uuid.UUID
    question: str
    type: str = Field(description="free_text, single_choice, multiple_choice or confirmation.")
    options: list[str] = Field(description="The choices of a single_choice or multiple_choice question.")
    context: str | None
    asked_at: Timestamp


class WaitingContractInfo(Schema):
    """A contract in `waiting_for_input` and what it waits for."""

    id: uuid.UUID
    name: str
    phase: str
    waiting_for: str = Field(description="question, phase_confirmation or completion_confirmation.")
    waiting_since: Timestamp
    question: str | None = Field(
        default=None, description="The oldest open question's text; null when none is open."
    )
    open_questions: list[OpenQuestion] = Field(
        default_factory=list,
        description="Its open questions, oldest first (at most 20): answer each with "
        "POST .../questions/{questionId}/answer.",
    )


class ResourceUsage(Schema):
    active_supervisors: int = Field(description="Supervisors alive and heard within the heartbeat timeout.")
    running_tasks: int = Field(description="Spawned tasks (not supervisors) in status running.")
    pending_tasks: int = Field(description="Task ids the live supervisors report as pending.")
    active_daemons: int = Field(description="Daemons with a supervisor heard within the heartbeat timeout.")
    worktrees: int = Field(description="Worktrees open: reported, neither released nor removed.")


class WorktreeCounts(Schema):
    """Worktrees by state: per contract, per daemon, for the fleet."""

    open: int = Field(description="Reported created, not yet asked to be removed")
    released: int = Field(description="Its daemon was asked to remove it; not yet reported removed")
    removed: int = Field(description="Reported removed by its daemon")


class Dashboard(Schema):
    """The dashboard summary of the caller's contracts (an admin's: every owner's)."""

    status_counts: dict[str, int] = Field(description="Contracts by status (every status, 0 included).")
    phase_counts: dict[str, int] = Field(description="Active contracts by phase.")
    stale_contracts: list[StaleContractInfo] = Field(description="Oldest silence first, at most 50.")
    stale_count: int = Field(description="All stale contracts (the list may be cut at 50).")
    waiting_for_input: list[WaitingContractInfo] = Field(description="Longest wait first, at most 50.")
    waiting_count: int
    recent_events: list[Event] = Field(description="The newest events, newest first.")
    resource_usage: ResourceUsage
    worktrees: WorktreeCounts = Field(description="Every worktree of your contracts, by state.")
    generated_at: Timestamp


__all__ += ["Dashboard", "ResourceUsage", "StaleContractInfo", "WaitingContractInfo", "WorktreeCounts"]


class WhoAmI(Schema):
    """The principal a token stands for: what a page or a daemon shows as "signed in as"."""

    principal_id: uuid.UUID
    owner_id: str = Field(description="The owner whose contracts you see (an admin sees every owner's).")
    role: Literal["user", "supervisor", "admin"]


__all__ += ["WhoAmI"]
