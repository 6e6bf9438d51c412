"""A save sent again under the stored (incarnation, stateVersion): a true resend, or a reused version.

A daemon whose answer was lost sends its save again; the server answers it with the stored
figures and writes nothing (`app.domain.save_plan`'s duplicate). That is safe only if the
resend is the stored save: a key names one save, so a daemon that changed anything must count
a new stateVersion, or a lost answer's resend and a new state could not be told apart (and the
new one would be dropped in silence). This module compares the two, history and checkpoint
included, and refuses a different one as `StateVersionReused`, naming what changed. Stdlib
only, like all of `app.domain`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.domain.errors import StateVersionReused
from app.domain.save_plan import SavePlan
from app.domain.state_saves import StateSave


def resend_window(save: StateSave, stored_length: int) -> tuple[int, int] | None:
    """Where a resend's history append would lie in the stored history, as (start, end), or
    None when the save carries no history (or its append cannot have made the stored length)."""
    if not save.touches_history():
        return None
    count = len(save.history_append or ())
    start = save.history_from if save.history_from is not None else stored_length - count
    if start < 0 or start + count != stored_length:
        return None
    return (start, stored_length)


def resend_differences(
    save: StateSave,
    stored: Mapping[str, Any],
    stored_checkpoint: Mapping[str, Any] | None,
    stored_history: Sequence[Any] | None,
) -> list[str]:
    """The fields (wire names) in which a save with the stored (incarnation, stateVersion)
    differs from the stored save; empty for a true resend.

    `stored` is the stored state as `state_snapshot` gives it; `stored_history` the stored
    messages in `resend_window` (None when there is no such window). A key names one save: a
    daemon that changed anything must count a new stateVersion, or a lost answer's resend and
    a new state could not be told apart (and the new one would be dropped in silence).
    """
    sent = save.state_fields()
    differs = [name for name, value in sent.items() if _stored_value(stored.get(name), name) != value]
    for name, value in (("daemonId", save.daemon_id), ("host", save.host)):
        if value is not None and stored.get(name) is not None and stored.get(name) != value:
            differs.append(name)
    if save.touches_history():
        append = [m.to_json() for m in save.history_append or ()]
        if stored_history is None or list(stored_history) != append:
            differs.append("history")
    key = (stored.get("incarnation"), stored.get("stateVersion"))
    took = (
        stored_checkpoint is not None
        and (stored_checkpoint.get("incarnation"), stored_checkpoint.get("stateVersion")) == key
    )
    if save.checkpoint is None:
        if took:
            differs.append("checkpoint")
    elif (
        not took
        or stored_checkpoint is None
        or (stored_checkpoint.get("id"), stored_checkpoint.get("note"))
        != (save.checkpoint.id, save.checkpoint.note)
    ):
        differs.append("checkpoint")
    return differs


def _stored_value(value: Any, name: str) -> Any:
    """A stored value in the form a save's compares with (id lists as lists of text)."""
    if name in ("spawnedTaskIds", "waitingOnTaskIds"):
        return [str(v) for v in value] if isinstance(value, list) else value
    return value


def refuse_a_different_resend(
    save: StateSave,
    plan: SavePlan,
    stored: Mapping[str, Any],
    stored_checkpoint: Mapping[str, Any] | None,
    stored_history: Sequence[Any] | None,
) -> None:
    """Raise `StateVersionReused` when a duplicate's content is not the stored save's."""
    differs = resend_differences(save, stored, stored_checkpoint, stored_history)
    if differs:
        raise StateVersionReused(save.task_id, plan.incarnation, save.state_version, differs)


__all__ = [
    "refuse_a_different_resend",
    "resend_differences",
    "resend_window",
]
