"""`create_app`: the ASGI app, assembled from the routers, the error mapping and the docs.

A factory (not only a module global) so tests and benchmarks can run several apps, each with
its own database, a sender that needs no broker, or a broker URL to probe.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from sqlalchemy import Engine

from app.broker import Sender
from app.http import (
    audit,
    batch,
    contracts,
    daemons,
    dashboard,
    dashboard_page,
    health,
    messages,
    metrics,
    monitor_sse,
    monitor_ws,
    questions,
    reports,
    supervisor_state,
    supervisors,
    whoami,
    worktrees,
)
from app.http.deps import Wiring, strict_query
from app.http.docs import install_docs
from app.http.error_handlers import install_error_handlers
from app.http.heartbeat_door import HeartbeatDoor
from app.http.limits import BodyLimits

DESCRIPTION = (
    "Contracts for AI-agent orchestration: guarded lifecycles, phase gates, completion "
    "detection.\n\n"
    "Every call under `/api/v1` needs `Authorization: Bearer <token>` (create one with "
    "`makima token create`). JSON field names are camelCase. Every error answers "
    '`{"error": {"code", "message", "details"}}`: switch on `code`, show `message` to a person, '
    "and act on `details` (valid ids, missing requirements, versions)."
)


def create_app(
    *,
    engine: Engine | None = None,
    sender: Sender | None = None,
    broker_url: str | None = None,
    probe_timeout: float = 2.0,
) -> FastAPI:
    """Build the ASGI app. `None` means the configured default for each dependency.

    `engine`: the database (default: the settings' database). `sender`: how reports and
    follow-ups reach the broker (default: Celery). `broker_url`: what `/readyz` pings
    (default: the settings' broker). `probe_timeout`: seconds each readiness check may take.
    """
    application = FastAPI(
        title="makima contract management",
        version="1.0.0",
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        # Every route takes exactly the query parameters it declares (`app.http.query_params`).
        dependencies=[Depends(strict_query)],
    )
    application.state.wiring = Wiring(
        engine=engine, sender=sender, broker_url=broker_url, probe_timeout=probe_timeout
    )
    # Resources whose paths sit beside `/{id}` (dashboard, batch, monitor) may be included in
    # any order: contract ids only match UUIDs (`{id:uuid}`), never a static segment.
    application.include_router(batch.router)  # static /batch ahead of /{id}
    application.include_router(dashboard.router)  # static /dashboard ahead of /{id}
    application.include_router(contracts.router)
    application.include_router(audit.router)
    application.include_router(reports.router)
    application.include_router(messages.router)
    application.include_router(health.router)
    application.include_router(monitor_ws.router)
    application.include_router(monitor_sse.router)
    application.include_router(metrics.router)
    application.include_router(supervisors.router)
    application.include_router(daemons.router)
    application.include_router(supervisor_state.router)
    application.include_router(questions.router)
    application.include_router(worktrees.router)
    application.include_router(whoami.router)
    application.include_router(dashboard_page.router)  # the HTML page at /dashboard (no /api prefix)
    install_docs(application)
    install_error_handlers(application)
    # Inside the body limits: the usual heartbeat POST skips the routing (app.http.heartbeat_door).
    application.add_middleware(HeartbeatDoor)
    # Outside the routers: a body is bounded (size, nesting, numbers, text) before it is parsed.
    application.add_middleware(BodyLimits)
    # Outermost: the live monitor sends its events with the server's own send (app.http.monitor_ws).
    application.add_middleware(monitor_ws.ServerSend)
    return application


__all__ = ["create_app"]
