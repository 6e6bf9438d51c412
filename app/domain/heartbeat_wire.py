"""A heartbeat in wire form: the quick checks that spare the hot paths a full parse.

Its own module because it is the hot paths' alone, and long for what it does: the worker
(`app.heartbeats_pg`), the fronts (`app.heartbeat_buffer`) and the API module's `send_heartbeat`
(`app.api.supervisors`) take heartbeats by the thousand, and building a `Heartbeat` for each was
most of their cost. A heartbeat in the form our senders produce (`Heartbeat.to_json`) is checked
here in microseconds and kept as it is (`wire_heartbeat`; `heartbeat_wire` for one given as
values); anything else goes through `parse_heartbeat` (`app.domain.heartbeats`), so both accept
and refuse exactly the same heartbeats with the same field named (unit tests hold the paths to
it). The fronts also refuse a heartbeat stamped more than `MAX_AHEAD` past their clock
(`refuse_if_far_ahead`), which would otherwise hold its supervisor's state for ever.

Pure (stdlib only).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, cast

from app.domain.daemon_ids import DOT_SEGMENTS, MAX_DAEMON_ID
from app.domain.heartbeats import (
    FIELDS,
    MAX_PENDING_TASKS,
    InvalidHeartbeat,
    derive_heartbeat_id,
    derived_id_text,
    parse_heartbeat,
)
from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import MAX_ACTIVITY, MAX_PHASE, host_problem
from app.domain.supervisors import SupervisorState
from app.domain.timestamps import EARLIEST, LATEST

_UUID_PATTERN: Final = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_CANONICAL_UUID: Final = re.compile(_UUID_PATTERN)
_TWO_UUIDS: Final = re.compile(_UUID_PATTERN * 2)
_THREE_UUIDS: Final = re.compile(_UUID_PATTERN * 3)
# UTC only: Python accepts offsets PostgreSQL refuses (beyond ±15:59); any other is normalized.
_PLAIN_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-]00:00)"
)
_STATES: Final = frozenset(s.value for s in SupervisorState)


def _plain_text(raw: Any, limit: int) -> bool:
    """Printable ASCII within the limit: the phase and activity rules find nothing in it
    (printable ASCII holds no control character, and no separator is ASCII)."""
    return type(raw) is str and len(raw) <= limit and raw.isascii() and raw.isprintable()


def _plain_daemon_id(raw: Any) -> bool:
    """ASCII, printable, not blank, not "." or "..", within the limit: `daemon_id_problem`
    finds nothing in it.

    Printable ASCII is ASCII without the control characters (U+0000-U+001F, U+007F), the only
    ones the rule could find there; any other id is left to the rule itself.
    """
    return (
        type(raw) is str
        and len(raw) <= MAX_DAEMON_ID
        and raw.isascii()
        and raw.isprintable()
        and raw.strip() != ""
        and raw not in DOT_SEGMENTS
    )


def _canonical(raw: Any) -> bool:
    return type(raw) is str and _CANONICAL_UUID.fullmatch(raw) is not None


def _wire_form(raw: Any) -> datetime | None:
    """The timestamp when `raw` is valid *and in the form `to_json` gives, but for a missing id*.

    The quick check for the hot paths: what our own senders produce (`Heartbeat.to_json`:
    canonical lower-case UUIDs, an id, a plain ISO timestamp, ASCII text), and what a daemon
    posting plain JSON usually sends (the same without an id). Anything else, valid or not,
    answers None and goes through `parse_heartbeat`, which names the field or normalizes it.
    """
    if type(raw) is not dict or not raw.keys() <= FIELDS:
        return None
    get = raw.get
    # The two or three ids in one match: each must be a string of exactly 36 characters first,
    # so that together they can only match as canonical UUIDs one after the other.
    task, contract, given = get("taskId"), get("contractId"), get("id")
    if type(task) is not str or type(contract) is not str or len(task) != 36 or len(contract) != 36:
        return None
    if given is None:
        if _TWO_UUIDS.fullmatch(task + contract) is None:
            return None
    elif (
        type(given) is not str or len(given) != 36 or _THREE_UUIDS.fullmatch(task + contract + given) is None
    ):
        return None
    state = get("state")
    if type(state) is not str or state not in _STATES:
        return None
    phase = get("phase")
    if not _plain_text(phase, MAX_PHASE) or not cast(str, phase).strip():
        return None
    activity = get("currentActivity")
    if activity is not None and not _plain_text(activity, MAX_ACTIVITY):
        return None
    daemon_id = get("daemonId")
    if daemon_id is not None and not _plain_daemon_id(daemon_id):
        return None
    host = get("host")
    if host is not None and host_problem(host) is not None:
        return None
    progress = get("progress", 0)
    if type(progress) is not int or not 0 <= progress <= 100:
        return None
    incarnation = get("incarnation")
    if incarnation is not None and (type(incarnation) is not int or not 1 <= incarnation <= MAX_INCARNATION):
        return None
    pending = get("pendingTaskIds", ())
    if pending:
        if type(pending) is not list or len(pending) > MAX_PENDING_TASKS:
            return None
        if not all(_canonical(p) for p in pending):
            return None
    elif type(pending) is not list and pending != ():
        return None
    stamp = raw.get("timestamp")
    if type(stamp) is not str or _PLAIN_TIMESTAMP.fullmatch(stamp) is None:
        return None
    try:
        value = datetime.fromisoformat(stamp)
        return value if EARLIEST <= value < LATEST else None
    except (ValueError, OverflowError):
        return None


# How far ahead of the receiving clock a heartbeat's own timestamp may be. The newest timestamp
# decides a supervisor's state, so one stamped in the year 8999 would hold its state for ever
# against every later heartbeat, and one stamped 23 hours ahead held it for 23 hours against the
# same daemon's heartbeats once its clock was put right. A daemon whose clock is an hour off
# either way is still heard (tested); one more than two hours ahead is broken and told so.
MAX_AHEAD: Final = timedelta(hours=2)


def refuse_if_far_ahead(item: Mapping[str, Any], now: datetime) -> None:
    """InvalidHeartbeat naming `timestamp` when a wire-form heartbeat is more than `MAX_AHEAD`
    past `now` (the front's clock when it receives it)."""
    stamp = datetime.fromisoformat(item["timestamp"])
    if stamp > now + MAX_AHEAD:
        raise InvalidHeartbeat(
            "timestamp",
            f"is more than 2 hours ahead of the server's clock ({now.isoformat(timespec='seconds')}); "
            "fix the daemon's clock (a heartbeat's own time orders its supervisor's states)",
        )


def wire_heartbeat(raw: Any) -> dict[str, Any]:
    """A heartbeat as sent → its wire form (`Heartbeat.to_json`'s fields), or `InvalidHeartbeat`.

    The worker stores heartbeats from this form without building `Heartbeat` objects: a
    heartbeat already in that form (every one our senders produce) is returned as it is after
    a quick check (`_wire_form`, a few microseconds), one without an id gets the derived id;
    any other goes through `parse_heartbeat`, so both accept and refuse exactly the same
    heartbeats, with the same field named.
    """
    timestamp = _wire_form(raw)
    if timestamp is None:
        return parse_heartbeat(raw).to_json()
    if raw.get("id") is None:
        return {**raw, "id": derived_id_text(raw["taskId"], timestamp.astimezone(UTC).isoformat())}
    return cast(dict[str, Any], raw)


def heartbeat_wire(
    task_id: Any,
    contract_id: Any,
    state: Any,
    phase: Any,
    *,
    current_activity: Any = "",
    progress: Any = 0,
    pending_task_ids: Any = (),
    timestamp: Any,
    heartbeat_id: Any = None,
    incarnation: Any = None,
    daemon_id: Any = None,
    host: Any = None,
) -> dict[str, Any]:
    """A heartbeat given as values (the API module's `send_heartbeat`) → its wire form, or `InvalidHeartbeat`.

    The usual call (UUIDs, an aware `datetime`, short ASCII text) is checked value by value
    and its wire form built at once, with the derived id when none is given: nothing is
    turned into text only to be read back (`_wire_form` re-reading what was just written was
    most of the API module's cost per heartbeat). Anything else is spelled out as sent and
    goes through `wire_heartbeat`, so exactly the same values are accepted and refused, with
    the same field named (a unit test holds the two paths to it).
    """
    wire = _wire_of_values(
        task_id, contract_id, state, phase, current_activity, progress, pending_task_ids, timestamp,
        heartbeat_id, incarnation, daemon_id, host,
    )  # fmt: skip
    if wire is not None:
        return wire
    raw: dict[str, Any] = {
        "taskId": str(task_id),
        "contractId": str(contract_id),
        "state": state,
        "phase": phase,
        "currentActivity": current_activity,
        "progress": progress,
        # Not a list or tuple (None, a number): as it is, for the parse to judge as the HTTP
        # front does (null is no pending task; anything else is refused naming the field).
        "pendingTaskIds": [str(t) for t in pending_task_ids]
        if isinstance(pending_task_ids, list | tuple)
        else pending_task_ids,
        # A datetime stays one: judged as the instant it is, not as the text `isoformat` gives
        # it, which for an offset with seconds (+00:00:30) is no RFC 3339 date-time.
        "timestamp": timestamp,
    }
    if (
        heartbeat_id is None
        and isinstance(task_id, uuid.UUID)
        and isinstance(timestamp, datetime)
        and timestamp.tzinfo is not None
    ):
        # The id the server would derive, named here so the heartbeat leaves in wire form; none
        # for a time its offset pushes off the calendar in UTC, which the parse refuses below.
        with contextlib.suppress(OverflowError):
            heartbeat_id = derive_heartbeat_id(task_id, timestamp)
    optional = {"id": heartbeat_id, "incarnation": incarnation, "daemonId": daemon_id, "host": host}
    raw.update({k: str(v) if isinstance(v, uuid.UUID) else v for k, v in optional.items() if v is not None})
    return wire_heartbeat(raw)


def _wire_of_values(
    task_id: Any,
    contract_id: Any,
    state: Any,
    phase: Any,
    current_activity: Any,
    progress: Any,
    pending_task_ids: Any,
    timestamp: Any,
    heartbeat_id: Any,
    incarnation: Any,
    daemon_id: Any,
    host: Any,
) -> dict[str, Any] | None:
    """`heartbeat_wire`'s quick path: the wire form when every value is plainly valid, else None."""
    if type(task_id) is not uuid.UUID or type(contract_id) is not uuid.UUID:
        return None
    if type(state) is not str or state not in _STATES:
        return None
    if not _plain_text(phase, MAX_PHASE) or not phase.strip():
        return None
    if not _plain_text(current_activity, MAX_ACTIVITY):
        return None
    if daemon_id is not None and not _plain_daemon_id(daemon_id):
        return None
    if host is not None and host_problem(host) is not None:
        return None
    if type(progress) is not int or not 0 <= progress <= 100:
        return None
    if incarnation is not None and (type(incarnation) is not int or not 1 <= incarnation <= MAX_INCARNATION):
        return None
    if type(pending_task_ids) not in (tuple, list) or len(pending_task_ids) > MAX_PENDING_TASKS:
        return None
    if not all(type(t) is uuid.UUID for t in pending_task_ids):
        return None
    if heartbeat_id is not None and type(heartbeat_id) is not uuid.UUID:
        return None
    if type(timestamp) is not datetime or timestamp.utcoffset() is None:
        return None
    try:
        utc = timestamp.astimezone(UTC)
    except OverflowError:
        return None
    if not EARLIEST <= utc < LATEST:
        return None
    task = str(task_id)
    stamp = utc.isoformat()
    wire: dict[str, Any] = {
        "taskId": task,
        "contractId": str(contract_id),
        "state": state,
        "phase": phase,
        "currentActivity": current_activity,
        "progress": progress,
        "pendingTaskIds": [str(t) for t in pending_task_ids],
        "timestamp": stamp,
        "id": derived_id_text(task, stamp) if heartbeat_id is None else str(heartbeat_id),
    }
    if incarnation is not None:
        wire["incarnation"] = incarnation
    if daemon_id is not None:
        wire["daemonId"] = daemon_id
    if host is not None:
        wire["host"] = host
    return wire


__all__ = ["MAX_AHEAD", "heartbeat_wire", "refuse_if_far_ahead", "wire_heartbeat"]
