"""The heartbeat message: what one heartbeat may hold, and how one as sent becomes a `Heartbeat`.

Its own module because it is the protocol's one definition of a heartbeat, the one the fronts,
the worker on either database and the API module all judge by: the fields (`FIELDS`,
`REQUIRED`), the bounds, the derived id of a heartbeat sent without one, and the full parse
(`parse_heartbeat`). The quick checks of the wire form the hot paths use are
`app.domain.heartbeat_wire`, held to exactly this parse.

- **Parsing** (`parse_heartbeat`): a heartbeat as sent (camelCase JSON) becomes a `Heartbeat`,
  or `InvalidHeartbeat` naming the field. A heartbeat without an `id` gets one derived from its
  task id and timestamp (`derive_heartbeat_id`), so a resend of the same heartbeat is still one.
- Each value by the rule every other reader of it takes too: its `daemonId` by the daemon id
  rule (`app.domain.daemon_ids`), the one the command feed and queues take it by, so a daemon is
  never heard from under an id whose commands it could not read; its `host`, `phase` and
  `currentActivity` by the rules of what a daemon reports as text (`app.domain.reported_text`:
  one line each, as a state save takes them); its `timestamp`, sent as text, as an RFC 3339
  date-time (`app.domain.timestamps`), not whatever else `datetime.fromisoformat` reads; its ids
  as ASCII hex in the UUID's form (`app.domain.uuids`), not whatever else `uuid.UUID` reads; its
  `incarnation` within those the server can issue (`app.domain.incarnations`).

Pure (stdlib only).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from app.domain.control_characters import BIDI_CONTROLS, code_point, first_control_or_separator, is_blank
from app.domain.daemon_ids import daemon_id_problem
from app.domain.incarnations import MAX_INCARNATION
from app.domain.reported_text import ACTIVITY_RULE, MAX_ACTIVITY, MAX_PHASE, PHASE_RULE, host_problem
from app.domain.supervisors import SupervisorState
from app.domain.timestamps import parse_timestamp
from app.domain.uuids import UUID_FORM, parse_uuid

# Bounds of what one heartbeat may carry beside its texts (`app.domain.reported_text`).
MAX_PENDING_TASKS: Final = 1000

# Derived heartbeat ids: uuid5(this namespace, "<taskId>/<timestamp>").
HEARTBEAT_ID_NAMESPACE: Final = uuid.UUID("6f0a4c1e-2b7d-5e93-8c41-9d2e7b3a5f10")

FIELDS: Final = frozenset(
    {
        "id",
        "taskId",
        "contractId",
        "state",
        "phase",
        "currentActivity",
        "progress",
        "pendingTaskIds",
        "timestamp",
        "incarnation",
        "daemonId",
        "host",
    }
)
REQUIRED: Final = ("taskId", "contractId", "state", "phase", "timestamp")


class InvalidHeartbeat(ValueError):
    """One heartbeat cannot be accepted; `field` names what to fix."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One supervisor heartbeat (seed 3.3), plus its id, incarnation and daemon."""

    id: uuid.UUID
    task_id: uuid.UUID
    contract_id: uuid.UUID
    state: SupervisorState
    phase: str
    current_activity: str
    progress: int
    pending_task_ids: tuple[str, ...]
    timestamp: datetime
    incarnation: int | None = None
    daemon_id: str | None = None
    host: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form (camelCase); `parse_heartbeat(h.to_json()) == h`."""
        out: dict[str, Any] = {
            "id": str(self.id),
            "taskId": str(self.task_id),
            "contractId": str(self.contract_id),
            "state": self.state.value,
            "phase": self.phase,
            "currentActivity": self.current_activity,
            "progress": self.progress,
            "pendingTaskIds": list(self.pending_task_ids),
            "timestamp": self.timestamp.isoformat(),
        }
        if self.incarnation is not None:
            out["incarnation"] = self.incarnation
        if self.daemon_id is not None:
            out["daemonId"] = self.daemon_id
        if self.host is not None:
            out["host"] = self.host
        return out


def derive_heartbeat_id(task_id: uuid.UUID, timestamp: datetime) -> uuid.UUID:
    """The id of a heartbeat sent without one: the same task and timestamp, the same id."""
    return uuid.uuid5(HEARTBEAT_ID_NAMESPACE, f"{task_id}/{timestamp.astimezone(UTC).isoformat()}")


_NAMESPACE_BYTES: Final = HEARTBEAT_ID_NAMESPACE.bytes


def derived_id_text(task_id: str, utc_timestamp: str) -> str:
    """`str(derive_heartbeat_id(...))` from the canonical task id and the UTC ISO timestamp as text.

    The same UUIDv5 (SHA-1 of the namespace and the name, version and variant bits set)
    without the two `UUID` objects and their conversions, which were a third of the API
    module's cost per heartbeat; the hot paths hold both as text already.
    """
    name = f"{task_id}/{utc_timestamp}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _uuid(raw: Any, name: str) -> uuid.UUID:
    """A heartbeat's id (taskId, contractId, id, each of pendingTaskIds), by `uuid_problem`."""
    return parse_uuid(raw, name, InvalidHeartbeat)


def _text(raw: Any, name: str, limit: int, rule: str, *, empty: bool) -> str:
    """One line of text (a phase, a current activity), judged by `rule`, which its refusals end with."""
    if not isinstance(raw, str):
        raise InvalidHeartbeat(name, f"must be a string: {rule}")
    if not empty and is_blank(raw):
        blanks = "only blanks (spaces, zero-width characters)"
        raise InvalidHeartbeat(name, f"must not be empty or {blanks}: {rule}")
    if len(raw) > limit:
        raise InvalidHeartbeat(name, f"at most {limit} characters (this one has {len(raw)})")
    bad = first_control_or_separator(raw)
    if bad is not None:
        what = "bidirectional controls" if bad in BIDI_CONTROLS else "control characters or line separators"
        raise InvalidHeartbeat(name, f"must not contain {what} (found {code_point(bad)}): {rule}")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidHeartbeat(name, f"must be valid Unicode (no lone surrogates): {rule}") from None
    return raw


def _int(raw: Any, name: str, low: int, high: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidHeartbeat(name, f"must be a whole number from {low} to {high}")
    if not low <= raw <= high:
        raise InvalidHeartbeat(name, f"must be from {low} to {high} (got {raw})")
    return raw


def _host(raw: Any) -> str:
    problem = host_problem(raw)
    if problem is not None:
        raise InvalidHeartbeat("host", problem)
    return cast(str, raw)


def _timestamp(raw: Any) -> datetime:
    """A heartbeat's timestamp, by `parse_timestamp`'s rule, in UTC."""
    return parse_timestamp(raw, "timestamp", InvalidHeartbeat)


def parse_heartbeat(raw: Any) -> Heartbeat:
    """A heartbeat as sent (camelCase JSON object) → `Heartbeat`, or `InvalidHeartbeat`."""
    if not isinstance(raw, Mapping):
        raise InvalidHeartbeat("heartbeat", "must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in FIELDS)
    if unknown:
        raise InvalidHeartbeat(unknown[0][:60], f"unknown field; allowed: {', '.join(sorted(FIELDS))}")
    for name in REQUIRED:
        if raw.get(name) is None:
            raise InvalidHeartbeat(name, "is required")
    task_id = _uuid(raw["taskId"], "taskId")
    contract_id = _uuid(raw["contractId"], "contractId")
    try:
        state = SupervisorState(raw["state"])
    except (ValueError, TypeError):
        allowed = ", ".join(s.value for s in SupervisorState)
        raise InvalidHeartbeat("state", f"must be one of: {allowed}") from None
    phase = _text(raw["phase"], "phase", MAX_PHASE, PHASE_RULE, empty=False)
    activity = raw.get("currentActivity")
    activity = (
        ""
        if activity is None
        else _text(activity, "currentActivity", MAX_ACTIVITY, ACTIVITY_RULE, empty=True)
    )
    progress = raw.get("progress")
    progress = 0 if progress is None else _int(progress, "progress", 0, 100)
    pending_raw = raw.get("pendingTaskIds")
    pending: tuple[str, ...] = ()
    if pending_raw is not None:
        if not isinstance(pending_raw, list):
            raise InvalidHeartbeat("pendingTaskIds", f"must be a list of task ids: {UUID_FORM}")
        if len(pending_raw) > MAX_PENDING_TASKS:
            raise InvalidHeartbeat("pendingTaskIds", f"at most {MAX_PENDING_TASKS} task ids")
        pending = tuple(str(_uuid(p, "pendingTaskIds")) for p in pending_raw)
    timestamp = _timestamp(raw["timestamp"])
    incarnation = raw.get("incarnation")
    if incarnation is not None:
        incarnation = _int(incarnation, "incarnation", 1, MAX_INCARNATION)
    daemon_id = raw.get("daemonId")
    if daemon_id is not None:
        # The id names the daemon's command feed and queue: taken by their rule, not as free text.
        problem = daemon_id_problem(daemon_id)
        if problem is not None:
            raise InvalidHeartbeat("daemonId", problem)
    host = raw.get("host")
    if host is not None:
        host = _host(host)
    given_id = raw.get("id")
    hb_id = derive_heartbeat_id(task_id, timestamp) if given_id is None else _uuid(given_id, "id")
    return Heartbeat(
        id=hb_id,
        task_id=task_id,
        contract_id=contract_id,
        state=state,
        phase=phase,
        current_activity=activity,
        progress=progress,
        pending_task_ids=pending,
        timestamp=timestamp,
        incarnation=incarnation,
        daemon_id=daemon_id,
        host=host,
    )


__all__ = [
    "FIELDS",
    "HEARTBEAT_ID_NAMESPACE",
    "MAX_PENDING_TASKS",
    "REQUIRED",
    "Heartbeat",
    "InvalidHeartbeat",
    "derive_heartbeat_id",
    "derived_id_text",
    "parse_heartbeat",
]
