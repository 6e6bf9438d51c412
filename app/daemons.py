"""The daemons a caller's contracts have seen (`GET /api/v1/daemons`, `ContractsAPI.daemons`).

A daemon has no row of its own: it is known by the `daemonId` its supervisors' heartbeats and
its worktree reports carry. So the list is read from the supervisors (who runs what, when it
was last heard, by the server's receive clock as `app.domain.liveness` judges it) and from the
worktree counts per daemon (`app.worktrees`); a daemon that only reported worktrees is listed
too, after the ones heard from. Owner-scoped: only daemons of contracts the caller may see (an
admin's: every owner's).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import Caller
from app.domain.liveness import daemon_alive
from app.models import Contract, Supervisor
from app.schemas import Schema, Timestamp
from app.worktrees import WorktreeCounts, counts_by_daemon

MAX_DAEMON_SUPERVISORS: Final = 100
DAEMONS_PAGE: Final = 100
MAX_DAEMONS_PAGE: Final = 1000


class DaemonView(Schema):
    """A daemon seen in heartbeats or worktree reports (by its `daemonId`)."""

    daemon_id: str
    host: str | None
    last_seen_at: Timestamp | None = Field(
        description="When the server last received a heartbeat from it (null: it only reported worktrees)"
    )
    alive: bool = Field(description="Heard from within the heartbeat timeout")
    supervisors: int = Field(description="Supervisors it runs (that you can see)")
    alive_supervisors: int
    supervisor_task_ids: list[uuid.UUID] = Field(description=f"At most {MAX_DAEMON_SUPERVISORS}")
    worktrees: WorktreeCounts = Field(description="The worktrees it reported (of your contracts), by state")


class DaemonList(Schema):
    daemons: list[DaemonView] = Field(
        description=f"At most `limit` (default {DAEMONS_PAGE}, ≤ {MAX_DAEMONS_PAGE})"
    )
    next_cursor: int | None = Field(
        None, description="Pass as `cursor` for the next page; null on the last page"
    )


def list_daemons(
    session: Session,
    caller: Caller,
    now: datetime,
    timeout: timedelta,
    limit: int = DAEMONS_PAGE,
    cursor: int = 0,
) -> DaemonList:
    """Daemons seen in heartbeats or worktree reports of the caller's contracts (every owner's
    for an admin): the ones heard from first, most recent first, then those known only from
    their worktrees, by id; `limit` of them from position `cursor` (the list is ordered the same
    way on every call, so a daemon heard from meanwhile may move across a page boundary)."""
    query = (
        select(
            Supervisor.daemon_id,
            Supervisor.host,
            Supervisor.task_id,
            Supervisor.last_received_at,
            Supervisor.alive,
        )
        .join(Contract, Contract.id == Supervisor.contract_id)
        .where(Supervisor.daemon_id.is_not(None))
        .order_by(Supervisor.daemon_id, Supervisor.last_received_at.desc())
    )
    if not caller.is_admin:
        query = query.where(Contract.owner_id == caller.owner_id)
    daemons: dict[str, dict[str, Any]] = {}
    for daemon_id, host, task_id, received, alive in session.execute(query):
        if daemon_id is None:
            continue
        entry = daemons.get(daemon_id)
        if entry is None:
            entry = daemons[daemon_id] = {
                "host": host,
                "last": received,
                "total": 0,
                "alive": 0,
                "tasks": [],
            }
        entry["total"] += 1
        entry["alive"] += int(bool(alive) and now - received <= timeout)
        if len(entry["tasks"]) < MAX_DAEMON_SUPERVISORS:
            entry["tasks"].append(task_id)
    worktrees = counts_by_daemon(session, caller)
    none = WorktreeCounts(open=0, released=0, removed=0)
    heard = [
        DaemonView(
            daemon_id=daemon_id,
            host=e["host"],
            last_seen_at=e["last"],
            alive=daemon_alive(e["last"], now, timeout),
            supervisors=e["total"],
            alive_supervisors=e["alive"],
            supervisor_task_ids=e["tasks"],
            worktrees=worktrees.get(daemon_id, none),
        )
        for daemon_id, e in sorted(daemons.items(), key=lambda kv: kv[1]["last"], reverse=True)
    ]
    silent = [
        DaemonView(
            daemon_id=daemon_id,
            host=None,
            last_seen_at=None,
            alive=False,
            supervisors=0,
            alive_supervisors=0,
            supervisor_task_ids=[],
            worktrees=counts,
        )
        for daemon_id, counts in sorted(worktrees.items())
        if daemon_id not in daemons
    ]
    listed = heard + silent
    end = cursor + limit
    return DaemonList(daemons=listed[cursor:end], next_cursor=end if end < len(listed) else None)


__all__ = [
    "DAEMONS_PAGE",
    "MAX_DAEMONS_PAGE",
    "MAX_DAEMON_SUPERVISORS",
    "DaemonList",
    "DaemonView",
    "list_daemons",
]
