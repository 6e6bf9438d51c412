"""Heartbeat ingestion: a whole list of heartbeats per transaction, a constant number of statements.

One Celery task per heartbeat caps the fleet near the broker's per-message ceiling (a few
hundred a second here), so heartbeats travel in lists (`app.heartbeat_buffer`) and a worker
ingests a list like this, whatever its length:

1. who sent it: each group's principal, re-checked (cached, `app.auth.check_principal`);
   each heartbeat checked (`wire_heartbeat`: a quick check of what our senders produce,
   `parse_heartbeat` for anything else, so the same heartbeats are refused with the same
   field named); the contracts' owners and statuses in **one** query, so a sender acts
   only on contracts it may see, and a closed contract's heartbeats (completed, failed,
   archived) are refused as the fronts refuse them (`closed_contract_refusal`): they neither
   start nor revive a supervisor, and are not stored in the history (the fronts refuse the
   same heartbeat, so what became of one does not depend on whether it raced the close);
   like every refusal here they are counted and kept in the list's dead letter;
2. on PostgreSQL (`app.heartbeats_pg`), the list de-duplicated by id goes to the database,
   which folds it into the supervisors itself (`PostgresStore.fold`): **two** statements, the
   first sight of new supervisors, then one that locks the list's supervisors in task order and
   judges every heartbeat against its row as it is then: fenced, another contract's, or one of
   the rest, of which the newest by (incarnation, timestamp) replaces the stored state only if
   newer; it writes the supervisors, the `supervisor_state_changed` events (only for a real
   change), the history rows (a duplicate id stored once), the contracts' `last_activity_at`
   (moved only when older than a tenth of the stale threshold: rewriting the wide contract row
   per heartbeat was the largest cost) and the counters, and answers only what is rare or small
   (the refused and fenced heartbeats, the live notices). No supervisor row is read back and no
   per-heartbeat object is built: the read-back and the Python fold were most of a list's cost;
3. on SQLite (`app.heartbeats_sqlite`: one writer at a time, a statement is a function call)
   the supervisors' stored states are read in **one** query, the pure domain decides everything
   (`app.domain.heartbeat_plan.plan_batch`, the same rules), and the writes go through
   executemany, each supervisor's guarded by the row's write counter (`version`) as it was read.

On PostgreSQL each list travels as one JSON parameter expanded server-side
(`json_to_recordset`). Fenced heartbeats (rare) also write daemon commands through the
daemon-command outbox (`app.heartbeat_fencing`), and so do heartbeats refused because another
contract holds their task id (rarer: the fronts refuse them, unless two first claims on one new
id raced past them): their daemon is told once per task id and contract
(`app.heartbeat_refusals`), beside the dead letter (`app.heartbeat_outcomes`).

**Duplicates across partitions.** The history is partitioned by received day, and a
partitioned table's key must hold the partition key: `(contract_id, id, received_day)`. Within
a day the key refuses a repeated id (exactly, even for two workers at once: the second
waits for the first); a repeat on a later day is caught by checking the id in the earlier
retained days (at most two partitions, one index probe each). Ids are scoped to the contract,
so one owner's ids can neither collide with nor suppress another's. The one gap is two
deliveries of one id in flight at the same moment on either side of midnight UTC; a
redelivery only happens after the first delivery's worker died, so that needs a resend
racing its original across midnight.

**Counters** (received, stored, duplicates, fenced, refused) are rows of `heartbeat_counters`
added in the ingesting transaction, so they are exact whatever crashes (a redelivered list
counts once: the first attempt rolled back); sharded by process, so two workers never wait on
one row. The metrics read their sums (`counters`).

**Where each part lives.** This module is the entry point (`ingest`, which picks the path by
database) and the counters' totals. The message's form is `app.heartbeat_messages`; the report
and the refusals' dead letter, `app.heartbeat_outcomes`; the two paths, `app.heartbeats_pg` and
`app.heartbeats_sqlite`; what a fenced daemon is told, `app.heartbeat_fencing`; how a list is
written, `app.heartbeat_store` and its two stores; the history's retention,
`app.heartbeat_retention`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.broker import Sender
from app.config import Settings, get_settings
from app.db import get_engine
from app.heartbeat_messages import groups_of
from app.heartbeat_outcomes import IngestReport, Notify
from app.heartbeat_store import COUNTERS, store_for
from app.heartbeat_store_pg import PostgresStore
from app.heartbeats_pg import ingest_folded
from app.heartbeats_sqlite import ingest_planned
from app.models import utcnow


def ingest(
    message: Any,
    *,
    sender: Sender | None = None,
    engine: Engine | None = None,
    settings: Settings | None = None,
    now: datetime | None = None,
    notify: Notify | None = None,
) -> IngestReport:
    """Ingest one heartbeats message in one transaction; see the module docstring."""
    settings = settings or get_settings()
    groups = groups_of(message)
    received_at = now or utcnow()
    bind = engine or get_engine()
    store = store_for(bind, settings)
    store.prepare(bind, received_at.date())
    if isinstance(store, PostgresStore):
        return ingest_folded(groups, store, sender, bind, settings, received_at, notify)
    return ingest_planned(groups, store, sender, bind, settings, received_at, notify)


def counters(session: Session) -> dict[str, int]:
    """Totals of the heartbeat counters over every shard (what the metrics will export)."""
    table = COUNTERS
    names = ("received", "stored", "duplicates", "fenced", "refused")
    row = session.execute(select(*(func.coalesce(func.sum(table.c[n]), 0) for n in names))).one()
    return {name: int(value) for name, value in zip(names, row, strict=True)}


__all__ = ["counters", "ingest"]
