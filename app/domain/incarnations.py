"""Incarnations: which the server issues, from the first to the last there is.

Its own module because an incarnation is the server's to issue and every writer must issue it
the same way: a supervisor starts at the first (`FIRST_INCARNATION`), so a first heartbeat
naming another names one never issued and starts nothing (`starts_supervisor`); a restoration's
claim or a restart issues the next (`next_incarnation`), one above the one in force, up to
`MAX_INCARNATION`, past which it is refused; a death issues the next too, but at the limit keeps
it (`incarnation_after_death`). So every stored incarnation was issued, and none is ever beyond
what heartbeats, saves and the database's `integer` columns can name. What a heartbeat of any
other incarnation does is `app.domain.fencing`'s.

Pure (stdlib only).
"""

from __future__ import annotations

from typing import Final

from app.domain.errors import IncarnationNotIssued

# Incarnations run from the first to the last a heartbeat, a save and the `integer` columns
# holding them can name; the server never issues one beyond it (`next_incarnation`).
FIRST_INCARNATION: Final = 1
MAX_INCARNATION: Final = 2**31 - 1


def starts_supervisor(incarnation: int | None) -> bool:
    """Whether a heartbeat naming `incarnation` (None: none) may be a supervisor's first.

    A supervisor nobody has heard from or restored has the first incarnation in force; any
    other was never issued, so a first heartbeat naming it is fenced and starts nothing. It
    once started the supervisor at that number: at `MAX_INCARNATION`, the next restart or
    restoration issued one no heartbeat, save or column could name. The same rule for the
    worker's fold (`FOLD` in `app.heartbeat_sql`, in SQL), `plan_batch` and the fronts'
    first claim on a task id (`app.heartbeat_buffer`).
    """
    return incarnation is None or incarnation == FIRST_INCARNATION


def next_incarnation(contract_id: object, task_id: object, in_force: int) -> int:
    """The incarnation a restoration's claim or a restart issues after `in_force` (0: none yet).

    One above it, never beyond `MAX_INCARNATION`: past the limit INCARNATION_NOT_ISSUED (409)
    names it and what the operator can do, and nothing is issued; the incarnation in force
    goes on.
    """
    if in_force >= MAX_INCARNATION:
        raise IncarnationNotIssued(contract_id, task_id, in_force + 1, in_force, limit=MAX_INCARNATION)
    return in_force + 1


def incarnation_after_death(in_force: int) -> int:
    """The incarnation in force once the one in force is declared dead: the next, fencing the
    dead one's late heartbeats; at `MAX_INCARNATION` the same (the sweep refuses nobody: the
    supervisor is still declared dead, and its daemon's heartbeats naming it revive it)."""
    return in_force + 1 if in_force < MAX_INCARNATION else in_force


__all__ = [
    "FIRST_INCARNATION",
    "MAX_INCARNATION",
    "incarnation_after_death",
    "next_incarnation",
    "starts_supervisor",
]
