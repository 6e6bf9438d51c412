"""The broker's vocabulary: the queues, and every task name as one constant.

Senders (the API module, the unit of work's outbox, beat) and the workers that register the
tasks all spell a name through `TaskName`, so a typo is an AttributeError at import time, not
a dead letter at run time. The prefix of a task name picks its queue.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """One queue per kind of work, so a long batch never starves heartbeats."""

    CONTRACTS = "contracts"  # task reports, deliverables, auto-advance, completion flow
    HEARTBEATS = "heartbeats"  # supervisor heartbeats, batched
    BATCH = "batch"  # user batch operations: long, low priority
    SWEEPS = "sweeps"  # beat-scheduled maintenance


class TaskName(StrEnum):
    """Every task the service sends; stable dotted names (`<queue>.<verb>`)."""

    # Daemon reports, sent by the API module on behalf of a principal.
    TASK_STARTED = "contracts.task_started"
    TASK_COMPLETED = "contracts.task_completed"
    MARK_DELIVERABLE = "contracts.mark_deliverable"
    WORKTREE_CREATED = "contracts.worktree_created"
    WORKTREE_REMOVED = "contracts.worktree_removed"
    CHECK_COMPLETION = "contracts.check_completion"
    # Follow-ups the service decides itself, sent through the outbox after commit.
    EVALUATE_PROGRESS = "contracts.evaluate_progress"
    FINALIZE_COMPLETION = "contracts.finalize_completion"
    PUBLISH_DAEMON_COMMANDS = "contracts.publish_daemon_commands"
    # A no-op: liveness probe of the contracts queue and the benchmarks' baseline.
    PING = "contracts.ping"
    # Supervisor heartbeats, a list per message (app.heartbeats).
    INGEST_HEARTBEATS = "heartbeats.ingest"
    # Beat-scheduled maintenance.
    DETECT_DEAD_SUPERVISORS = "sweeps.detect_dead_supervisors"
    HEARTBEAT_RETENTION = "sweeps.heartbeat_retention"
    FINALIZE_DUE_COMPLETIONS = "sweeps.finalize_due_completions"
    RELAY_OUTBOX = "sweeps.relay_outbox"
    DRAIN_DEAD_LETTERS = "sweeps.drain_dead_letters"
    PUBLISH_PENDING_DAEMON_COMMANDS = "sweeps.publish_daemon_commands"
    DETECT_STALE = "sweeps.detect_stale"
    PAUSE_TIMED_OUT_INPUTS = "sweeps.pause_timed_out_inputs"
    DELETE_EXPIRED_ARCHIVES = "sweeps.delete_expired_archives"
    RESUME_STALLED_BATCHES = "sweeps.resume_stalled_batches"
    PRUNE_EVENTS = "sweeps.prune_events"
    CLEANUP_WORKTREES = "sweeps.cleanup_worktrees"
    # Batch operations an admin asked for (app.batch), long and low priority.
    RUN_BATCH = "batch.run"


def queue_for(task_name: str) -> Queue:
    """The queue a task name travels on: its prefix, or `contracts` for anything else."""
    prefix = task_name.split(".", 1)[0]
    try:
        return Queue(prefix)
    except ValueError:
        return Queue.CONTRACTS


__all__ = ["Queue", "TaskName", "queue_for"]
