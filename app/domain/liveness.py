"""Liveness by the server's clock: who is dead, what declaring it dead does, who is alive.

Its own module because liveness is judged by the server's receive time, never by the daemon's
clock, and several readers must judge it alike: the dead sweep and the supervisor reads
(`app.supervisors`), the daemon list, and the ingestion's bump of a contract's activity. A
supervisor whose last accepted heartbeat was *received* more than the timeout ago is dead;
declaring it dead bumps its incarnation (`app.domain.incarnations.incarnation_after_death`), so
whatever its old incarnation still sends is fenced. The history's retention bound is measured
on the same clock.

Pure (stdlib only).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from app.domain.incarnations import incarnation_after_death
from app.domain.supervisors import StateChange, SupervisorRecord, SupervisorState


def is_dead(record: SupervisorRecord, now: datetime, timeout: timedelta) -> bool:
    """Dead: alive until now, but nothing received from it for longer than the timeout.

    Judged by our receive time only; the daemon's clock (its heartbeat timestamps) has no say,
    so a daemon whose clock runs an hour ahead or behind is neither killed early nor kept alive.
    """
    return record.alive and now - record.last_received_at > timeout


def dead_cutoff(now: datetime, timeout: timedelta) -> datetime:
    """Supervisors last heard before this instant are dead (`is_dead`, as a query bound)."""
    return now - timeout


def declare_dead(record: SupervisorRecord, now: datetime) -> tuple[SupervisorRecord, list[StateChange]]:
    """The record after its supervisor is declared dead, and the state change it makes.

    The incarnation is bumped (`incarnation_after_death`: not past the limit), so the old
    incarnation's late heartbeats are fenced; `sent_at` is cleared, so the first heartbeat of
    the new incarnation wins whatever its clock says.
    """
    after = replace(
        record,
        incarnation=incarnation_after_death(record.incarnation),
        state=SupervisorState.INTERRUPTED,
        alive=False,
        dead_at=now,
        sent_at=None,
        version=record.version + 1,
    )
    changes = []
    if record.state is not SupervisorState.INTERRUPTED:
        changes.append(
            StateChange(record.contract_id, record.task_id, record.state, after.state, after.incarnation)
        )
    return after, changes


def daemon_alive(last_seen: datetime, now: datetime, timeout: timedelta) -> bool:
    """A daemon is alive while one of its supervisors was heard within the timeout."""
    return now - last_seen <= timeout


def activity_bump_before(now: datetime, stale_threshold: timedelta) -> datetime:
    """A contract's `last_activity_at` older than this is moved forward by a heartbeat.

    A tenth of the stale threshold (3 min for 30 min): well under it, so a contract with a
    live supervisor is never judged stale, and its wide, indexed row is rewritten at most
    once per bound instead of on every heartbeat.
    """
    return now - stale_threshold / 10


def retention_cutoff_day(now: datetime, retention: timedelta) -> datetime:
    """Day partitions whose whole day ended before `now - retention` may be dropped."""
    return now - retention


__all__ = [
    "activity_bump_before",
    "daemon_alive",
    "dead_cutoff",
    "declare_dead",
    "is_dead",
    "retention_cutoff_day",
]
