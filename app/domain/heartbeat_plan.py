"""What a list of heartbeats does to the supervisors, decided before anything is written.

Its own module because it is the one fold both databases apply: `plan_batch` judges each
heartbeat of a list, in the order received, against the stored states and answers a
`BatchPlan` (each heartbeat's `Outcome`, the supervisors' writes, the state changes, the fence
notices), which the SQLite path writes (`app.heartbeats_sqlite`); the PostgreSQL fold applies the
same rules in SQL (`FOLD` in `app.heartbeat_sql`). The rules that decide which heartbeats a
contract takes at all are here too, for the fronts and the worker alike: none on a closed
contract (`closed_contract_refusal`), none naming another contract's task (`held_by_another`).

**Ordering**: a supervisor's states are ordered by (incarnation, timestamp). Within one
incarnation the daemon's own clock orders its heartbeats; a newer incarnation wins whatever its
clock says. An older heartbeat never overwrites a newer state. Which heartbeats are fenced is
`app.domain.fencing`'s.

Pure (stdlib only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum

from app.domain.errors import ValidationFailed
from app.domain.fencing import Fenced, effective_incarnation, is_fenced
from app.domain.heartbeats import Heartbeat
from app.domain.incarnations import FIRST_INCARNATION
from app.domain.lifecycle import CLOSED_STATUSES, closed_refusal
from app.domain.supervisors import StateChange, SupervisorRecord


class Outcome(StrEnum):
    """What became of one heartbeat."""

    APPLIED = "applied"  # its state is now the supervisor's state
    STALE = "stale"  # older than the stored state: recorded, proves liveness, changes no state
    FENCED = "fenced"  # an older incarnation's: recorded, changes nothing, the daemon is told
    DUPLICATE = "duplicate"  # the same id was already received: stored once
    REFUSED = "refused"  # invalid, or the sender may not act on the contract


def judge(
    hb: Heartbeat, current: SupervisorRecord | None, received_at: datetime
) -> tuple[Outcome, SupervisorRecord | None]:
    """What one heartbeat does to the stored state: (outcome, the state afterwards).

    The state afterwards is None only for a fenced heartbeat of a supervisor never stored (a
    first heartbeat naming an incarnation never issued): it starts nothing.
    """
    if is_fenced(hb, current):
        return Outcome.FENCED, current
    incarnation = effective_incarnation(hb, current)
    newer = current is None or (incarnation, hb.timestamp) > current.order_key()
    if not newer:
        assert current is not None
        return Outcome.STALE, replace(current, last_received_at=max(current.last_received_at, received_at))
    return Outcome.APPLIED, SupervisorRecord(
        task_id=hb.task_id,
        contract_id=current.contract_id if current is not None else hb.contract_id,
        incarnation=incarnation,
        state=hb.state,
        phase=hb.phase,
        current_activity=hb.current_activity,
        progress=hb.progress,
        pending_task_ids=hb.pending_task_ids,
        heartbeat_id=hb.id,
        sent_at=hb.timestamp,
        last_received_at=received_at if current is None else max(current.last_received_at, received_at),
        alive=True,
        dead_at=None,
        daemon_id=hb.daemon_id if hb.daemon_id is not None else (current.daemon_id if current else None),
        host=hb.host if hb.host is not None else (current.host if current else None),
        version=current.version if current is not None else 0,
    )


@dataclass
class BatchPlan:
    """Everything one batch does, decided before anything is written.

    `outcomes[i]` belongs to `heartbeats[i]`; `writes` are the supervisors whose row changes
    (before, after); a heartbeat repeated inside the batch is a DUPLICATE and is not written
    twice.
    """

    heartbeats: list[Heartbeat]
    outcomes: list[Outcome]
    writes: dict[uuid.UUID, tuple[SupervisorRecord | None, SupervisorRecord]] = field(default_factory=dict)
    changes: list[StateChange] = field(default_factory=list)
    fenced: list[Fenced] = field(default_factory=list)

    def rows_to_store(self) -> list[tuple[Heartbeat, bool]]:
        """(heartbeat, fenced) for every heartbeat the history keeps (not repeats, not refused)."""
        return [
            (hb, outcome is Outcome.FENCED)
            for hb, outcome in zip(self.heartbeats, self.outcomes, strict=True)
            if outcome not in (Outcome.DUPLICATE, Outcome.REFUSED)
        ]

    def live_contracts(self) -> set[uuid.UUID]:
        """Contracts whose supervisor proved alive in this batch (their activity moves on)."""
        return {
            hb.contract_id
            for hb, outcome in zip(self.heartbeats, self.outcomes, strict=True)
            if outcome in (Outcome.APPLIED, Outcome.STALE)
        }

    def count(self, outcome: Outcome) -> int:
        return sum(1 for o in self.outcomes if o is outcome)


def closed_contract_refusal(status: str) -> ValidationFailed | None:
    """The refusal of a heartbeat on a contract whose stored `status` is closed (completed,
    failed, archived), else None: worded as a state save on it is refused, naming contractId.

    A closed contract's work is over: saves, claims and restarts refuse it, so a heartbeat
    neither starts nor revives its supervisor. The fronts refuse it per heartbeat
    (`app.heartbeat_buffer`) and the worker refuses one that got past them (`app.heartbeats`:
    a contract closed meanwhile), storing nothing.
    """
    if status not in CLOSED_STATUSES:
        return None
    return closed_refusal(status, "supervisor heartbeats", "contractId")


def held_by_another(holder: object | None, contract_id: object) -> bool:
    """Whether a heartbeat naming a task on `contract_id` names another contract's supervisor.

    A supervisor's task id belongs to the contract of its `supervisors` row (`contract_id`,
    written by its first heartbeat and never changed), or, before that row exists, to the
    contract of the first heartbeat in a list that may start it (`starts_supervisor`: one
    naming an incarnation never issued is fenced and claims nothing); `holder` is that
    contract (None: none holds it yet). The same rule everywhere heartbeats are judged: the worker's fold
    (`FOLD` in `app.heartbeat_sql`, in SQL), `plan_batch`, and the fronts
    (`app.heartbeat_buffer`), so what the fronts accept the worker never refuses for this.
    """
    return holder is not None and holder != contract_id


def plan_batch(
    heartbeats: Sequence[Heartbeat],
    current: Mapping[uuid.UUID, SupervisorRecord],
    received_at: datetime,
) -> BatchPlan:
    """Fold a batch, in the order received, into the stored states.

    The result per supervisor is the newest state by (incarnation, timestamp) whatever the
    order inside the batch (keys de-duplicated, newest kept); one state change per
    supervisor at most (its state before the batch against its state after it); one fence
    notice per fenced supervisor and incarnation.
    """
    plan = BatchPlan(list(heartbeats), [])
    state: dict[uuid.UUID, SupervisorRecord | None] = {}
    seen: set[tuple[uuid.UUID, uuid.UUID]] = set()
    fenced_seen: set[tuple[uuid.UUID, int | None]] = set()
    for hb in heartbeats:
        key = (hb.contract_id, hb.id)
        if key in seen:
            plan.outcomes.append(Outcome.DUPLICATE)
            continue
        seen.add(key)
        before = state[hb.task_id] if hb.task_id in state else current.get(hb.task_id)
        if before is not None and held_by_another(before.contract_id, hb.contract_id):
            # A task id belongs to one contract; another contract's claim on it is fenced off.
            plan.outcomes.append(Outcome.REFUSED)
            continue
        outcome, after = judge(hb, before, received_at)
        plan.outcomes.append(outcome)
        if outcome is Outcome.FENCED:
            if (hb.task_id, hb.incarnation) not in fenced_seen:
                fenced_seen.add((hb.task_id, hb.incarnation))
                in_force = before.incarnation if before is not None else FIRST_INCARNATION
                plan.fenced.append(
                    Fenced(hb.contract_id, hb.task_id, hb.incarnation, in_force, hb.daemon_id, hb.host)
                )
            continue
        state[hb.task_id] = after
    for task_id, after in state.items():
        if after is None:
            continue
        before = current.get(task_id)
        plan.writes[task_id] = (before, after)
        if before is None or before.state is not after.state or (not before.alive and after.alive):
            plan.changes.append(
                StateChange(
                    after.contract_id,
                    task_id,
                    before.state if before is not None else None,
                    after.state,
                    after.incarnation,
                    revived=before is not None and not before.alive and after.alive,
                )
            )
    return plan


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = {o.value: 0 for o in Outcome}
    for o in outcomes:
        counts[o.value] += 1
    return counts


__all__ = [
    "BatchPlan",
    "Outcome",
    "closed_contract_refusal",
    "held_by_another",
    "judge",
    "outcome_counts",
    "plan_batch",
]
