"""Heartbeat tasks: ingest a list (`heartbeats` queue), declare the silent dead, drop old days.

Each task decodes, calls one service in `app`, and returns; each is safe to run twice (a
heartbeat id is stored once, the dead sweep re-checks under the row lock, retention only
drops what is past the cut-off). With the `supervisor_heartbeat` feature flag off they do
nothing: queued heartbeats are acknowledged and dropped, the sweeps skip.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from app import heartbeats, live_events, metrics, supervisors
from app.broker import send_task
from app.config import get_settings
from app.db import unit_of_work
from app.heartbeat_retention import apply_retention
from app.models import utcnow
from app.queues import TaskName
from workers.base import AccountableTask
from workers.celery_app import celery_app

log = logging.getLogger(__name__)


def _publish_notices(notices: str) -> None:
    """The live monitor's light `heartbeat` notices (after commit; never stored as events): the
    JSON array the ingestion hands over goes out as it is."""
    live_events.publish_encoded(notices)


def _enabled(what: str) -> bool:
    if get_settings().feature_flags.supervisor_heartbeat:
        return True
    log.info("%s skipped: feature flag supervisor_heartbeat is off", what)
    return False


@celery_app.task(name=TaskName.INGEST_HEARTBEATS, base=AccountableTask)
def ingest(message: Any) -> dict[str, int] | None:
    """A list of heartbeats, stored with a constant number of statements."""
    if not _enabled("heartbeat ingestion"):
        return None
    # Without the live monitor nobody reads the notices: the ingestion does not even build them.
    live = get_settings().feature_flags.monitoring_dashboard
    report = heartbeats.ingest(message, sender=send_task, notify=_publish_notices if live else None)
    # The supervisor_state_changed events its statements wrote (never held by the unit of work,
    # so its post-commit hook sees none): wake the live readers, as every other committed event
    # does (else they wait for another writer's wake-up or the poll), and count them for /metrics.
    live_events.announce_events(report.state_changes)
    metrics.count_events(report.events_written())
    metrics.count_heartbeats(report.stored)
    return report.as_dict()


@celery_app.task(name=TaskName.DETECT_DEAD_SUPERVISORS, base=AccountableTask)
def detect_dead_supervisors() -> int:
    """Supervisors silent for `heartbeat_timeout_seconds` (by receive time) are declared dead."""
    if not _enabled("dead-supervisor sweep"):
        return 0
    settings = get_settings()
    timeout = timedelta(seconds=settings.contracts.heartbeat_timeout_seconds)
    total = 0
    while True:
        with unit_of_work(send_task) as uow:
            declared = supervisors.detect_dead_supervisors(uow, utcnow(), timeout)
        total += len(declared)
        if len(declared) < supervisors.DEAD_SWEEP_BATCH:
            return total


@celery_app.task(name=TaskName.HEARTBEAT_RETENTION, base=AccountableTask)
def heartbeat_retention() -> int:
    """Heartbeats older than 24 h go: day partitions dropped (PostgreSQL), chunks deleted (SQLite)."""
    if not _enabled("heartbeat retention"):
        return 0
    report = apply_retention()
    return len(report.dropped) + report.deleted_rows
