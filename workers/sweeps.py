"""Beat-scheduled maintenance on the `sweeps` queue; each is safe to overlap and to repeat."""

from __future__ import annotations

from app import contracts
from app.db import unit_of_work
from app.models import utcnow
from workers.base import AccountableTask
from workers.celery_app import celery_app
from workers.dead_letter import drain_pending
from workers.dispatch import dispatch, publish_daemon_commands, relay_outbox


@celery_app.task(name="sweeps.finalize_due_completions", base=AccountableTask)
def finalize_due_completions() -> int:
    """Catch-all for completions whose countdown message was lost or delayed."""
    with unit_of_work() as uow:
        due = list(contracts.due_completions(uow.session, utcnow()))
    finished = 0
    for contract_id in due:
        with unit_of_work(dispatch) as uow:
            finished += contracts.finalize_completion(uow, contract_id, now=utcnow())
    return finished


@celery_app.task(name="sweeps.publish_daemon_commands", base=AccountableTask)
def publish_pending_daemon_commands() -> int:
    """Outbox catch-up: commands committed but not yet handed to the broker."""
    return publish_daemon_commands()


@celery_app.task(name="sweeps.relay_outbox", base=AccountableTask)
def relay_pending_outbox() -> int:
    """Outbox catch-up: follow-up tasks committed but never handed to the broker."""
    return relay_outbox()


@celery_app.task(name="sweeps.drain_dead_letters", base=AccountableTask)
def drain_dead_letters() -> int:
    """Dead letters parked in Redis while the database was down go to their table."""
    return drain_pending()
