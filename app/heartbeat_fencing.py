"""What a daemon whose heartbeats were fenced is told: a `supervisor_fenced` daemon command.

Its own module because three writers tell it and must say the same thing: both ingestion
paths, in the list's own transaction (SQLite from the domain's plan, `tell_fenced`;
PostgreSQL from the fold's answer, `tell_fenced_rows`), and the dead sweep
(`app.supervisors`, which names the incarnation it declared dead). The command goes to the
daemon that sent the fenced heartbeat (else the one that ran that supervisor) through the
daemon-command outbox, published after commit; `fenced_payload` says what the heartbeat
named, what is in force, and what to do about it. Its sibling for heartbeats refused because
another contract holds their task id is `app.heartbeat_refusals`.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from app.daemon_commands import NewCommand, queue_commands
from app.db import UnitOfWork
from app.domain.fencing import fence_reason
from app.domain.heartbeat_plan import BatchPlan

# What a fenced daemon is told on the daemon command queue.
FENCED_COMMAND: Final = "supervisor_fenced"


def tell_fenced(uow: UnitOfWork, plan: BatchPlan, now: datetime) -> None:
    """Queue a `supervisor_fenced` command per fenced supervisor (daemon-command outbox).

    Each goes to the daemon that sent the fenced heartbeat (else the one that ran that
    supervisor), all in one statement, published after commit.
    """
    queue_commands(
        uow,
        [
            NewCommand(
                f.contract_id,
                FENCED_COMMAND,
                fenced_payload(f.task_id, f.sent_incarnation, f.current_incarnation, f.daemon_id, f.host),
                daemon_id=f.daemon_id,
                task_id=f.task_id,
            )
            for f in plan.fenced
        ],
        now,
    )


def tell_fenced_rows(uow: UnitOfWork, fenced: list[dict[str, Any]], now: datetime) -> None:
    """`tell_fenced` for the fold's answer (one row per fenced supervisor and sent incarnation)."""
    queue_commands(
        uow,
        [
            NewCommand(
                uuid.UUID(f["contractId"]),
                FENCED_COMMAND,
                fenced_payload(
                    uuid.UUID(f["taskId"]), f["incarnation"], f["current"], f["daemonId"], f["host"]
                ),
                daemon_id=f["daemonId"],
                task_id=uuid.UUID(f["taskId"]),
            )
            for f in fenced
        ],
        now,
    )


def fenced_payload(
    task_id: uuid.UUID, sent: int | None, current: int, daemon_id: str | None, host: str | None
) -> dict[str, Any]:
    """What a fenced daemon is told: what its heartbeat named, what is in force, and why.

    `fencedIncarnation` is the incarnation the heartbeat named, null when it named none (the
    dead sweep names the one it declared dead), never a number the daemon did not send;
    `reasonCode` is the case (`app.domain.fencing.fence_reason`) and `reason` says what to
    do about it, so the daemon that merely left out the incarnation it was issued is not told
    that its incarnation was replaced.
    """
    reason = fence_reason(sent, current)
    return {
        "taskId": str(task_id),
        "fencedIncarnation": sent,
        "currentIncarnation": current,
        "daemonId": daemon_id,
        "host": host,
        "reasonCode": reason.value,
        "reason": reason.explain(sent, current),
    }


__all__ = ["FENCED_COMMAND", "fenced_payload", "tell_fenced", "tell_fenced_rows"]
