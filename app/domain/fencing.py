"""Fencing by incarnation: which heartbeats speak for the incarnation in force, and why not.

Its own module because fencing is judged twice and told by three writers, and all must agree:
`plan_batch` (`app.domain.heartbeat_plan`) and the PostgreSQL fold (`FOLD` in
`app.heartbeat_sql`, which applies these rules in SQL) judge heartbeats by it, and both
ingestion paths and the dead sweep tell a fenced daemon why (`app.heartbeat_fencing`, by
`fence_reason`).

A heartbeat naming another incarnation than the one in force (an older one, or one the server
never issued) is *fenced*: kept for the record, but it changes nothing and proves nothing. A
heartbeat with no incarnation counts as the current one while the supervisor is alive and still
in its first incarnation; once the server issued another (a restoration, a restart, a death),
only a heartbeat naming it counts. `fence_reason` says which case it was from the two numbers
alone, so every writer gives the same reason.

Pure (stdlib only).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from app.domain.heartbeats import Heartbeat
from app.domain.incarnations import FIRST_INCARNATION, starts_supervisor
from app.domain.supervisors import SupervisorRecord


def effective_incarnation(hb: Heartbeat, current: SupervisorRecord | None) -> int:
    """The incarnation a heartbeat speaks for: its own, else the stored one (else the first)."""
    if hb.incarnation is not None:
        return hb.incarnation
    return current.incarnation if current is not None else FIRST_INCARNATION


def is_fenced(hb: Heartbeat, current: SupervisorRecord | None) -> bool:
    """A heartbeat that does not speak for the incarnation in force.

    Incarnations are issued by the server (a restoration, a restart, a death), so a heartbeat
    naming another one is either an older incarnation's or one nobody issued; and once an
    incarnation beyond the first was issued, an unnamed heartbeat may be the replaced daemon's,
    so it must name it (as a state save must). Before that, an unnamed one counts as the
    current incarnation while the supervisor is alive. A supervisor never stored has the first
    incarnation in force (`starts_supervisor`).
    """
    if current is None:
        return not starts_supervisor(hb.incarnation)
    if hb.incarnation is None:
        return not current.alive or current.incarnation > FIRST_INCARNATION
    return hb.incarnation != current.incarnation


class FenceReason(StrEnum):
    """Why a heartbeat was fenced: what it named against the incarnation in force.

    The daemon that receives `supervisor_fenced` acts on it: the one that was issued the
    incarnation in force and merely left it out must name it, an older incarnation's stops,
    and one naming an incarnation nobody issued learns that too instead of hearing that its
    incarnation was replaced.
    """

    NO_INCARNATION = "no_incarnation"  # named none once the server had issued an incarnation
    NOT_ISSUED = "not_issued"  # named one above the one in force: the server never issued it
    REPLACED = "replaced"  # named an older one: declared dead, or replaced by a restoration or restart

    def explain(self, sent: int | None, in_force: int) -> str:
        """The reason in words, with the numbers: what the daemon is told to do about it."""
        if self is FenceReason.NO_INCARNATION:
            return (
                f"this heartbeat named no incarnation, but incarnation {in_force} is in force (issued by "
                "a restoration's claim, a restart or a declared death) and an unnamed heartbeat cannot "
                f"be told from the replaced daemon's. The daemon that was issued incarnation {in_force} "
                "sends it (currentIncarnation) with every heartbeat; any other stops this supervisor."
            )
        if self is FenceReason.NOT_ISSUED:
            return (
                f"incarnation {sent} of this supervisor was never issued: incarnation {in_force} is in "
                "force, and only a restoration, a restart or a declared death issues one. Stop it; a "
                "daemon that does not know its incarnation restores (GET .../supervisor/restoration), "
                "which issues the next one."
            )
        return (
            f"incarnation {sent} of this supervisor was declared dead or replaced by incarnation "
            f"{in_force}; stop it. A restart must send heartbeats with currentIncarnation."
        )


def fence_reason(sent: int | None, in_force: int) -> FenceReason:
    """Why a heartbeat naming incarnation `sent` (None: none) was fenced while `in_force` is the
    supervisor's incarnation.

    From the two numbers alone, so the PostgreSQL fold (which fences in SQL and answers both)
    and `plan_batch` give the same reason; the dead sweep's notice names the incarnation it
    declared dead, an older one. A heartbeat naming the incarnation in force is not fenced:
    asking about it is a mistake (ValueError).
    """
    if sent is None:
        return FenceReason.NO_INCARNATION
    if sent > in_force:
        return FenceReason.NOT_ISSUED
    if sent < in_force:
        return FenceReason.REPLACED
    raise ValueError(
        f"incarnation {sent} is the one in force: a heartbeat naming it is not fenced; only one "
        "naming none, an older one or one never issued is"
    )


@dataclass(frozen=True, slots=True)
class Fenced:
    """A fenced heartbeat's supervisor: its daemon is told to stop that incarnation."""

    contract_id: uuid.UUID
    task_id: uuid.UUID
    sent_incarnation: int | None
    current_incarnation: int
    daemon_id: str | None
    host: str | None

    @property
    def reason(self) -> FenceReason:
        return fence_reason(self.sent_incarnation, self.current_incarnation)


__all__ = ["FenceReason", "Fenced", "effective_incarnation", "fence_reason", "is_fenced"]
