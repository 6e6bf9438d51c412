"""Beat-scheduled maintenance on the `sweeps` queue; each is safe to overlap and to repeat."""

from __future__ import annotations

from app import completion_flow, worktrees
from app.broker import send_task
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
    with unit_of_work() as uow:
        due = list(completion_flow.due_completions(uow, utcnow()))
    finished = 0
    for contract_id in due:
        with unit_of_work(send_task) as uow:
            finished += completion_flow.finalize_completion(uow, contract_id, now=utcnow())
    return finished


@celery_app.task(name=TaskName.PUBLISH_PENDING_DAEMON_COMMANDS, base=AccountableTask)
def publish_pending_daemon_commands() -> int:
    """Outbox catch-up: commands committed but not yet handed to the broker."""
    return worktrees.publish_daemon_commands()


@celery_app.task(name=TaskName.RELAY_OUTBOX, base=AccountableTask)
def relay_pending_outbox() -> int:
    """Outbox catch-up: follow-up tasks committed but never handed to the broker."""
    return relay_outbox(get_engine())


@celery_app.task(name=TaskName.DRAIN_DEAD_LETTERS, base=AccountableTask)
def drain_dead_letters() -> int:
    """Dead letters parked in Redis while the database was down go to their table."""
    return drain_pending()
