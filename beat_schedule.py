"""The single place the periodic jobs and their cadences are named.

Each entry expires before its next run, so a beat that was down does not replay a backlog of
stale sweeps when it comes back.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from app.queues import Queue, TaskName

if TYPE_CHECKING:
    from app.config import Settings


def _every(seconds: float, task: TaskName) -> dict[str, Any]:
    return {
        "task": task.value,
        "schedule": timedelta(seconds=seconds),
        "options": {"queue": Queue.SWEEPS.value, "expires": max(seconds * 0.9, 1.0)},
    }


def build_schedule(settings: Settings) -> dict[str, Any]:
    interval = settings.contracts.stale_detection_interval_seconds
    return {
        # Finish completions whose grace period is over; backs up the per-contract countdown.
        "finalize-due-completions": _every(interval, TaskName.FINALIZE_DUE_COMPLETIONS),
        # Send committed follow-up tasks whose send after commit failed or never happened.
        "relay-outbox": _every(interval, TaskName.RELAY_OUTBOX),
        # Move dead letters held in Redis during a database outage into their table.
        "drain-dead-letters": _every(interval, TaskName.DRAIN_DEAD_LETTERS),
        # Hand committed daemon commands (stop supervisor, remove worktree) to the broker.
        "publish-daemon-commands": _every(interval, TaskName.PUBLISH_PENDING_DAEMON_COMMANDS),
        # Declare dead the supervisors silent past heartbeat_timeout_seconds (by receive time);
        # a quarter of the timeout, so a death is recorded at most 25 % late (30 s of 120 s).
        "detect-dead-supervisors": _every(
            settings.contracts.heartbeat_timeout_seconds / 4, TaskName.DETECT_DEAD_SUPERVISORS
        ),
        # Drop heartbeat history older than 24 h (whole day partitions) and create the next days'
        # partitions ahead; hourly, so a day is dropped within the hour it expires.
        "heartbeat-retention": _every(
            settings.heartbeats.retention_interval_seconds, TaskName.HEARTBEAT_RETENTION
        ),
        # Record one stale_detected per silent contract's episode and stale_cleared when it ends,
        # so the stale count is current; as often as the seed's detector (seed 4.2, plan 5.2).
        "detect-stale": _every(interval, TaskName.DETECT_STALE),
        # Pause contracts waiting for input past input_timeout_hours (seed table 1.4: timeout).
        "pause-timed-out-inputs": _every(interval, TaskName.PAUSE_TIMED_OUT_INPUTS),
        # Delete archived contracts past archive_retention_days, each one audited.
        "delete-expired-archives": _every(interval, TaskName.DELETE_EXPIRED_ARCHIVES),
        # Ask daemons again to remove worktrees of closed contracts they have not reported removed,
        # each at most once per [worktrees] cleanup_interval_seconds (the sweep only looks this often).
        "cleanup-worktrees": _every(interval, TaskName.CLEANUP_WORKTREES),
        # Re-send batch operations whose runner stopped making progress (message lost with a worker).
        "resume-stalled-batches": _every(interval, TaskName.RESUME_STALLED_BATCHES),
        # Delete contract events past [monitor] event_retention_days in bounded transactions;
        # on the heartbeat retention's cadence (hourly): an event a little past retention is harmless.
        "prune-events": _every(settings.heartbeats.retention_interval_seconds, TaskName.PRUNE_EVENTS),
    }
