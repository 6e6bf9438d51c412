"""What a daemon reports as text we show as sent: its host, a phase, a current activity.

Their own module because three readers take them and must take the same: a heartbeat (parsed,
or checked on the worker's and the API module's quick paths), a state save and a restoration's
claim, and the HTTP front's bodies bound them by the same numbers. Each is shown as it was
sent (`GET /api/v1/daemons`, the dashboard, the monitor, fence notices, restart commands, logs),
so each is one line: no control character or line separator (`app.domain.control_characters`).
Here are their bounds, their rules in the words every refusal ends with, and the host's rule
itself (`host_problem`); a daemon's id has its own module (`app.domain.daemon_ids`).

Pure (stdlib only).
"""

from __future__ import annotations

from typing import Final

from app.domain.control_characters import code_point, first_control_or_separator

# Bounds of what a daemon reports as text (checked before anything is stored).
MAX_PHASE: Final = 100
MAX_ACTIVITY: Final = 2000
MAX_HOST: Final = 255

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


__all__ = [
    "ACTIVITY_RULE",
    "HOST_RULE",
    "MAX_ACTIVITY",
    "MAX_HOST",
    "MAX_PHASE",
    "PHASE_RULE",
    "host_problem",
]
