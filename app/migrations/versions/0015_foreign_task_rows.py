"""Remove task rows that took another contract's supervisor task id.

A task id belongs to one contract. Before the fronts and the worker refused task reports
(started, started as supervisor, completed) naming another contract's supervisor, such a
report made a `contract_tasks` row for its own contract under that id. The row holds the id
for the wrong contract and locks the supervisor out: from then on its heartbeats are refused
(the fold's `contract_tasks` check) and so are its state saves and restorations (another
contract's ordinary task). This removes every `contract_tasks` row whose task id another
contract holds as its supervisor: its `supervisors` row (its heartbeats' record) or its
`supervisor_states` row (its saved state), the rule `app.foreign_tasks.task_holder` applies
now. Rows whose task is no other contract's supervisor stay, and so do the removed rows'
events (`task_spawned`, `task_completed`): they are the record of what was reported. The
contract that loses a row does not count it toward its phase's gate any more; the gate is
judged again at its next report, as always.

Which came first is not asked: migration 0014 settled the other way round (a supervisors row
whose id is another contract's task row goes) and runs first on a database before it, so
what this finds is what was made since, by the reports that took a supervisor's id, or a
task row against another contract's saved state, which 0014 does not look at.

What is removed is logged: how many rows, then each one (its contract, task id, name and
status, and the contract whose supervisor it is) on a line of its own. Running it again finds
nothing. Downgrade does nothing: the rows were wrong, and nothing could make them again.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-26
"""

from __future__ import annotations

import logging
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Where Alembic itself says "Running upgrade ...", so `makima migrate` shows it beside that.
log = logging.getLogger("alembic.runtime.migration")

# The supervisors and saved states of a contract other than the task row `{t}`'s, under its id.
_SUPERVISOR_ELSEWHERE = (
    "SELECT s.contract_id FROM supervisors s WHERE s.task_id = {t}.id AND s.contract_id <> {t}.contract_id "
    "UNION ALL SELECT st.contract_id FROM supervisor_states st "
    "WHERE st.task_id = {t}.id AND st.contract_id <> {t}.contract_id"
)


def upgrade() -> None:
    bind = op.get_bind()
    found = bind.execute(
        sa.text(
            "SELECT ct.contract_id, ct.id, ct.name, ct.status, ("
            + _SUPERVISOR_ELSEWHERE.format(t="ct")
            + " LIMIT 1) AS holder FROM contract_tasks ct WHERE EXISTS ("
            + _SUPERVISOR_ELSEWHERE.format(t="ct")
            + ") ORDER BY ct.contract_id, ct.id"
        )
    ).all()
    if not found:
        log.info("0015: no task row holds another contract's supervisor task id")
        return
    removed = bind.execute(
        sa.text(
            "DELETE FROM contract_tasks WHERE EXISTS ("
            + _SUPERVISOR_ELSEWHERE.format(t="contract_tasks")
            + ")"
        )
    ).rowcount
    log.warning("0015: removed %d task row(s) holding another contract's supervisor task id", removed)
    for contract_id, task_id, name, status, holder in found:
        log.warning(
            "0015: removed task row: contract %s task %s (%r, %s), the supervisor of contract %s",
            uuid.UUID(str(contract_id)),
            uuid.UUID(str(task_id)),
            name,
            status,
            uuid.UUID(str(holder)),
        )


def downgrade() -> None:
    """Nothing to undo: the removed rows were wrong (see the module docstring)."""
