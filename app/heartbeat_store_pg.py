"""The PostgreSQL heartbeat store: a list folded into the supervisors by the database.

Its own module because it is the one that differs most from SQLite: each list goes as one JSON
parameter, expanded server-side, in prepared statements (their text is `app.heartbeat_sql`, the
fold among them), into the day-partitioned history, and Python builds no per-heartbeat object
for it. It also keeps what only this store needs: which supervisors this process saw committed
(so a list made only of them skips the first-sight statement) and the JSON and `uuid[]`
parameters' encoding. The interface and the shared helpers are `app.heartbeat_store`'s;
`app.heartbeats_pg` is its caller.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import date, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.heartbeat_sql import COUNT_ONLY, FOLD, SUP_FIRST, SUP_FIRST_GATE, SUP_FIRST_LOCKS
from app.heartbeat_store import (
    STATE_CHANGED,
    FoldResult,
    HeartbeatStore,
    counter_shard,
    ensure_partitions_once,
)
from app.prepared import driver_rows

# Supervisors this process saw committed: they have a row, so a list made only of them skips
# `SUP_FIRST`. A supervisors row goes only with its contract, whose heartbeats are refused
# before the fold (CONTRACT_NOT_FOUND), so a stale entry changes nothing. Bounded: cleared when full.
_known_tasks: set[str] = set()
MAX_KNOWN_TASKS: Final = 200_000


def remember_supervisors(task_ids: Iterable[str]) -> None:
    """After commit: these supervisors have a row (see `_known_tasks`)."""
    if len(_known_tasks) > MAX_KNOWN_TASKS:
        _known_tasks.clear()
    _known_tasks.update(task_ids)


class PostgresStore(HeartbeatStore):
    """One JSON parameter per statement, expanded by `jsonb_to_recordset` on the server."""

    def __init__(self, settings: Settings) -> None:
        self.prepare_statements = settings.database_prepared_statements

    def prepare(self, engine: Engine, day: date) -> None:
        """Make sure today's partition (and tomorrow's) exists: once per process per day."""
        ensure_partitions_once(engine, day)

    def _run(
        self, session: Session, sql: str | Sequence[str], params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        return driver_rows(session.connection(), sql, params, prepare=self.prepare_statements)

    def owners_by_text(self, session: Session, contract_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """(owner, status) of the contracts that exist, keyed by the id as text (no UUID objects)."""
        ids = sorted(set(contract_ids))
        if not ids:
            return {}
        rows = self._run(
            session,
            "SELECT c.id::text, c.owner_id, c.status FROM unnest(%(ids)s::uuid[]) AS t(id) "
            "JOIN contracts c ON c.id = t.id",
            {"ids": _uuid_array(ids)},
        )
        return {cid: (owner, status) for cid, owner, status in rows}

    def fold(
        self,
        session: Session,
        rows: list[dict[str, Any]],
        tasks: set[str],
        first_contract: dict[str, str],
        received_at: datetime,
        bump_before: datetime,
        *,
        received: int,
        repeats: int,
        refused: int,
        notices: bool,
    ) -> FoldResult:
        """Store a de-duplicated list of heartbeats in wire form (each with its position `n`).

        Two round trips whatever the list's length: the first sight of new supervisors (their
        task ids' locks, then their rows: `SUP_FIRST_GATE`, `SUP_FIRST_LOCKS` and `SUP_FIRST`,
        skipped when this process saw every one of them committed), then the fold (`FOLD` in
        `app.heartbeat_sql`), which writes supervisors, events, history, activity and counters.
        `tasks` are the list's task ids; `first_contract` maps those a heartbeat of the list may
        start (`starts_supervisor`) to the contract of the first such heartbeat.
        """
        task_array = _uuid_array(sorted(tasks))
        new = [t for t in sorted(first_contract) if t not in _known_tasks]
        if new:
            self._run(
                session,
                [SUP_FIRST_GATE, SUP_FIRST_LOCKS, SUP_FIRST],
                {
                    "tasks": _uuid_array(new),
                    "contracts": _uuid_array([first_contract[t] for t in new]),
                    "received_at": received_at.isoformat(),
                },
            )
        day = received_at.date()
        params = {
            "rows": _dumps(rows),
            "tasks": task_array,
            "received_at": received_at.isoformat(),
            "event_type": STATE_CHANGED,
            "day": day.isoformat(),
            "oldest": (day - timedelta(days=2)).isoformat(),
            "bump_before": bump_before.isoformat(),
            "shard": counter_shard(),
            "received": received,
            "repeats": repeats,
            "refused": refused,
            "notices": notices,
        }
        (row,) = self._run(session, FOLD, params)
        stored, offered, fenced, touched, changes, applied, _counted, foreign, fenced_json, written = row
        return FoldResult(
            stored=int(stored),
            offered=int(offered),
            fenced=int(fenced),
            touched=int(touched),
            state_changes=int(changes),
            applied=int(applied),
            refused=json.loads(foreign),
            fenced_supervisors=json.loads(fenced_json),
            notices=written if notices else "[]",
        )

    def fold_nothing(
        self, session: Session, received_at: datetime, received: int, refused: int
    ) -> FoldResult:
        """A list with nothing to store still counts what it received and refused."""
        self._run(
            session,
            COUNT_ONLY,
            {
                "shard": counter_shard(),
                "received": received,
                "refused": refused,
                "at": received_at.isoformat(),
            },
        )
        return FoldResult(0, 0, 0, 0, 0, 0, [], [], "[]")


def _uuid_array(ids: Sequence[str]) -> str:
    """A uuid[] literal from canonical UUID strings (cheaper than adapting a list of UUIDs)."""
    return "{" + ",".join(ids) + "}"


def _dumps(value: Any) -> str:
    """JSON text for a parameter: orjson, a tenth of `json.dumps`'s time on a 500-heartbeat list
    (the worker encodes every list it stores once more, for the server to expand)."""
    return orjson.dumps(value).decode()


__all__ = ["PostgresStore", "remember_supervisors"]
