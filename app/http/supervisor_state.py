"""Supervisor persistent state, restoration and restart over HTTP (seed 3.4, 3.6, 3.7).

- `POST .../supervisor/state`: save (a supervisor's or admin's call); ordered by (incarnation,
  stateVersion), the history appended in increments.
- `GET .../supervisor/state`, `GET .../supervisor/history`: read what is stored.
- `GET .../supervisor/restoration`: what a restarted daemon needs; a supervisor's call claims
  the supervisor and is issued its new incarnation, anyone else's is a preview.
- `POST .../supervisor/restart`: a person's or operator's restart (202, a daemon command).

Each handler is one call on the caller's `ContractsAPI`. With the `supervisor_heartbeat`
feature flag off, every endpoint here answers 503 FEATURE_DISABLED.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, status
from pydantic import Field

from app.domain.daemon_ids import MAX_DAEMON_ID
from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import MAX_ACTIVITY, MAX_HOST, MAX_PHASE
from app.domain.state_values import (
    MAX_APPEND,
    MAX_CHECKPOINT_ID,
    MAX_CONTENT,
    MAX_ERROR,
    MAX_HISTORY_POSITION,
    MAX_MESSAGE_NAME,
    MAX_NOTE,
    MAX_STATE_VERSION,
    MAX_TASK_IDS,
    MAX_TOOL_CALL_ID,
)
from app.history_reads import MAX_HISTORY_PAGE, HistoryPage
from app.http.bodies import MessageTime, SafeStr, UUIDText, _Body
from app.http.deps import Api, ContractId
from app.http.errors import API_PREFIX, error_responses
from app.http.routing import ParsedJSONRoute
from app.restoration import MAX_HISTORY_LIMIT, Restoration
from app.schemas import ErrorCode
from app.state_reads import SupervisorStateView
from app.state_saves import StateSaved
from app.supervisor_restart import MAX_REASON, RestartRequested

E = ErrorCode
CONTRACT = "/{id:uuid}"
SUPERVISOR = API_PREFIX + CONTRACT + "/supervisor"

# Ids by the heartbeat's rule (`UUIDText`): braces or a urn:uuid: prefix are a 422 naming the field.
TaskIdField = UUIDText
TaskIdQuery = Annotated[
    UUIDText | None,
    Query(
        alias="taskId",
        description="The supervisor's task id; omitted: the contract's most recently saved supervisor",
    ),
]

router = APIRouter(
    route_class=ParsedJSONRoute,
    tags=["supervisor state"],
    responses=error_responses(
        E.UNAUTHENTICATED, E.INVALID_REQUEST, E.CONTRACT_NOT_FOUND, E.FEATURE_DISABLED, E.INTERNAL_ERROR
    ),
)


class MessageBody(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: SafeStr = Field(max_length=MAX_CONTENT)
    name: SafeStr | None = Field(None, min_length=1, max_length=MAX_MESSAGE_NAME)
    tool_call_id: SafeStr | None = Field(None, min_length=1, max_length=MAX_TOOL_CALL_ID)
    # Read by the save's rule, so a time without a zone is a 422 problem saying it has none.
    at: MessageTime | None = Field(None, description="With a time zone (2026-01-31T10:30:00Z)")


class CheckpointBody(_Body):
    id: SafeStr = Field(min_length=1, max_length=MAX_CHECKPOINT_ID, description="Your name for this point")
    note: SafeStr | None = Field(None, max_length=MAX_NOTE)


class SaveStateRequest(_Body):
    """One save of the supervisor's persistent state."""

    task_id: TaskIdField = Field(description="The supervisor's task id")
    incarnation: int | None = Field(
        None,
        ge=1,
        le=MAX_INCARNATION,
        description="The incarnation the server issued you (restoration, restart). May be omitted "
        "only while incarnation 1 is in force (never restored, restarted or declared dead); "
        "afterwards a save without it is SUPERVISOR_FENCED, one above the one in force "
        "INCARNATION_NOT_ISSUED",
    )
    state_version: int = Field(
        ge=0,
        le=MAX_STATE_VERSION,
        description="Orders saves within an incarnation: higher is newer; the stored one again is a "
        "duplicate (applied: false) when the body is the same, STATE_VERSION_REUSED when it is "
        "not; lower is STALE_STATE",
    )
    state: Literal[
        "initializing",
        "idle",
        "working",
        "waiting_for_user",
        "waiting_for_tasks",
        "blocked",
        "completed",
        "failed",
        "interrupted",
    ]
    phase: SafeStr = Field(min_length=1, max_length=MAX_PHASE)
    current_activity: SafeStr = Field("", max_length=MAX_ACTIVITY)
    progress: int | None = Field(None, ge=0, le=100)
    error: SafeStr | None = Field(None, max_length=MAX_ERROR)
    spawned_task_ids: list[TaskIdField] = Field(default_factory=list, max_length=MAX_TASK_IDS)
    waiting_on_task_ids: list[TaskIdField] = Field(default_factory=list, max_length=MAX_TASK_IDS)
    history_from: int | None = Field(
        None,
        ge=0,
        le=MAX_HISTORY_POSITION,
        description="The position of the first appended message (0-based); at most the stored "
        "history's length (else HISTORY_GAP), and what lies at or after it is replaced. Omitted "
        "with historyAppend: the stored end",
    )
    history_append: list[MessageBody] | None = Field(
        None, max_length=MAX_APPEND, description=f"At most {MAX_APPEND} messages per save"
    )
    checkpoint: CheckpointBody | None = Field(None, description="Marks this save as a consistent point")
    daemon_id: SafeStr | None = Field(None, min_length=1, max_length=MAX_DAEMON_ID)
    host: SafeStr | None = Field(None, min_length=1, max_length=MAX_HOST)


class RestartRequest(_Body):
    task_id: TaskIdField | None = Field(
        None, description="The supervisor to restart; omitted: the contract's, heard from last"
    )
    reason: SafeStr | None = Field(None, max_length=MAX_REASON, description="Passed to the daemon")
    incarnation: int | None = Field(
        None,
        ge=1,
        le=MAX_INCARNATION,
        description="The incarnation you mean to replace: a retry of a restart that already "
        "happened answers that restart again instead of restarting twice",
    )


@router.post(
    SUPERVISOR + "/state",
    response_model=StateSaved,
    responses=error_responses(
        E.FORBIDDEN,
        E.VALIDATION_FAILED,
        E.SUPERVISOR_FENCED,
        E.INCARNATION_NOT_ISSUED,
        E.STALE_STATE,
        E.STATE_VERSION_REUSED,
        E.HISTORY_GAP,
        bad_json=True,
    ),
)
def save_state(contract_id: ContractId, body: SaveStateRequest, api: Api) -> Any:
    """Save the supervisor's persistent state (a supervisor's or admin's call; a user gets 403).

    Saves are ordered by (incarnation, stateVersion): an incarnation the server replaced is
    409 SUPERVISOR_FENCED (so is a save naming none once the server issued one), one it never
    issued 409 INCARNATION_NOT_ISSUED, an older save 409 STALE_STATE, the stored save sent again answers
    200 with `applied: false` (a resend is one save, its history append included) and a
    different save under the stored key is 409 STATE_VERSION_REUSED naming what differs. History is
    appended in increments at `historyFrom` (409 HISTORY_GAP past the stored end, which the
    error names). A `checkpoint` marks this save as a consistent point a restoration can fall
    back to. A closed contract (completed, failed, archived) takes no save (400)."""
    return api.save_supervisor_state(
        contract_id,
        body.task_id,
        state_version=body.state_version,
        state=body.state,
        phase=body.phase,
        current_activity=body.current_activity,
        progress=body.progress,
        error=body.error,
        spawned_task_ids=body.spawned_task_ids,
        waiting_on_task_ids=body.waiting_on_task_ids,
        incarnation=body.incarnation,
        history_from=body.history_from,
        history_append=(
            [m.model_dump(mode="json", exclude_none=True) for m in body.history_append]
            if body.history_append is not None
            else None
        ),
        checkpoint=body.checkpoint.model_dump(exclude_none=True) if body.checkpoint is not None else None,
        daemon_id=body.daemon_id,
        host=body.host,
    )


@router.get(
    SUPERVISOR + "/state",
    response_model=SupervisorStateView,
    responses=error_responses(E.SUPERVISOR_NOT_FOUND),
)
def read_state(contract_id: ContractId, api: Api, task_id: TaskIdQuery = None) -> Any:
    """The supervisor's stored state, its history's length and its last checkpoint.
    SUPERVISOR_NOT_FOUND when none was saved."""
    return api.supervisor_state(contract_id, task_id)


@router.get(
    SUPERVISOR + "/history",
    response_model=HistoryPage,
    responses=error_responses(E.SUPERVISOR_NOT_FOUND),
)
def read_history(
    contract_id: ContractId,
    api: Api,
    task_id: TaskIdQuery = None,
    start: Annotated[
        int, Query(alias="from", ge=0, le=MAX_HISTORY_POSITION, description="The first position (0-based)")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE, description="Messages per page")] = 200,
) -> Any:
    """A page of the supervisor's stored conversation, in order, from position `from`: at most
    `limit` messages and about 4 MiB of them; `truncated` says the size bound ended the page
    early, `nextFrom` where the next page starts (null at the end)."""
    return api.supervisor_history(contract_id, task_id, start, limit)


@router.get(
    SUPERVISOR + "/restoration",
    response_model=Restoration,
    responses=error_responses(E.VALIDATION_FAILED, E.SUPERVISOR_NOT_FOUND),
)
def restoration(
    contract_id: ContractId,
    api: Api,
    task_id: TaskIdQuery = None,
    daemon_id: Annotated[
        SafeStr | None,
        Query(alias="daemonId", min_length=1, max_length=MAX_DAEMON_ID, description="The restoring daemon"),
    ] = None,
    host: Annotated[SafeStr | None, Query(min_length=1, max_length=MAX_HOST)] = None,
    history_limit: Annotated[
        int,
        Query(alias="historyLimit", ge=1, le=MAX_HISTORY_LIMIT, description="Newest messages to send"),
    ] = 200,
) -> Any:
    """What a restarted daemon needs: the branch the server took (`fresh`,
    `checkpoint`, `resume`) with every inconsistency found, the restored state and the newest
    history, open questions to re-deliver, answers received, waited-on tasks with their status,
    the next step and a context text. A supervisor's call claims the supervisor: it is issued a
    new incarnation (older ones are fenced from then on; `notices` says to send it), and the
    answers to its open questions go to `daemonId` from then on. Only a task the contract knows
    as its supervisor (started with isSupervisor, heard from, or saved) may be claimed: another
    is 404 SUPERVISOR_NOT_FOUND naming the contract's supervisor task ids; a closed contract
    takes no claim (400). The history is the newest `historyLimit` messages that fit in about
    4 MiB (`historyTruncated`). A user's or admin's call is a preview that changes nothing
    (`claimed: false`), closed contracts included."""
    return api.restore_supervisor(contract_id, task_id, daemon_id, host, history_limit=history_limit)


@router.post(
    SUPERVISOR + "/restart",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RestartRequested,
    responses=error_responses(E.FORBIDDEN, E.SUPERVISOR_NOT_FOUND, E.VALIDATION_FAILED, bad_json=True),
)
def restart(contract_id: ContractId, api: Api, body: Annotated[RestartRequest | None, Body()] = None) -> Any:
    """Restart the supervisor (a user's or admin's call; a supervisor gets 403): a new incarnation
    fences the running one, and a `restart_supervisor` command (taskId, newIncarnation,
    previousIncarnation, reason) goes to its daemon. SUPERVISOR_NOT_FOUND when it has neither
    sent a heartbeat nor saved state; a closed contract takes no restart (400). The body is
    optional."""
    given = body or RestartRequest()
    return api.restart_supervisor(
        contract_id, given.task_id, reason=given.reason, incarnation=given.incarnation
    )


__all__ = ["router"]
