"""A heartbeat's `host` and `timestamp`: what each takes and refuses, on every path that judges it.

The paths: `parse_heartbeat` (the worker's and the HTTP front's full parse), `wire_heartbeat`
(its quick check of what our senders produce, with and without an id), `heartbeat_wire` (the
API module's values) and, for a host, a state save (`parse_save`) and a restoration's claim
(`check_host`). Each refusal names its field and says what is allowed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.domain.errors import ValidationFailed
from app.domain.heartbeat_wire import heartbeat_wire, wire_heartbeat
from app.domain.heartbeats import InvalidHeartbeat, parse_heartbeat
from app.domain.reported_text import HOST_RULE, MAX_HOST, host_problem
from app.domain.state_saves import parse_save
from app.domain.state_values import check_host
from app.domain.timestamps import TIMESTAMP_FORM

CID, TASK = uuid.uuid4(), uuid.uuid4()
T0 = datetime(2026, 11, 26, 10, 15, tzinfo=UTC)
SENT: dict[str, Any] = {
    "taskId": str(TASK),
    "contractId": str(CID),
    "state": "working",
    "phase": "execute",
    "timestamp": "2026-11-26T10:15:00Z",
}
WIRE = parse_heartbeat({**SENT, "id": str(uuid.uuid4())}).to_json()
VALUES: dict[str, Any] = {"task_id": TASK, "contract_id": CID, "state": "working", "phase": "execute",
                          "timestamp": T0}  # fmt: skip
SAVE: dict[str, Any] = {"taskId": str(TASK), "stateVersion": 1, "state": "working", "phase": "execute"}


def heartbeat_paths(field: str, value: Any, keyword: str) -> list[Callable[[], Any]]:
    """Every way a heartbeat's `field` reaches a judgement; `keyword` is the API module's name for it."""
    return [
        lambda: parse_heartbeat({**SENT, field: value}),
        lambda: wire_heartbeat({**WIRE, field: value}),
        lambda: wire_heartbeat({**SENT, field: value}),
        lambda: heartbeat_wire(**{**VALUES, keyword: value}),
    ]


def heartbeat_refusals(field: str, value: Any, keyword: str) -> list[tuple[str, str]]:
    refusals = []
    for path in heartbeat_paths(field, value, keyword):
        with pytest.raises(InvalidHeartbeat) as refused:
            path()
        refusals.append((refused.value.field, refused.value.problem))
    return refusals


def save_and_claim_refusals(host: Any) -> list[tuple[str, str]]:
    refusals = []
    for path in (lambda: parse_save({**SAVE, "host": host}), lambda: check_host(host)):
        with pytest.raises(ValidationFailed) as refused:
            path()
        refusals.append((refused.value.details["field"], refused.value.details["problem"]))
    return refusals


# --- host -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "found"),
    [
        ("gpu\n7", "U+000A"),
        ("gpu-7\r\n", "U+000D"),
        ("gpu\x007", "U+0000"),
        ("\x1b[31mgpu-7", "U+001B"),
        ("gpu\t7", "U+0009"),
        ("gpu\x7f", "U+007F"),
        ("gpu\u00857", "U+0085"),  # NEL, a C1 control: not ASCII, so never on a quick path
        ("gpu\u20287", "U+2028"),  # line separator (Zl, not Cc)
        ("gpu\u20297", "U+2029"),  # paragraph separator (Zp, not Cc)
        ("ünï\n", "U+000A"),
    ],
)
def test_a_host_with_a_control_character_or_line_separator_is_refused_on_every_path(
    host: str, found: str
) -> None:
    """Such a host was taken (all but NUL) and shown as sent: in the daemon list, fence notices,
    restart commands and logs, where a newline forges a line and an escape repaints a terminal."""
    problem = f"must not contain control characters or line separators (found {found}): {HOST_RULE}"
    assert host_problem(host) == problem
    assert heartbeat_refusals("host", host, "host") == [("host", problem)] * 4
    assert save_and_claim_refusals(host) == [("host", problem)] * 2


def test_the_host_rule_says_what_a_host_may_be() -> None:
    assert HOST_RULE == (
        "a host is 1 to 255 characters, not blank, with no control character (NUL, newline, tab, "
        "escape, ...), no line or paragraph separator (U+2028, U+2029) and no bidirectional control "
        "(U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069)"
    )


@pytest.mark.parametrize(
    ("host", "problem"),
    [
        ("", "must not be blank (only spaces or zero-width characters)"),
        ("   ", "must not be blank (only spaces or zero-width characters)"),
        ("x" * (MAX_HOST + 1), f"at most {MAX_HOST} characters (this one has {MAX_HOST + 1})"),
        (7, "must be a string"),
        ("gpu\ud800", f"must be valid Unicode (no lone surrogates): {HOST_RULE}"),
    ],
)
def test_a_blank_overlong_non_text_or_unencodable_host_is_refused_alike_on_every_path(
    host: Any, problem: str
) -> None:
    assert heartbeat_refusals("host", host, "host") == [("host", problem)] * 4
    assert save_and_claim_refusals(host) == [("host", problem)] * 2


@pytest.mark.parametrize(
    "host",
    ["gpu-7", "h", "build-03.eu-west.example.com", "gpu 7", "ünï-host", "主机-7", "x" * MAX_HOST],
)
def test_a_printable_host_is_taken_as_sent_on_every_path(host: str) -> None:
    assert host_problem(host) is None
    assert parse_heartbeat({**SENT, "host": host}).host == host
    assert wire_heartbeat({**WIRE, "host": host})["host"] == host
    assert wire_heartbeat({**SENT, "host": host})["host"] == host
    assert heartbeat_wire(**VALUES, host=host)["host"] == host
    assert parse_save({**SAVE, "host": host}).host == host
    assert check_host(host) == host


def test_a_host_over_the_limit_names_the_limit_in_a_saves_refusal() -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_save({**SAVE, "host": "x" * (MAX_HOST + 1)})
    assert refused.value.details["limit"] == MAX_HOST
    with pytest.raises(ValidationFailed) as control:
        parse_save({**SAVE, "host": "gpu\n7"})
    assert "limit" not in control.value.details  # no bound was broken: the character is the problem


# --- timestamp --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stamp",
    [
        pytest.param("2026-11-26", id="date only"),
        pytest.param("20261126T101500Z", id="basic format"),
        pytest.param("2026-11-26T101500Z", id="basic format time"),
        pytest.param("2026-W48-4", id="week date"),
        pytest.param("2026-W48-4T10:15:00Z", id="week date with a time"),
        pytest.param("2026W484T10:15:00Z", id="basic week date with a time"),
        pytest.param("2026-330T10:15:00Z", id="ordinal date"),
        pytest.param("2026-11-26T10:15Z", id="no seconds"),
        pytest.param("2026-11-26T10Z", id="hour only"),
        pytest.param("2026-11-26T10:15:00,5Z", id="decimal comma"),
        pytest.param("2026-11-26T10:15:00.Z", id="empty fraction"),
        pytest.param("2026-11-26T10:15:00+0530", id="offset without a colon"),
        pytest.param("2026-11-26T10:15:00+05", id="offset in hours only"),
        pytest.param("2026-11-26T10:15:00+05:30:15", id="offset with seconds"),
        pytest.param("2026-11-26T10:15:00 Z", id="space before the zone"),
        pytest.param("2026-11-26_10:15:00Z", id="another separator"),
        pytest.param("2026-11-26T10:15:00ZZ", id="trailing text"),
        pytest.param(" 2026-11-26T10:15:00Z", id="leading space"),
        pytest.param("26-11-26T10:15:00Z", id="two-digit year"),
        pytest.param("2026-1-26T10:15:00Z", id="one-digit month"),
        pytest.param("\uff12\uff10\uff12\uff16-11-26T10:15:00Z", id="full-width digits"),
        pytest.param("", id="empty"),
    ],
)
def test_a_timestamp_in_another_form_than_rfc_3339_is_refused_on_every_path(stamp: str) -> None:
    """`datetime.fromisoformat` takes most of these (basic and week dates, no seconds, a comma,
    +0530): they were accepted, though the protocol promises only RFC 3339's form."""
    assert (
        heartbeat_refusals("timestamp", stamp, "timestamp")
        == [("timestamp", f"'{stamp}' is not {TIMESTAMP_FORM}")] * 4
    )


def test_the_refusal_says_which_form_a_timestamp_takes() -> None:
    assert TIMESTAMP_FORM.startswith("an RFC 3339 date-time, YYYY-MM-DDTHH:MM:SS[.fraction] then Z or ±HH:MM")
    assert "2026-01-31T10:30:00Z" in TIMESTAMP_FORM


@pytest.mark.parametrize(
    ("stamp", "instant"),
    [
        ("2026-11-26T10:15:00Z", T0),
        ("2026-11-26T10:15:00+00:00", T0),
        ("2026-11-26T10:15:00-00:00", T0),  # RFC 3339: UTC, local offset unknown
        ("2026-11-26T15:45:00+05:30", T0),
        ("2026-11-26T02:15:00-08:00", T0),
        ("2026-11-26T10:15:00.5Z", T0 + timedelta(milliseconds=500)),
        ("2026-11-26T10:15:00.250+00:00", T0 + timedelta(milliseconds=250)),
        ("2026-11-26T10:15:00.123456Z", T0 + timedelta(microseconds=123456)),
        ("2026-11-26T10:15:00.123456789Z", T0 + timedelta(microseconds=123456)),  # kept to microseconds
        ("2026-11-26 10:15:00Z", T0),  # the space RFC 3339's note allows
        ("2026-11-26t10:15:00Z", T0),
        ("2026-11-26T10:15:00z", T0),
        ("2026-11-26t10:15:00.5z", T0 + timedelta(milliseconds=500)),
    ],
)
def test_an_rfc_3339_timestamp_is_taken_as_its_instant_on_every_path(stamp: str, instant: datetime) -> None:
    assert parse_heartbeat({**SENT, "timestamp": stamp}).timestamp == instant
    for path in heartbeat_paths("timestamp", stamp, "timestamp")[1:]:
        assert datetime.fromisoformat(path()["timestamp"]) == instant


@pytest.mark.parametrize(
    ("stamp", "reason"),
    [
        ("2026-02-30T10:15:00Z", "day 30 is not from 01 to 28 in 2026-02"),
        ("2028-02-30T10:15:00Z", "day 30 is not from 01 to 29 in 2028-02"),
        ("2026-11-00T10:15:00Z", "day 00 is not from 01 to 30 in 2026-11"),
        ("2026-11-26T24:00:00Z", "hour 24 is not from 00 to 23"),
        ("2026-11-26T10:60:00Z", "minute 60 is not from 00 to 59"),
        ("2026-11-26T23:59:60Z", "second 60 is not from 00 to 59 (a leap second cannot be stored)"),
        ("2026-13-01T10:15:00Z", "month 13 is not from 01 to 12"),
        ("2026-00-01T10:15:00Z", "month 00 is not from 01 to 12"),
        ("0000-01-01T10:15:00Z", "there is no year 0000: years run from 0001"),
    ],
)
def test_a_timestamp_in_the_form_but_off_the_calendar_says_why_in_our_words(stamp: str, reason: str) -> None:
    """The reason was the parser's (`day is out of range for month`), whose words change
    between Python versions; it is now ours, naming the part and what it may be."""
    problem = f"'{stamp}' is no date and time on the calendar ({reason}): {TIMESTAMP_FORM}"
    assert heartbeat_refusals("timestamp", stamp, "timestamp") == [("timestamp", problem)] * 4


@pytest.mark.parametrize(
    "stamp",
    [
        pytest.param("2026-11-26T10:15:00+00:90", id="90 offset minutes (Python read +01:30)"),
        pytest.param("2026-11-26T10:15:00+05:99", id="99 offset minutes"),
        pytest.param("2026-11-26T10:15:00-00:60", id="60 offset minutes"),
        pytest.param("2026-11-26T10:15:00+24:00", id="24 offset hours (Python spoke of timedeltas)"),
        pytest.param("2026-11-26T10:15:00-99:00", id="99 offset hours"),
        pytest.param("2026-11-26T10:15:00+99:99", id="both out of range"),
    ],
)
def test_an_offset_past_23_hours_or_59_minutes_is_refused_naming_the_form(stamp: str) -> None:
    """RFC 3339's time-numoffset has hours 00-23 and minutes 00-59: +00:90 was taken as +01:30,
    and +24:00 refused in Python's words ("offset must be a timedelta strictly between ...")."""
    assert (
        heartbeat_refusals("timestamp", stamp, "timestamp")
        == [("timestamp", f"'{stamp}' is not {TIMESTAMP_FORM}")] * 4
    )
    assert "timedelta" not in TIMESTAMP_FORM


@pytest.mark.parametrize(
    ("stamp", "instant"),
    [
        ("2026-11-27T10:14:00+23:59", T0),
        ("2026-11-25T10:16:00-23:59", T0),
        ("2026-11-26T10:15:00+00:59", T0 - timedelta(minutes=59)),
    ],
)
def test_the_offsets_at_the_ends_of_the_range_are_taken_on_every_path(stamp: str, instant: datetime) -> None:
    assert parse_heartbeat({**SENT, "timestamp": stamp}).timestamp == instant
    for path in heartbeat_paths("timestamp", stamp, "timestamp")[1:]:
        assert datetime.fromisoformat(path()["timestamp"]) == instant


def test_the_form_says_what_an_offset_may_be() -> None:
    assert "(an offset from 00:00 to 23:59;" in TIMESTAMP_FORM


def test_a_timestamp_without_a_time_zone_is_still_told_it_needs_one() -> None:
    problem = "needs a time zone (for example 2026-01-31T10:30:00Z)"
    assert heartbeat_refusals("timestamp", "2026-11-26T10:15:00", "timestamp") == [("timestamp", problem)] * 4


def test_a_timestamp_out_of_range_is_still_refused_after_its_form_is_checked() -> None:
    problem = "must lie between 2000 and 9000"
    assert (
        heartbeat_refusals("timestamp", "1999-12-31T23:59:59Z", "timestamp") == [("timestamp", problem)] * 4
    )


@pytest.mark.parametrize(
    ("stamp", "problem"),
    [
        (
            "2026-11-26T10:15:00.123456789012345+05:30",
            f"at most 40 characters (this one has 41): {TIMESTAMP_FORM}",
        ),
        (1764152100, f"must be a string: {TIMESTAMP_FORM}"),
        (["2026-11-26T10:15:00Z"], f"must be a string: {TIMESTAMP_FORM}"),
    ],
)
def test_a_timestamp_that_is_no_short_string_is_refused_naming_the_form(stamp: Any, problem: str) -> None:
    refusals = []
    for path in heartbeat_paths("timestamp", stamp, "timestamp")[:3]:  # the API module takes a datetime too
        with pytest.raises(InvalidHeartbeat) as refused:
            path()
        refusals.append((refused.value.field, refused.value.problem))
    assert refusals == [("timestamp", problem)] * 3


def test_the_api_module_judges_a_datetime_as_its_instant_not_as_the_text_isoformat_gives_it() -> None:
    """An offset with seconds spells out as +00:00:30, no RFC 3339 date-time; the value is still
    a valid instant, on the quick path and off it (a non-ASCII phase leaves the quick path)."""
    odd = datetime(2026, 11, 26, 10, 15, 30, tzinfo=timezone(timedelta(seconds=30)))
    assert odd.isoformat().endswith("+00:00:30")
    for phase in ("execute", "exécuter"):
        wire = heartbeat_wire(**{**VALUES, "timestamp": odd, "phase": phase})
        assert datetime.fromisoformat(wire["timestamp"]) == T0


# --- a timestamp far ahead of the receiving clock ----------------------------------------------


def test_a_heartbeat_up_to_two_hours_ahead_of_the_receiving_clock_is_heard() -> None:
    from datetime import UTC, datetime, timedelta

    from app.domain.heartbeat_wire import refuse_if_far_ahead

    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    for ahead in (timedelta(0), timedelta(hours=1), timedelta(hours=1, minutes=59)):
        refuse_if_far_ahead({"timestamp": (now + ahead).isoformat()}, now)
    refuse_if_far_ahead({"timestamp": (now - timedelta(days=400)).isoformat()}, now)  # late is fine


def test_a_heartbeat_more_than_two_hours_ahead_is_refused_naming_timestamp() -> None:
    from datetime import UTC, datetime, timedelta

    import pytest

    from app.domain.heartbeat_wire import refuse_if_far_ahead
    from app.domain.heartbeats import InvalidHeartbeat

    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    for stamp in ((now + timedelta(hours=2, seconds=1)).isoformat(), "8999-12-31T23:59:59+00:00"):
        with pytest.raises(InvalidHeartbeat) as refused:
            refuse_if_far_ahead({"timestamp": stamp}, now)
        assert refused.value.field == "timestamp"
        assert "more than 2 hours ahead" in refused.value.problem
    refuse_if_far_ahead({"timestamp": (now + timedelta(hours=1, minutes=59)).isoformat()}, now)  # heard
