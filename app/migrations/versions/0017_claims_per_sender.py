"""The worker's message claim is the sender's: `processed_messages` gains `principal_id`.

A message id is unique per sender (each daemon chooses its own), but the claim that makes a
report once-only was keyed `(contract_id, message_id)`. A second sender's report under an id
the first had used on the contract was taken for a repeat delivery: dropped, and its receipt
marked applied. Acceptance refuses such a report now, but one that reaches a worker by another
route (a replayed dead letter, a resend, a message queued before that refusal) was still
dropped. The key becomes `(contract_id, principal_id, message_id)`: each sender's id is its own.

Backfill. A claim's sender is read from the receipts (`message_outcomes`, keyed by sender and
message id, with the contract): when exactly one receipt for the claim's contract and message
id is `applied`, its sender made the claim (a claim commits with its receipt's `applied`).
Any other claim keeps the nil UUID `00000000-0000-0000-0000-000000000000`
(`app.models.CLAIMED_BEFORE_SENDERS`), meaning "claimed before claims named a sender":

- no applied receipt: a claim older than the receipts (migration 0005), or one made without a
  receipt (a report applied in-process, not through the broker);
- two or more: a second sender's report was taken for a repeat of the first's and marked
  applied too, so which of them took effect cannot be told.

A pending receipt is not a claimant: its report has not been applied yet (queued, or lost by
the broker and waiting for a resend), and that is the report per-sender claims let through.

Why the nil row still stops every sender (how the claim reads it). Its message was applied
under the old per-contract rule, by some sender of that id on that contract; a redelivery of
that message after the upgrade must not apply it again, and the sender cannot be told. So a
claim is refused when the contract holds the nil row for its message id as well as when it
holds the sender's own: the claim's INSERT selects its row only if no nil row exists (one
more probe of this key, in the same statement, so no round trip is added), on the ORM path
(`app.agent_reports.claim_message`) and on the task-completed Core path alike. For those old
ids, a second sender is still dropped, as before the upgrade; every id claimed after it is
the sender's own. No nil row is written after this migration: no principal has that id.

Downgrade puts the key back to `(contract_id, message_id)`: where senders shared an id on a
contract, one claim stays (the lowest sender id) and stands for them all again.

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-26
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# `app.models.CLAIMED_BEFORE_SENDERS`, as it was when this ran.
_CLAIMED_BEFORE_SENDERS = uuid.UUID(int=0)

_APPLIED_RECEIPTS = (
    "FROM message_outcomes o WHERE o.contract_id = processed_messages.contract_id "
    "AND o.message_id = processed_messages.message_id AND o.status = 'applied'"
)


def upgrade() -> None:
    op.add_column("processed_messages", sa.Column("principal_id", sa.Uuid(), nullable=True))
    bind = op.get_bind()
    bind.execute(
        sa.text(
            f"UPDATE processed_messages SET principal_id = (SELECT o.principal_id {_APPLIED_RECEIPTS}) "
            f"WHERE (SELECT count(*) {_APPLIED_RECEIPTS}) = 1"
        )
    )
    bind.execute(
        sa.text("UPDATE processed_messages SET principal_id = :nil WHERE principal_id IS NULL").bindparams(
            sa.bindparam("nil", _CLAIMED_BEFORE_SENDERS, type_=sa.Uuid())
        )
    )
    # SQLite cannot change a key in place: batch mode copies the table into a new one.
    with op.batch_alter_table("processed_messages") as batch:
        batch.alter_column("principal_id", existing_type=sa.Uuid(), nullable=False)
        batch.drop_constraint("pk_processed_messages", type_="primary")
        batch.create_primary_key("pk_processed_messages", ["contract_id", "principal_id", "message_id"])


def downgrade() -> None:
    op.get_bind().execute(
        sa.text(
            "DELETE FROM processed_messages WHERE EXISTS (SELECT 1 FROM processed_messages p "
            "WHERE p.contract_id = processed_messages.contract_id "
            "AND p.message_id = processed_messages.message_id "
            "AND p.principal_id < processed_messages.principal_id)"
        )
    )
    with op.batch_alter_table("processed_messages") as batch:
        batch.drop_constraint("pk_processed_messages", type_="primary")
        batch.create_primary_key("pk_processed_messages", ["contract_id", "message_id"])
        batch.drop_column("principal_id")
