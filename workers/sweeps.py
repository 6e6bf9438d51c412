"""Beat-scheduled maintenance on the `sweeps` queue; each is safe to overlap and to repeat."""

from __future__ import annotations

from app import batch, daemon_commands, sweeps, worktrees
from app.broker import send_task
from app.config import get_settings
from app.db import get_engine, unit_of_work
from app.models import utcnow
from app.outbox import relay_outbox
from app.queues import TaskName
from workers.base import AccountableTask
from workers.celery_app import celery_app
from workers.dead_letter import drain_pending


@celery_app.task(name=TaskName.FINALIZE_DUE_COMPLETIONS, base=AccountableTask)
def finalize_due_completions() -> int:
    """Catch-all for completions whose countdown message was lost or delayed."""
    return sweeps.finalize_due_completions(sweeps.Wiring(sender=send_task))


@celery_app.task(name=TaskName.PUBLISH_PENDING_DAEMON_COMMANDS, base=AccountableTask)
def publish_pending_daemon_commands() -> int:
    """Outbox catch-up: commands committed but not yet handed to the broker."""
    return daemon_commands.publish_pending()


@celery_app.task(name=TaskName.CLEANUP_WORKTREES, base=AccountableTask)
def cleanup_worktrees() -> int:
    """Worktrees of closed contracts not reported removed: ask their daemons again, at most
    once per `[worktrees] cleanup_interval_seconds` each."""
    return worktrees.cleanup_orphans(sender=send_task)


@celery_app.task(name=TaskName.RELAY_OUTBOX, base=AccountableTask)
def relay_pending_outbox() -> int:
    """Outbox catch-up: follow-up tasks committed but never handed to the broker."""
    return relay_outbox(get_engine())


@celery_app.task(name=TaskName.DRAIN_DEAD_LETTERS, base=AccountableTask)
def drain_dead_letters() -> int:
    """Dead letters parked in Redis while the database was down go to their table."""
    return drain_pending()


@celery_app.task(name=TaskName.DETECT_STALE, base=AccountableTask)
def detect_stale() -> int:
    """One `stale_detected` per silent contract's episode, one `stale_cleared` when it ends."""
    found = sweeps.detect_stale(sweeps.Wiring(sender=send_task))
    return found.detected + found.cleared


@celery_app.task(name=TaskName.PAUSE_TIMED_OUT_INPUTS, base=AccountableTask)
def pause_timed_out_inputs() -> int:
    """Contracts waiting for input past `input_timeout_hours` are paused, with the reason."""
    return sweeps.pause_timed_out_inputs(sweeps.Wiring(sender=send_task))


@celery_app.task(name=TaskName.DELETE_EXPIRED_ARCHIVES, base=AccountableTask)
def delete_expired_archives() -> int:
    """Archived contracts past `archive_retention_days` are deleted, each one audited."""
    return sweeps.delete_expired_archives(sweeps.Wiring(sender=send_task))


@celery_app.task(name=TaskName.RESUME_STALLED_BATCHES, base=AccountableTask)
def resume_stalled_batches() -> int:
    """Batches whose runner stopped making progress (its message lost with its worker) go again."""
    settings = get_settings()
    now = utcnow()
    with unit_of_work() as uow:
        stalled = batch.stalled_batches(uow.session, now, batch.stall_after(settings))
        for batch_id in stalled:
            batch.touch_batch(uow.session, batch_id, now)
    for batch_id in stalled:
        send_task(TaskName.RUN_BATCH, {"batchId": str(batch_id)})
    return len(stalled)


@celery_app.task(name=TaskName.PRUNE_EVENTS, base=AccountableTask)
def prune_events() -> int:
    """Contract events past `[monitor] event_retention_days` go, 10,000 per transaction."""
    from app.live_events import prune_events as prune

    retention = get_settings().monitor.event_retention_days
    pruned = 0
    for _ in range(100):  # bounded per run; the next run goes on
        with unit_of_work() as uow:
            gone = prune(uow.session, utcnow(), retention)
        pruned += gone
        if gone == 0:
            break
    return pruned
