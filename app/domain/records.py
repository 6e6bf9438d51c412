"""The closed vocabularies the service records: task statuses and event types.

The live monitor and its filters need a closed set of event types, and the completion rules
compare task statuses; both are spelled through these enums so a misspelt literal cannot
slip into the event log or a gate.
"""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """A spawned task's state. `failed` may still become `done` (a retry); `done` is final."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EventType(StrEnum):
    """Every `contract_events.type` this service writes (snake_case, seed 4.1)."""

    CONTRACT_CREATED = "contract_created"
    STATUS_CHANGED = "status_changed"
    PHASE_CHANGED = "phase_changed"
    PHASE_READY = "phase_ready"
    DELIVERABLE_COMPLETED = "deliverable_completed"
    TASK_SPAWNED = "task_spawned"
    TASK_COMPLETED = "task_completed"
    AUTO_COMPLETE_CHANGED = "auto_complete_changed"
    COMPLETION_DETECTED = "completion_detected"
    COMPLETION_REJECTED = "completion_rejected"
    COMPLETION_CLEANUP = "completion_cleanup"
    PHASE_CONFIRMATION_DECLINED = "phase_confirmation_declined"
    SUPERVISOR_STATE_CHANGED = "supervisor_state_changed"
    SUPERVISOR_DEAD = "supervisor_dead"
    WORKTREE_CREATED = "worktree_created"
    # Scheduled maintenance and batch operations (app.sweeps, app.batch).
    STALE_DETECTED = "stale_detected"
    STALE_CLEARED = "stale_cleared"
    SUPERVISOR_RESTART_REQUESTED = "supervisor_restart_requested"
    # Supervisor state, questions and restoration (app.state_saves, app.questions).
    SUPERVISOR_STATE_SAVED = "supervisor_state_saved"
    SUPERVISOR_RESTORED = "supervisor_restored"
    SUPERVISOR_SYNC_REQUESTED = "supervisor_sync_requested"
    QUESTION_ASKED = "question_asked"
    QUESTION_ANSWERED = "question_answered"
    QUESTION_CANCELLED = "question_cancelled"
    WORKTREE_REMOVED = "worktree_removed"


__all__ = ["EventType", "TaskStatus"]
