"""`/api/v1/daemons`: the agent daemons seen in heartbeats and worktree reports, and each
daemon's command feed.

- `GET /api/v1/daemons`: every daemon of your contracts, so "active daemons" is a fact, with
  its supervisors and its worktrees by state.
- `GET /api/v1/daemons/{daemonId}/queue`: the broker queues that daemon reads: its own,
  `daemon.commands.<owner token>.<daemon key>`, and its owner's for commands that name no
  daemon. Daemon ids are chosen by clients and are not unique across owners, so every queue
  is one owner's: naming another owner's daemon id never reaches that owner's daemon.
- `GET /api/v1/daemons/{daemonId}/commands?after=&limit=&wait=`: the commands for one daemon,
  the same ones its broker queue carries, for a daemon that cannot
  read the broker (and for the fleet simulator). Owner-scoped: only commands about contracts
  you may see (an admin's: all). `wait` turns an empty answer into a long poll: the request
  looks again every half second until a command arrives or `wait` seconds pass, without
  holding a worker thread meanwhile.
"""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any, Final

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from app.daemon_commands import MAX_FEED, DaemonCommandFeed, DaemonQueue
from app.daemons import DAEMONS_PAGE, MAX_DAEMONS_PAGE, DaemonList
from app.domain.errors import FeatureDisabled
from app.http.deps import Api
from app.http.errors import error_response, error_responses
from app.http.routing import ParsedJSONRoute
from app.schemas import ErrorCode

E = ErrorCode
MAX_WAIT_SECONDS: Final = 25.0
POLL_SECONDS: Final = 0.5

router = APIRouter(
    route_class=ParsedJSONRoute,
    prefix="/api/v1/daemons",
    tags=["supervisors"],
    responses=error_responses(E.UNAUTHENTICATED, E.INVALID_REQUEST, E.INTERNAL_ERROR),
)


class DaemonIdConvertor(Convertor[str]):
    """A daemon id in the path: any text, slashes and line breaks included.

    Starlette's `path` convertor is `.*`, and `.` stops at a newline, so an id holding one
    (`gpu%0A7`) matched no route and answered 404 as if the endpoint did not exist. Routing
    takes every character here, so the id reaches `check_daemon_id`, which refuses it with
    400 VALIDATION_FAILED naming `daemonId` and the rule, as for any other control character.
    """

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("daemonid", DaemonIdConvertor())

# Plain text, not `SafeStr`: a NUL is judged by `check_daemon_id` with the other control
# characters (400 naming the rule), not by the schema.
DaemonId = Annotated[
    str,
    Path(
        alias="daemonId",
        min_length=1,
        max_length=200,
        description="The daemon's id, as its heartbeats and reports name it (URL-encoded): 1 to 200 "
        "characters, not blank, not '.' or '..', no NUL or other control character, no line or "
        "paragraph separator, no bidirectional control (U+202E, ...), no U+FFFD.",
    ),
]

# What `wait` may be, in the words its refusal says.
WAIT_RULE: Final = f"a finite number of seconds from 0 to {MAX_WAIT_SECONDS:g}"


def _finite_wait(value: object) -> object:
    """`wait=nan` (or inf) is refused as what it is: Python reads both as floats, and NaN then
    failed the `ge=0` bound, so the caller was told it should be at most 25 or at least 0."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value  # not a number at all: the float schema says so
        if not math.isfinite(number):
            raise PydanticCustomError("finite_number", f"'{value[:20]}' is not {WAIT_RULE}")
    return value


@router.get("", response_model=DaemonList)
def list_daemons(
    api: Api,
    limit: Annotated[
        int, Query(ge=1, le=MAX_DAEMONS_PAGE, description=f"Daemons per page (≤ {MAX_DAEMONS_PAGE})")
    ] = DAEMONS_PAGE,
    cursor: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="The previous page's `nextCursor`; 0 for the first")
    ] = 0,
) -> Any:
    """Daemons that sent heartbeats or reported worktrees (with a `daemonId`) for your contracts:
    the ones heard from first, most recently heard first, with their host, whether alive (heard
    within the heartbeat timeout), the supervisors they run and their worktrees by state; then
    the daemons known only from worktree reports (`lastSeenAt` null). A page of `limit`; pass
    `nextCursor` as `cursor` for the next one."""
    try:
        return api.daemons(limit, cursor)
    except FeatureDisabled as exc:
        return error_response(status.HTTP_503_SERVICE_UNAVAILABLE, exc.code, exc.message, exc.details)


@router.get(
    "/{daemonId:daemonid}/queue",
    response_model=DaemonQueue,
    responses=error_responses(E.VALIDATION_FAILED),
)
def daemon_queue(api: Api, daemon_id: DaemonId) -> Any:
    """Where this daemon of yours reads its commands on the broker: `queue` (bound to
    `exchange` with `routingKey`) carries the commands naming it, `ownerQueue` those of your
    contracts that name no daemon. Declare both durable and consume JSON; each command carries
    its `commandId` (carry it out once)."""
    return api.daemon_queue(daemon_id)


@router.get(
    "/{daemonId:daemonid}/commands",
    response_model=DaemonCommandFeed,
    responses=error_responses(E.VALIDATION_FAILED),
)
async def daemon_commands(
    request: Request,
    api: Api,
    daemon_id: DaemonId,
    after: Annotated[
        int, Query(ge=0, le=2**63 - 1, description="The last commandId you carried out (0: from the start).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_FEED, description="Commands per answer.")] = 100,
    wait: Annotated[
        float,
        BeforeValidator(_finite_wait),
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description=f"Seconds to wait for a command when there is none yet (a long poll): {WAIT_RULE}.",
        ),
    ] = 0,
) -> Any:
    """The commands for this daemon after `after`, oldest first, about contracts you may see
    (a supervisor reads its own daemon's). Each carries its `commandId`: carry out each once
    (a command may come twice, here and on the broker) and pass `nextAfter` back to read on.
    A page holds at most `limit` commands and at most 4 MiB of JSON: one that stopped early at
    the size bound says `truncated: true` (read on at once). With `wait`, an empty answer waits
    up to that many seconds for a command."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        feed = await run_in_threadpool(api.daemon_commands, daemon_id, after, limit)
        left = deadline - loop.time()
        if feed.commands or left <= 0 or await request.is_disconnected():
            return feed
        await asyncio.sleep(min(POLL_SECONDS, left))


__all__ = ["router"]
