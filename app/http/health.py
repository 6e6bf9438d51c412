"""Probes: `/healthz` (is the process alive) and `/readyz` (can it do its work now).

Why two: an orchestrator restarts a process whose liveness fails, so liveness must not
depend on the database or the broker (an outage there would restart every API process for
nothing); readiness takes a process out of the load balancer while either is unreachable.
Both answer without a token. Each readiness check is bounded by a short timeout, so a hung
dependency makes the probe answer 503 rather than hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import redis
from fastapi import APIRouter, Request, Response, status
from sqlalchemy import Engine, text

from app.config import get_settings
from app.db import get_engine
from app.http.deps import wiring
from app.schemas import DependencyCheck, DependencyChecks, Liveness, ServiceReadiness

router = APIRouter(tags=["service"])

_UNAVAILABLE_EXAMPLE: dict[str, Any] = {
    "status": "unavailable",
    "checks": {
        "database": {"ok": True, "error": None},
        "broker": {"ok": False, "error": "ConnectionError: Error 111 connecting to localhost:6379."},
    },
}


@router.get("/healthz")
def healthz() -> Liveness:
    """Liveness: answers 200 while the process serves requests; touches nothing else.

    HEAD is answered too: some load balancers probe with it.
    """
    return Liveness()


@router.head("/healthz", include_in_schema=False)
def healthz_head() -> Liveness:
    """HEAD of `/healthz`, its own route: one route for both methods gave the schema two
    operations with one id (FastAPI warned of it on the first `/openapi.json`)."""
    return healthz()


@router.get(
    "/readyz",
    responses={
        status.HTTP_503_SERVICE_UNAVAILABLE: {
            "model": ServiceReadiness,
            "description": "The database or the broker is unreachable; `checks` says which and why.",
            "content": {"application/json": {"example": _UNAVAILABLE_EXAMPLE}},
        }
    },
)
async def readyz(request: Request, response: Response) -> ServiceReadiness:
    """Readiness: 200 when the database answers `SELECT 1` and the broker answers PING, else 503."""
    wired = wiring(request)
    engine = wired.engine or get_engine()
    broker_url = wired.broker_url or get_settings().effective_broker_url
    checks = DependencyChecks(
        database=await _probe(lambda: _ping_database(engine), wired.probe_timeout),
        broker=await _probe(lambda: _ping_broker(broker_url, wired.probe_timeout), wired.probe_timeout),
    )
    ready = checks.database.ok and checks.broker.ok
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return ServiceReadiness(status="ready" if ready else "unavailable", checks=checks)


async def _probe(check: Callable[[], None], timeout: float) -> DependencyCheck:
    """Run a blocking check in a thread; give up (and say so) after `timeout` seconds."""
    try:
        with anyio.fail_after(timeout):
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        return DependencyCheck(ok=False, error=f"no answer within {timeout:g} s")
    except Exception as exc:
        return DependencyCheck(ok=False, error=_reason(exc))
    return DependencyCheck(ok=True)


def _reason(exc: BaseException) -> str:
    """The exception's first line, short: enough to act on, no stack or SQL."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


def _ping_database(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _ping_broker(url: str, timeout: float) -> None:
    """PING the Redis broker, including the embedded one on its unix socket."""
    if url.startswith("redis+socket://"):
        url = "unix://" + url.removeprefix("redis+socket://")
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


__all__ = ["router"]
