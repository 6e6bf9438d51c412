"""Supervisors: the heartbeat message, its ordering, fencing by incarnation, and liveness.

Pure rules (stdlib only, the clock passed in), used by the ingestion worker, the dead sweep,
the API module and the HTTP front alike:

- **Parsing** (`parse_heartbeat`): a heartbeat as sent (camelCase JSON) becomes a
  `Heartbeat`, or `InvalidHeartbeat` naming the field. A heartbeat without an `id` gets one
  derived from its task id and timestamp, so a resend of the same heartbeat is still one.
  Its `daemonId` is judged by the daemon id rule (`app.domain.daemon_ids`), the one the
  command feed and queues take it by, so a daemon is never heard from under an id whose
  commands it could not read; its `host` by the host rule (`host_problem`), the one state
  saves and restorations take a host by; its `phase` and `currentActivity` are one line each
  (`PHASE_RULE`, `ACTIVITY_RULE`: no control character or line separator, as for a host); its
  `timestamp`, sent as text, must be an RFC 3339 date-time (`TIMESTAMP_FORM`), not whatever
  else `datetime.fromisoformat` reads; its ids ASCII hex in the UUID's form (`UUID_FORM`), not
  whatever else `uuid.UUID` reads (`uuid_problem`, the rule state saves, restorations, the
  live monitor's filter and the HTTP front's ids take too).
- **Ordering**: a supervisor's states are ordered by (incarnation, timestamp). Within one
  incarnation the daemon's own clock orders its heartbeats; a newer incarnation wins whatever
  its clock says. An older heartbeat never overwrites a newer state.
- **Fencing**: a heartbeat naming another incarnation than the one in force (an older one, or
  one the server never issued) is *fenced*: kept for the record, but it changes nothing and
  proves nothing. A heartbeat with no incarnation counts as the current one while the
  supervisor is alive and still in its first incarnation; once the server issued another (a
  restoration, a restart, a death), only a heartbeat naming it counts.
- **Incarnations** are the server's to issue (`next_incarnation`), one above the one in force,
  up to `MAX_INCARNATION`: a supervisor starts at the first (`FIRST_INCARNATION`), so a first
  heartbeat naming another names one never issued and is fenced (`starts_supervisor`); a
  restart or a restoration's claim past the limit is refused, and a death at the limit keeps
  it (`incarnation_after_death`). So every stored incarnation was issued, and none is ever
  beyond what heartbeats, saves and the database's column can name.
- **Liveness** is judged by the server's receive time, never by the daemon's clock: a
  supervisor whose last accepted heartbeat was *received* more than the timeout ago is dead.
  Declaring it dead bumps its incarnation, so whatever its old incarnation still sends is
  fenced.
"""

from __future__ import annotations

import calendar
import contextlib
import hashlib
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, cast

from app.domain.control_characters import code_point, first_control_or_separator
from app.domain.daemon_ids import MAX_DAEMON_ID, daemon_id_problem
from app.domain.errors import IncarnationNotIssued, ValidationFailed
from app.domain.lifecycle import CLOSED_STATUSES, closed_refusal


class SupervisorState(StrEnum):
    """What a supervisor is doing (seed 3.2), snake_case on the wire."""

    INITIALIZING = "initializing"
    IDLE = "idle"
    WORKING = "working"
    WAITING_FOR_USER = "waiting_for_user"
    WAITING_FOR_TASKS = "waiting_for_tasks"
    BLOCKED = "blocked"
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class Outcome(StrEnum):
    """What became of one heartbeat."""

    APPLIED = "applied"  # its state is now the supervisor's state
    STALE = "stale"  # older than the stored state: recorded, proves liveness, changes no state
    FENCED = "fenced"  # an older incarnation's: recorded, changes nothing, the daemon is told
    DUPLICATE = "duplicate"  # the same id was already received: stored once
    REFUSED = "refused"  # invalid, or the sender may not act on the contract


# Bounds of what one heartbeat may carry (checked before anything is stored).
MAX_PHASE: Final = 100
MAX_ACTIVITY: Final = 2000
MAX_PENDING_TASKS: Final = 1000
MAX_HOST: Final = 255
# Incarnations run from the first to the last a heartbeat, a save and the `integer` columns
# holding them can name; the server never issues one beyond it (`next_incarnation`).
FIRST_INCARNATION: Final = 1
MAX_INCARNATION: Final = 2**31 - 1
# A daemon's clock may be wrong, but not by centuries: such a timestamp is a bug, refused.
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)

# What a host may be, in the words every refusal of one ends with (`host_problem`).
HOST_RULE: Final = (
    f"a host is 1 to {MAX_HOST} characters, not blank, with no control character (NUL, newline, "
    "tab, escape, ...) and no line or paragraph separator (U+2028, U+2029)"
)
# What a phase and a current activity may be, in the words their refusals end with: one line
# of text each, shown as sent in the dashboard, the monitor and logs.
PHASE_RULE: Final = (
    f"a phase is 1 to {MAX_PHASE} characters, not blank, on one line: no control character (NUL, "
    "newline, tab, escape, ...) and no line or paragraph separator (U+2028, U+2029)"
)
ACTIVITY_RULE: Final = (
    f"a current activity is at most {MAX_ACTIVITY} characters on one line: no control character "
    "(NUL, newline, tab, escape, ...) and no line or paragraph separator (U+2028, U+2029)"
)
# The one form a timestamp sent as text may take, in the words its refusals end with.
TIMESTAMP_FORM: Final = (
    "an RFC 3339 date-time, YYYY-MM-DDTHH:MM:SS[.fraction] then Z or ±HH:MM (an offset from "
    "00:00 to 23:59; for example 2026-01-31T10:30:00Z or 2026-01-31T12:30:00.250+02:00; a space "
    "may stand for the T, and t and z may be lower case)"
)
# What a task, contract or heartbeat id sent as text may be, in the words its refusals end with.
UUID_FORM: Final = (
    "a UUID is 32 hexadecimal digits (0-9, a-f or A-F) grouped 8-4-4-4-12 by hyphens, for "
    "example 123e4567-e89b-42d3-a456-426614174000, or the same 32 digits without hyphens"
)
MAX_TIMESTAMP_TEXT: Final = 40

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


# ASCII hex digits only, in the two groupings: `uuid.UUID` also reads full-width digits,
# braces, a urn:uuid: prefix, hyphens anywhere, underscores and spaces, so one id had many
# spellings, some of which no other reader (PostgreSQL, a daemon's tools) takes. The pattern is
# public for the HTTP front's path ids (`app.http.routing`), which must match what this takes.
UUID_TEXT_PATTERN: Final = (
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
_UUID_TEXT: Final = re.compile(UUID_TEXT_PATTERN)


def uuid_problem(value: object) -> str | None:
    """What is wrong with `value` as an id sent as text (a phrase to follow the field's name), or
    None: a `UUID`, or text in `UUID_FORM`, either case.

    The one rule for an id: a heartbeat's (taskId, contractId, id, each of pendingTaskIds), a
    state save's, a restoration's and a restart's task ids, the live monitor's contractIds, and
    the HTTP front's path ids (`app.http.routing`, `app.http.bodies.UUIDText`). Its refusals end
    with `UUID_FORM`.
    """
    if isinstance(value, uuid.UUID):
        return None
    if not isinstance(value, str):
        return f"must be a UUID string: {UUID_FORM}"
    if _UUID_TEXT.fullmatch(value) is None:
        return f"'{value[:60]}' is not a UUID: {UUID_FORM}"
    return None


def parse_uuid(raw: Any, name: str, invalid: Callable[[str, str], Exception]) -> uuid.UUID:
    """An id as sent (or already a `UUID`) by `uuid_problem`'s rule; `invalid(field, problem)`
    is the caller's own error."""
    problem = uuid_problem(raw)
    if problem is not None:
        raise invalid(name, problem)
    return raw if isinstance(raw, uuid.UUID) else uuid.UUID(raw)


def _uuid(raw: Any, name: str) -> uuid.UUID:
    """A heartbeat's id (taskId, contractId, id, each of pendingTaskIds), by `uuid_problem`."""
    return parse_uuid(raw, name, InvalidHeartbeat)


def _text(raw: Any, name: str, limit: int, rule: str, *, empty: bool) -> str:
    """One line of text (a phase, a current activity), judged by `rule`, which its refusals end with."""
    if not isinstance(raw, str):
        raise InvalidHeartbeat(name, f"must be a string: {rule}")
    if not empty and not raw.strip():
        raise InvalidHeartbeat(name, f"must not be empty: {rule}")
    if len(raw) > limit:
        raise InvalidHeartbeat(name, f"at most {limit} characters (this one has {len(raw)})")
    bad = first_control_or_separator(raw)
    if bad is not None:
        raise InvalidHeartbeat(
            name, f"must not contain control characters or line separators (found {code_point(bad)}): {rule}"
        )
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


def host_problem(value: object) -> str | None:
    """What is wrong with `value` as a daemon's host (a phrase to follow the field's name), or None.

    The one rule wherever a host is taken: a heartbeat (parsed, or checked on the worker's and
    the API module's quick paths), a state save, a restoration's claim. A host is shown as it
    was sent, in `GET /api/v1/daemons`, fence notices, restart commands and logs, so a newline
    there forges a line and an escape sequence repaints whoever's terminal reads it; NUL cannot
    be stored in PostgreSQL text, nor a lone surrogate as UTF-8.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_HOST:
        return f"at most {MAX_HOST} characters (this one has {len(value)})"
    bad = first_control_or_separator(value)
    if bad is not None:
        found = code_point(bad)
        return f"must not contain control characters or line separators (found {found}): {HOST_RULE}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"must be valid Unicode (no lone surrogates): {HOST_RULE}"
    return None


def _host(raw: Any) -> str:
    problem = host_problem(raw)
    if problem is not None:
        raise InvalidHeartbeat("host", problem)
    return cast(str, raw)


# RFC 3339's date-time (section 5.6), with the space its note allows for the T; the offset is
# optional here only so that a time without one is told it needs a time zone, as it always was.
# Its hours run 00-23 and minutes 00-59 (time-numoffset): Python reads +00:90 as +01:30, and
# refuses +24:00 in words about its own timedelta.
_RFC3339: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


def _off_the_calendar(match: re.Match[str]) -> str | None:
    """Why text in the date-time's form names no date and time (in our words, not the
    parser's, which change between Python versions), or None."""
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    if year < 1:
        return "there is no year 0000: years run from 0001"
    if not 1 <= month <= 12:
        return f"month {match[2]} is not from 01 to 12"
    last = calendar.monthrange(year, month)[1]
    if not 1 <= day <= last:
        return f"day {match[3]} is not from 01 to {last} in {match[1]}-{match[2]}"
    if hour > 23:
        return f"hour {match[4]} is not from 00 to 23"
    if minute > 59:
        return f"minute {match[5]} is not from 00 to 59"
    if second > 59:
        return f"second {match[6]} is not from 00 to 59 (a leap second cannot be stored)"
    return None


def _timestamp(raw: Any) -> datetime:
    """A heartbeat's timestamp: an aware datetime, or text in RFC 3339's one form.

    `datetime.fromisoformat` reads far more than the protocol promises: a date alone, the basic
    format (20261126T101500Z), week dates (2026-W48-4), times without seconds or with a decimal
    comma, offsets without a colon or with seconds. Taking whatever it reads made the protocol
    one Python version's parser, which other readers of the same text (PostgreSQL, a daemon's
    own tools, a later Python) read otherwise or not at all; the grammar decides instead, and
    only text it admits reaches the parser.
    """
    if isinstance(raw, datetime):
        value = raw
    elif isinstance(raw, str):
        if len(raw) > MAX_TIMESTAMP_TEXT:
            raise InvalidHeartbeat(
                "timestamp",
                f"at most {MAX_TIMESTAMP_TEXT} characters (this one has {len(raw)}): {TIMESTAMP_FORM}",
            )
        match = _RFC3339.fullmatch(raw)
        if match is None:
            raise InvalidHeartbeat("timestamp", f"'{raw}' is not {TIMESTAMP_FORM}")
        reason = _off_the_calendar(match)
        if reason is not None:
            raise InvalidHeartbeat(
                "timestamp", f"'{raw}' is no date and time on the calendar ({reason}): {TIMESTAMP_FORM}"
            )
        try:
            # Upper case: Python 3.11 reads neither a lower-case t nor z.
            value = datetime.fromisoformat(raw.upper())
        except ValueError:
            # The grammar and the calendar admitted it; never the parser's own words.
            raise InvalidHeartbeat("timestamp", f"'{raw}' is not {TIMESTAMP_FORM}") from None
    else:
        raise InvalidHeartbeat("timestamp", f"must be a string: {TIMESTAMP_FORM}")
    if value.tzinfo is None:
        raise InvalidHeartbeat("timestamp", "needs a time zone (for example 2026-01-31T10:30:00Z)")
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:
        # Its offset moves it past an end of the calendar in UTC: 9999-12-31T23:59-02:00 after
        # the last instant, 0001-01-01T00:00+00:01 before the first. Out of range either way,
        # never moved to the nearest bound (which once stored the latter as 2000-01-01).
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise InvalidHeartbeat("timestamp", f"must lie between {EARLIEST.year} and {LATEST.year}")
    return utc


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
    """ASCII, printable, not blank, within the limit: `daemon_id_problem` finds nothing in it.

    Printable ASCII is ASCII without the control characters (U+0000-U+001F, U+007F), the only
    ones the rule could find there; any other id is left to the rule itself.
    """
    return (
        type(raw) is str
        and len(raw) <= MAX_DAEMON_ID
        and raw.isascii()
        and raw.isprintable()
        and raw.strip() != ""
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
# against every later heartbeat; a daemon whose clock is hours off is still heard (skew of an
# hour either way is tested), one a day ahead is broken and told so.
MAX_AHEAD: Final = timedelta(days=1)


def refuse_if_far_ahead(item: Mapping[str, Any], now: datetime) -> None:
    """InvalidHeartbeat naming `timestamp` when a wire-form heartbeat is more than `MAX_AHEAD`
    past `now` (the front's clock when it receives it)."""
    stamp = datetime.fromisoformat(item["timestamp"])
    if stamp > now + MAX_AHEAD:
        raise InvalidHeartbeat(
            "timestamp",
            f"is more than a day ahead of the server's clock ({now.isoformat(timespec='seconds')}); "
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
        "pendingTaskIds": [str(t) for t in pending_task_ids],
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


# --- the stored state and how a heartbeat moves it ------------------------------------------


@dataclass(frozen=True, slots=True)
class SupervisorRecord:
    """A supervisor's current state as stored (one row of `supervisors`).

    `sent_at` is the daemon's timestamp of the heartbeat whose state is stored (None right
    after a death: no heartbeat of the new incarnation yet); `last_received_at` is when we
    last received a heartbeat of the current incarnation. `version` counts writes (0: not
    stored yet), so a writer can tell whether the row changed since it read it.
    """

    task_id: uuid.UUID
    contract_id: uuid.UUID
    incarnation: int
    state: SupervisorState
    phase: str
    current_activity: str
    progress: int
    pending_task_ids: tuple[str, ...]
    heartbeat_id: uuid.UUID | None
    sent_at: datetime | None
    last_received_at: datetime
    alive: bool
    dead_at: datetime | None
    daemon_id: str | None
    host: str | None
    version: int

    def order_key(self) -> tuple[int, datetime]:
        return (self.incarnation, self.sent_at or EARLIEST)


def effective_incarnation(hb: Heartbeat, current: SupervisorRecord | None) -> int:
    """The incarnation a heartbeat speaks for: its own, else the stored one (else the first)."""
    if hb.incarnation is not None:
        return hb.incarnation
    return current.incarnation if current is not None else FIRST_INCARNATION


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


@dataclass(frozen=True, slots=True)
class StateChange:
    """A supervisor's state really changed (a `supervisor_state_changed` event)."""

    contract_id: uuid.UUID
    task_id: uuid.UUID
    old_state: SupervisorState | None
    new_state: SupervisorState
    incarnation: int
    revived: bool = False

    def payload(self) -> dict[str, Any]:
        return {
            "taskId": str(self.task_id),
            "oldState": self.old_state.value if self.old_state is not None else None,
            "newState": self.new_state.value,
            "incarnation": self.incarnation,
            **({"revived": True} if self.revived else {}),
        }


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


# --- liveness -----------------------------------------------------------------------------


def is_dead(record: SupervisorRecord, now: datetime, timeout: timedelta) -> bool:
    """Dead: alive until now, but nothing received from it for longer than the timeout.

    Judged by our receive time only; the daemon's clock (its heartbeat timestamps) has no say,
    so a daemon whose clock runs an hour ahead or behind is neither killed early nor kept alive.
    """
    return record.alive and now - record.last_received_at > timeout


def dead_cutoff(now: datetime, timeout: timedelta) -> datetime:
    """Supervisors last heard before this instant are dead (`is_dead`, as a query bound)."""
    return now - timeout


def declare_dead(record: SupervisorRecord, now: datetime) -> tuple[SupervisorRecord, list[StateChange]]:
    """The record after its supervisor is declared dead, and the state change it makes.

    The incarnation is bumped (`incarnation_after_death`: not past the limit), so the old
    incarnation's late heartbeats are fenced; `sent_at` is cleared, so the first heartbeat of
    the new incarnation wins whatever its clock says.
    """
    after = replace(
        record,
        incarnation=incarnation_after_death(record.incarnation),
        state=SupervisorState.INTERRUPTED,
        alive=False,
        dead_at=now,
        sent_at=None,
        version=record.version + 1,
    )
    changes = []
    if record.state is not SupervisorState.INTERRUPTED:
        changes.append(
            StateChange(record.contract_id, record.task_id, record.state, after.state, after.incarnation)
        )
    return after, changes


def daemon_alive(last_seen: datetime, now: datetime, timeout: timedelta) -> bool:
    """A daemon is alive while one of its supervisors was heard within the timeout."""
    return now - last_seen <= timeout


def activity_bump_before(now: datetime, stale_threshold: timedelta) -> datetime:
    """A contract's `last_activity_at` older than this is moved forward by a heartbeat.

    A tenth of the stale threshold (3 min for 30 min): well under it, so a contract with a
    live supervisor is never judged stale, and its wide, indexed row is rewritten at most
    once per bound instead of on every heartbeat.
    """
    return now - stale_threshold / 10


def retention_cutoff_day(now: datetime, retention: timedelta) -> datetime:
    """Day partitions whose whole day ended before `now - retention` may be dropped."""
    return now - retention


def outcome_counts(outcomes: Iterable[Outcome]) -> dict[str, int]:
    counts = {o.value: 0 for o in Outcome}
    for o in outcomes:
        counts[o.value] += 1
    return counts


__all__ = [
    "FIELDS",
    "FIRST_INCARNATION",
    "MAX_INCARNATION",
    "UUID_FORM",
    "UUID_TEXT_PATTERN",
    "BatchPlan",
    "FenceReason",
    "Fenced",
    "Heartbeat",
    "InvalidHeartbeat",
    "Outcome",
    "StateChange",
    "SupervisorRecord",
    "SupervisorState",
    "activity_bump_before",
    "closed_contract_refusal",
    "daemon_alive",
    "dead_cutoff",
    "declare_dead",
    "derive_heartbeat_id",
    "derived_id_text",
    "effective_incarnation",
    "fence_reason",
    "heartbeat_wire",
    "held_by_another",
    "incarnation_after_death",
    "is_dead",
    "is_fenced",
    "judge",
    "next_incarnation",
    "outcome_counts",
    "parse_heartbeat",
    "parse_uuid",
    "plan_batch",
    "starts_supervisor",
    "uuid_problem",
]
