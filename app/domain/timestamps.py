"""A daemon's timestamps: the calendar they may lie in, and the one form sent as text.

Their own module because a daemon's clock is judged in two places that must agree: a
heartbeat's timestamp (which orders its supervisor's states) and the times of a state save
(its history messages' `at`, a stored snapshot's `savedAt`: `app.domain.state_values`) are
held to the same `EARLIEST`..`LATEST`; and because a heartbeat's timestamp sent as text is read
by the grammar of RFC 3339 (`TIMESTAMP_FORM`), not by whatever one Python version's
`datetime.fromisoformat` reads, which other readers of the same text (PostgreSQL, a daemon's own
tools, a later Python) read otherwise or not at all. `parse_timestamp` raises the caller's own
error naming the field, in our words, never the parser's.

Pure (stdlib only).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final

# A daemon's clock may be wrong, but not by centuries: such a timestamp is a bug, refused.
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9000, 1, 1, tzinfo=UTC)

# The one form a timestamp sent as text may take, in the words its refusals end with.
TIMESTAMP_FORM: Final = (
    "an RFC 3339 date-time, YYYY-MM-DDTHH:MM:SS[.fraction] then Z or ±HH:MM (an offset from "
    "00:00 to 23:59; for example 2026-01-31T10:30:00Z or 2026-01-31T12:30:00.250+02:00; a space "
    "may stand for the T, and t and z may be lower case)"
)
MAX_TIMESTAMP_TEXT: Final = 40

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


def parse_timestamp(raw: Any, name: str, invalid: Callable[[str, str], Exception]) -> datetime:
    """A daemon's timestamp in UTC: an aware datetime, or text in RFC 3339's one form;
    `invalid(field, problem)` is the caller's own error.

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
            raise invalid(
                name,
                f"at most {MAX_TIMESTAMP_TEXT} characters (this one has {len(raw)}): {TIMESTAMP_FORM}",
            )
        match = _RFC3339.fullmatch(raw)
        if match is None:
            raise invalid(name, f"'{raw}' is not {TIMESTAMP_FORM}")
        reason = _off_the_calendar(match)
        if reason is not None:
            raise invalid(name, f"'{raw}' is no date and time on the calendar ({reason}): {TIMESTAMP_FORM}")
        try:
            # Upper case: Python 3.11 reads neither a lower-case t nor z.
            value = datetime.fromisoformat(raw.upper())
        except ValueError:
            # The grammar and the calendar admitted it; never the parser's own words.
            raise invalid(name, f"'{raw}' is not {TIMESTAMP_FORM}") from None
    else:
        raise invalid(name, f"must be a string: {TIMESTAMP_FORM}")
    if value.tzinfo is None:
        raise invalid(name, "needs a time zone (for example 2026-01-31T10:30:00Z)")
    try:
        utc: datetime | None = value.astimezone(UTC)
    except OverflowError:
        # Its offset moves it past an end of the calendar in UTC: 9999-12-31T23:59-02:00 after
        # the last instant, 0001-01-01T00:00+00:01 before the first. Out of range either way,
        # never moved to the nearest bound (which once stored the latter as 2000-01-01).
        utc = None
    if utc is None or not EARLIEST <= utc < LATEST:
        raise invalid(name, f"must lie between {EARLIEST.year} and {LATEST.year}")
    return utc


__all__ = ["EARLIEST", "LATEST", "MAX_TIMESTAMP_TEXT", "TIMESTAMP_FORM", "parse_timestamp"]
