"""What one save does: its order against the stored save, its incarnation, where its history lands.

Saves are ordered by (incarnation, stateVersion), judged (`judge_save`) before anything is
written, so a fenced, stale or gapped save writes nothing. A save of an incarnation older than
the current one is fenced (`SupervisorFenced`), as is one naming none once the server has
issued an incarnation; one above the current one was never issued (`IncarnationNotIssued`);
one older than the stored save is `StaleState`; an equal one is the same save sent again (a
duplicate: nothing is written, the stored figures are the answer; what a different save under
the same key changed is `app.domain.save_resends`'); a newer one is applied. A newer
incarnation wins whatever its stateVersion, so a restored daemon may count its versions
afresh.

History is appended in increments: `historyFrom` is the position of the first message sent. It
may not lie past the stored end (`HistoryGap`, which says where to resend from); messages at or
after it are replaced, so a daemon that compacted its conversation rewrites its tail. Without
`historyFrom` an append lands at the end; without either the history is untouched. Stdlib
only, like all of `app.domain`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from app.domain.errors import HistoryGap, IncarnationNotIssued, StaleState, SupervisorFenced
from app.domain.state_saves import StateSave


@dataclass(frozen=True, slots=True)
class StoredOrder:
    """What ordering needs of the stored save: its key and how long its history is."""

    incarnation: int
    state_version: int
    history_length: int

    def key(self) -> tuple[int, int]:
        return (self.incarnation, self.state_version)


class SaveVerdict(StrEnum):
    APPLY = "apply"  # newer than the stored save: written
    DUPLICATE = "duplicate"  # the stored save sent again: nothing written, the stored figures answer


@dataclass(frozen=True, slots=True)
class SavePlan:
    """What one save does: its verdict, the incarnation it speaks for, where its history lands."""

    verdict: SaveVerdict
    incarnation: int
    history_from: int | None  # None: the history is left as it is
    history_length: int  # after the save


def current_incarnation(supervisor_incarnation: int | None, stored: StoredOrder | None) -> int:
    """The incarnation in force: the supervisors row's (the heartbeats' authority), else the
    stored save's own, else 1."""
    if supervisor_incarnation is not None:
        return supervisor_incarnation
    return stored.incarnation if stored is not None else 1


def judge_save(contract_id: uuid.UUID, save: StateSave, stored: StoredOrder | None, current: int) -> SavePlan:
    """Decide a save against the stored one; raises SupervisorFenced, IncarnationNotIssued,
    StaleState, HistoryGap.

    Fencing comes first (an old incarnation may write nothing, whatever it sends), then the
    order, then the history: a duplicate is answered before its history is looked at, so a
    resent append is one append. Only the server issues incarnations (`current` is the one in
    force): a save may leave its incarnation out only while the first one is in force (nothing
    was restored, restarted or declared dead), since afterwards the replaced daemon's save would
    look the same; an incarnation above the one in force was never issued and is refused, or it
    would lock the real incarnation out.
    """
    if save.incarnation is None:
        if current > 1:  # the server has issued an incarnation: the save must say it is that one
            raise SupervisorFenced(contract_id, save.task_id, None, current)
        incarnation = current
    else:
        incarnation = save.incarnation
    if incarnation < current:
        raise SupervisorFenced(contract_id, save.task_id, incarnation, current)
    if incarnation > current:
        raise IncarnationNotIssued(contract_id, save.task_id, incarnation, current)
    key = (incarnation, save.state_version)
    if stored is not None:
        if key < stored.key():
            raise StaleState(save.task_id, key, stored.key())
        if key == stored.key():
            return SavePlan(SaveVerdict.DUPLICATE, incarnation, None, stored.history_length)
    stored_length = stored.history_length if stored is not None else 0
    history_from = save.history_from
    if history_from is None and save.history_append is not None:
        history_from = stored_length
    if history_from is not None and history_from > stored_length:
        raise HistoryGap(save.task_id, history_from, stored_length)
    if history_from is None:
        return SavePlan(SaveVerdict.APPLY, incarnation, None, stored_length)
    return SavePlan(
        SaveVerdict.APPLY, incarnation, history_from, history_from + len(save.history_append or ())
    )


def worth_an_event(save: StateSave, before_state: str | None, before_phase: str | None) -> bool:
    """A `supervisor_state_saved` event only for what a person would want in the history: a
    first save, a change of state or phase, a checkpoint. Not one per save."""
    return (
        before_state is None
        or before_state != save.state.value
        or before_phase != save.phase
        or save.checkpoint is not None
    )


__all__ = [
    "SavePlan",
    "SaveVerdict",
    "StoredOrder",
    "current_incarnation",
    "judge_save",
    "worth_an_event",
]
