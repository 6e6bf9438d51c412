"""What a handler is given before it runs: the caller, its ContractsAPI, parsed queries.

Why dependencies and not code in each handler: authentication and the query mini-languages
must read the same on every route (one 401, one way to spell `status=active,paused`, one rule
for the query parameters a route takes: `strict_query`), and tests and benchmarks swap the
database and broker through one object, `Wiring`.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Final, cast

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from starlette.requests import HTTPConnection

from app.api import ContractsAPI
from app.auth import Caller, authenticate, cached_caller, reauthenticate
from app.broker import Sender
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.http.bodies import SafeStr, UUIDText
from app.http.errors import AUTHENTICATED_PREFIX
from app.http.problems import InvalidRequest
from app.http.query_params import query_problems
from app.http.single_headers import AUTHORIZATION, single_header

_THRESHOLD = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_THRESHOLD_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
MAX_THRESHOLD: Final = timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a request needs beyond the caller; injectable so tests and benches can swap it.

    `None` means the configured default: the settings' database, the Celery sender, the
    settings' broker URL.
    """

    engine: Engine | None = None
    sender: Sender | None = None
    broker_url: str | None = None
    probe_timeout: float = 2.0


def wiring(request: HTTPConnection) -> Wiring:
    return cast(Wiring, request.app.state.wiring)


class SingleBearer(HTTPBearer):
    """FastAPI's bearer scheme, refusing a request with more than one Authorization header
    (`app.http.single_headers`): HTTPBearer reads the first and ignores the others."""

    async def __call__(self, request: HTTPConnection) -> HTTPAuthorizationCredentials | None:
        single_header(request.headers, AUTHORIZATION)
        return await super().__call__(request)


bearer = SingleBearer(
    auto_error=False,
    description="An API token (`mk_...`), created with `makima token create`.",
)


def authenticate_token(engine: Engine | None, token: str | None) -> Caller:
    """Who holds this token; raises Unauthenticated for a missing, malformed or unknown one."""
    with unit_of_work(engine=engine) as uow:
        return authenticate(uow.session, token)


def reauthenticate_token(engine: Engine | None, token: str) -> Caller:
    """Whether this token still stands, asked of the database (an open stream's periodic check)."""
    with unit_of_work(engine=engine) as uow:
        return reauthenticate(uow.session, token)


async def authenticated_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """Who is calling; raises Unauthenticated (401) for a missing, malformed or unknown token.

    Async, so a token in the principal cache (most requests) is answered on the event loop;
    only a lookup goes to a worker thread, as a sync dependency always would (each hop cost
    more than the cached answer)."""
    return await caller_of(request, credentials.credentials if credentials else None)


async def caller_of(request: HTTPConnection, token: str | None) -> Caller:
    """The caller `token` stands for: from the principal cache on the event loop, else looked
    up on a worker thread; raises Unauthenticated. The dependency above and the 401-first rule
    (`error_handlers.unauthenticated_first`) both resolve a caller this way."""
    caller = cached_caller(token)
    if caller is not None:
        return caller
    return await run_in_threadpool(authenticate_token, wiring(request).engine, token)


async def contracts_api(
    request: Request, caller: Annotated[Caller, Depends(authenticated_caller)]
) -> ContractsAPI:
    """A ContractsAPI acting for this request's caller: the only way handlers reach the domain.
    (No I/O: async, so it is not run on a worker thread.)"""
    wired = wiring(request)
    return ContractsAPI(caller=caller, engine=wired.engine, sender=wired.sender)


Api = Annotated[ContractsAPI, Depends(contracts_api)]
ContractId = Annotated[uuid.UUID, Path(alias="id", description="The contract's id (a UUID).")]
# A task id in the path is judged by the heartbeat's rule (`UUIDText`: a 422 naming taskId and the
# form); contract, question and batch ids are routed by it (`{...:uuid}`, `app.http.routing`).
TaskId = Annotated[UUIDText, Path(alias="taskId", description="The task's id (a UUID).")]
DeliverableId = Annotated[
    SafeStr, Path(alias="deliverableId", max_length=200, description="A deliverable id of the phase.")
]


class QueryRefused(InvalidRequest):
    """A query string the route does not take (`strict_query`): 422 INVALID_REQUEST, but only
    once the caller is known, since it is raised before the route's own authentication runs."""


async def strict_query(connection: HTTPConnection) -> None:
    """Refuse a query parameter the route does not take, a single-valued one given twice, or an
    empty value that would have meant nothing (`app.http.query_params`), before the route's
    other dependencies and its handler run, so no answer ever ignores part of what was asked.

    `create_app` gives it to every route; it judges those under `/api/v1/` (the API). The
    probes, the docs, the metrics and the dashboard page take no parameters, so none could be
    misread there, and their callers (load balancers, scrapers, browsers) are not ours to hold
    to the API's rules. The WebSocket monitor's handshake cannot be answered 422, so its
    endpoint judges its query string by the same rule and closes with 4400
    (`app.http.monitor_ws`).
    """
    scope = connection.scope
    if scope["type"] != "http" or not scope["query_string"]:
        return
    route = scope.get("route")
    if not isinstance(route, APIRoute) or not route.path.startswith(AUTHENTICATED_PREFIX):
        return
    problems = query_problems(route, connection.query_params.multi_items())
    if problems:
        raise QueryRefused(problems)


def parse_statuses(raw: str | None) -> tuple[Status, ...]:
    """`status=active,paused` → statuses; an unknown one is a 422 naming every allowed status."""
    if raw is None:
        return ()
    names = [part.strip() for part in raw.split(",") if part.strip()]
    allowed = [s.value for s in Status]
    if not names:
        # `status=,` would list every status: refused like `status=` (`strict_query`).
        raise InvalidRequest(
            [
                {
                    "field": "status",
                    "in": "query",
                    "type": "empty",
                    "problem": "names no status; give at least one, or leave it out for all: "
                    + ", ".join(allowed),
                    "given": raw[:200],
                    "allowed": allowed,
                }
            ]
        )
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise InvalidRequest(
            [
                {
                    "field": "status",
                    "in": "query",
                    "type": "enum",
                    "problem": f"'{name}' is not a status; allowed: {', '.join(allowed)}",
                    "given": name,
                    "allowed": allowed,
                }
                for name in unknown
            ]
        )
    return tuple(dict.fromkeys(Status(n) for n in names))


def parse_threshold(raw: str) -> timedelta:
    """`45s`, `30m`, `2h`, `1d` → a positive duration, the CLI's `--threshold` syntax.

    At most MAX_THRESHOLD (ten years): "now minus the threshold" must stay a date, and
    `1000000d` reached before year 1 and answered 500.
    """
    match = _THRESHOLD.match(raw)
    amount = int(match.group(1)) if match else 0
    unit = _THRESHOLD_UNITS[match.group(2)] if match else "seconds"
    if match is None or amount <= 0 or amount > MAX_THRESHOLD // timedelta(**{unit: 1}):
        raise InvalidRequest(
            [
                {
                    "field": "threshold",
                    "in": "query",
                    "type": "duration",
                    "problem": "must be a positive whole number then s, m, h or d, like 45s, 30m or 2h, "
                    f"and at most {MAX_THRESHOLD.days}d (ten years)",
                    "given": raw,
                    "limit": f"{MAX_THRESHOLD.days}d",
                }
            ]
        )
    return timedelta(**{unit: amount})


__all__ = [
    "MAX_THRESHOLD",
    "Api",
    "ContractId",
    "DeliverableId",
    "QueryRefused",
    "SingleBearer",
    "TaskId",
    "Wiring",
    "authenticate_token",
    "authenticated_caller",
    "bearer",
    "contracts_api",
    "parse_statuses",
    "parse_threshold",
    "reauthenticate_token",
    "strict_query",
    "wiring",
]
