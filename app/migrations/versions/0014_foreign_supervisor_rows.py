"""Remove supervisor rows that took another contract's task id, and their stored heartbeats.

A task id belongs to one contract. Before the fronts and the worker refused heartbeats naming
another contract's task (one reported started there: a `contract_tasks` row), such a heartbeat
made a `supervisors` row for its own contract under that id. The row holds the id for the
wrong contract and locks its owner out: every heartbeat naming the task on its own contract
is refused as another contract's supervisor. This removes every `supervisors` row whose task
id is a `contract_tasks` row of a *different* contract (the rule the worker applies now:
`held_by_another`, and the fold's `contract_tasks` check), with the heartbeat history stored
under it (`supervisor_heartbeats` of that contract and task id; nothing else is keyed to a
supervisors row). Rows whose task is their own contract's, or no contract's task, stay.

What is removed is logged (how many rows, and each contract and task id, up to 100).
Downgrade does nothing: the rows were wrong, and nothing could make them again.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28
"""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# Where Alembic itself says "Running upgrade ...", so `makima migrate` shows it beside that.
log = logging.getLogger("alembic.runtime.migration")
LISTED: int = 100

# A supervisors row `s` whose task id another contract holds as a task reported started there.
_FOREIGN = (
    "EXISTS (SELECT 1 FROM contract_tasks ct WHERE ct.id = {s}.task_id AND ct.contract_id <> {s}.contract_id)"
)


def upgrade() -> None:
    bind = op.get_bind()
    found = bind.execute(
        sa.text(
            "SELECT s.contract_id, s.task_id FROM supervisors s WHERE "
            + _FOREIGN.format(s="s")
            + " ORDER BY s.contract_id, s.task_id"
        )
    ).all()
    if not found:
        log.info("0014: no supervisor row holds another contract's task id")
        return
    heartbeats = bind.execute(
        sa.text(
            "DELETE FROM supervisor_heartbeats WHERE EXISTS (SELECT 1 FROM supervisors s "
            "WHERE s.task_id = supervisor_heartbeats.task_id "
            "AND s.contract_id = supervisor_heartbeats.contract_id AND " + _FOREIGN.format(s="s") + ")"
        )
    ).rowcount
    supervisors = bind.execute(sa.text("DELETE FROM supervisors WHERE " + _FOREIGN.format(s="supervisors")))
    listed = ", ".join(
        f"contract {uuid.UUID(str(contract_id))} task {uuid.UUID(str(task_id))}"
        for contract_id, task_id in found[:LISTED]
    )
    more = f" and {len(found) - LISTED} more" if len(found) > LISTED else ""
    log.warning(
        "0014: removed %d supervisor row(s) holding another contract's task id, with %d stored "
        "heartbeat(s): %s%s",
        supervisors.rowcount,
        heartbeats,
        listed,
        more,
    )


def downgrade() -> None:
    """Nothing to undo: the removed rows were wrong (see the module docstring)."""
