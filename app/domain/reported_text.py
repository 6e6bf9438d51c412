"""Text we show as it was sent: a daemon's host, a phase, a current activity, and the names a
contract and its tasks go by.

Their own module because several readers take them and must take the same: a heartbeat (parsed,
or checked on the worker's and the API module's quick paths), a state save and a restoration's
claim, and the HTTP front's bodies bound them by the same numbers. Each is shown as it was
sent (`GET /api/v1/daemons`, the dashboard, the monitor, fence notices, restart commands, logs),
so each is one line that reads as stored: no control character, line separator or
bidirectional control (`app.domain.control_characters`). A contract's name (given by a person
or a daemon when it is created) and a task's name (in a daemon's task reports) are shown in the
same places and held to the same rule (`name_problem`), which also refuses a name of blanks
alone: a task reported as " " was listed with no name at all. Here are their bounds, their
rules in the words every refusal ends with, and the host's rule itself (`host_problem`); a
daemon's id has its own module (`app.domain.daemon_ids`).

Pure (stdlib only).
"""

from __future__ import annotations

from typing import Final, cast

from app.domain.control_characters import (
    BIDI_CONTROLS,
    BIDI_CONTROLS_NAMED,
    ONE_LINE_RULE,
    code_point,
    first_control_or_separator,
    is_blank,
    one_line_problem,
)

# Bounds of what a daemon reports as text (checked before anything is stored).
MAX_PHASE: Final = 100
MAX_ACTIVITY: Final = 2000
MAX_HOST: Final = 255
MAX_CONTRACT_NAME: Final = 500  # contracts.name
MAX_TASK_NAME: Final = 500  # contract_tasks.name

# What a host may be, in the words every refusal of one ends with (`host_problem`).
HOST_RULE: Final = (
    f"a host is 1 to {MAX_HOST} characters, not blank, with no control character (NUL, newline, "
    "tab, escape, ...), no line or paragraph separator (U+2028, U+2029) and no bidirectional "
    f"control ({BIDI_CONTROLS_NAMED})"
)
# What a phase and a current activity may be, in the words their refusals end with: one line
# of text each, shown as sent in the dashboard, the monitor and logs.
PHASE_RULE: Final = (
    f"a phase is 1 to {MAX_PHASE} characters, not blank, on one line: no control character (NUL, "
    "newline, tab, escape, ...), no line or paragraph separator (U+2028, U+2029) and no "
    f"bidirectional control ({BIDI_CONTROLS_NAMED})"
)
ACTIVITY_RULE: Final = (
    f"a current activity is at most {MAX_ACTIVITY} characters on one line: no control character "
    "(NUL, newline, tab, escape, ...), no line or paragraph separator (U+2028, U+2029) and no "
    f"bidirectional control ({BIDI_CONTROLS_NAMED})"
)
# What a contract's name and a task's name may be, in the words their refusals end with.
_NAME_TEXT: Final = f"not only blanks (spaces, zero-width characters), {ONE_LINE_RULE}"
CONTRACT_NAME_RULE: Final = (
    f"a contract's name is 1 to {MAX_CONTRACT_NAME} characters on one line: {_NAME_TEXT}"
)
TASK_NAME_RULE: Final = f"a task's name is 1 to {MAX_TASK_NAME} characters on one line: {_NAME_TEXT}"


def host_problem(value: object) -> str | None:
    """What is wrong with `value` as a daemon's host (a phrase to follow the field's name), or None.

    The one rule wherever a host is taken: a heartbeat (parsed, or checked on the worker's and
    the API module's quick paths), a state save, a restoration's claim. A host is shown as it
    was sent, in `GET /api/v1/daemons`, fence notices, restart commands and logs, so a newline
    there forges a line and an escape sequence repaints whoever's terminal reads it; NUL cannot
    be stored in PostgreSQL text, nor a lone surrogate as UTF-8; a bidirectional control
    (U+202E) shows the host as another one. A host of a tab or a newline alone is refused for
    that character, not as blank (Python counts both as whitespace).
    """
    if not isinstance(value, str):
        return "must be a string"
    bad = first_control_or_separator(value)
    if bad is not None:
        found = code_point(bad)
        what = "bidirectional controls" if bad in BIDI_CONTROLS else "control characters or line separators"
        return f"must not contain {what} (found {found}): {HOST_RULE}"
    if is_blank(value):
        return "must not be blank (only spaces or zero-width characters)"
    if len(value) > MAX_HOST:
        return f"at most {MAX_HOST} characters (this one has {len(value)})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"must be valid Unicode (no lone surrogates): {HOST_RULE}"
    return None


def name_characters_problem(value: object, rule: str) -> str | None:
    """What is wrong with the characters of `value` as a contract's or a task's name (a phrase
    to follow the field's name, ending with `rule`), or None: the one-line rule alone.

    The HTTP front's body schema asks this (a 422 naming the character found); a name of
    blanks alone is a rule of the contract and the report, refused by `name_problem` where the
    API module takes it, so every front answers it with the same VALIDATION_FAILED.
    """
    if not isinstance(value, str):
        return f"must be a string: {rule}"
    problem = one_line_problem(value)
    return None if problem is None else f"{problem}: {rule}"


def name_problem(value: object, rule: str) -> str | None:
    """What is wrong with `value` as a contract's or a task's name (a phrase to follow the
    field's name, ending with `rule`: `CONTRACT_NAME_RULE` or `TASK_NAME_RULE`), or None.

    A name is shown as sent in the dashboard, the monitor, the events and logs, where a newline
    forges a line, an escape repaints a terminal and U+202E makes the name read as another; a
    name of spaces or zero-width characters alone is shown as no name at all (`is_blank`, the
    questions' meaning of blank). The characters are judged first, so a name of a newline alone
    is refused for the newline. The length is bounded where a name is sent (the HTTP schema)
    and where it is stored.
    """
    problem = name_characters_problem(value, rule)
    if problem is not None:
        return problem
    if is_blank(cast(str, value)):
        return f"must not be blank: {rule}"
    return None


__all__ = [
    "ACTIVITY_RULE",
    "CONTRACT_NAME_RULE",
    "HOST_RULE",
    "MAX_ACTIVITY",
    "MAX_CONTRACT_NAME",
    "MAX_HOST",
    "MAX_PHASE",
    "MAX_TASK_NAME",
    "PHASE_RULE",
    "TASK_NAME_RULE",
    "host_problem",
    "name_characters_problem",
    "name_problem",
]
