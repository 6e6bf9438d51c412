"""Daemon ids: the one rule for what may name a daemon, wherever an id is taken.

A daemon chooses its own id, and from then on the id names its command feed
(`GET /api/v1/daemons/{daemonId}/commands`), its broker queue, and the supervisors whose
heartbeats it sent. Heartbeats, state saves, restorations, worktree reports, questions (the
daemon an answer goes to) and the feed all judge an id by `daemon_id_problem`, so an id taken
in one place is never refused in another: a heartbeat that stored an id holding a newline,
which the feed then refused, left that daemon listed with commands it could never read, and a
question naming such a daemon would have had its answer queued where no daemon reads.

Pure (stdlib only): callers raise their own error (`InvalidHeartbeat`, `ValidationFailed`)
with the field named and the problem given here; `daemon_id_refusal` is the sentence a
`ValidationFailed` says, so the feed and a question refuse an id in the same words.
"""

from __future__ import annotations

from typing import Final

from app.domain.control_characters import (
    BIDI_CONTROLS,
    BIDI_CONTROLS_NAMED,
    LINE_SEPARATORS,
    code_point,
    first_control_or_separator,
    is_blank,
)

MAX_DAEMON_ID: Final = 200

# The ids that read as a path's "this directory" and "parent directory": refused, whole.
DOT_SEGMENTS: Final = frozenset({".", ".."})

# What is allowed, in the words every refusal ends with.
DAEMON_ID_RULE: Final = (
    f"a daemon id is 1 to {MAX_DAEMON_ID} characters, not blank, not '.' or '..', "
    "with no NUL or other control character (newline, tab, ...), no line or paragraph separator "
    f"(U+2028, U+2029), no bidirectional control ({BIDI_CONTROLS_NAMED}) and no U+FFFD"
)


def daemon_id_problem(value: object) -> str | None:
    """What is wrong with `value` as a daemon id (a phrase to follow the field's name), or None.

    Control characters are refused because the id is a path segment and a queue name: a
    newline, say, cannot be routed to the feed, and a terminal escape in a log line misleads
    whoever reads it; the line and paragraph separators break a log line as a newline does
    (the host's rule, `first_control_or_separator`, refused them while this one took them);
    a bidirectional control (U+202E) shows the id in the daemon list as another id. They are
    looked for before blankness: an id of a newline or a tab alone is refused for the
    character it holds, not as blank (Python counts both as whitespace). U+FFFD is what
    undecodable bytes in a URL become, so two different byte strings would read one feed. A
    lone surrogate cannot be stored as UTF-8. "." and ".." are path segments, not names: a
    client or proxy normalizing `/api/v1/daemons/../commands` never reaches that daemon's feed,
    and a queue or log line ending in ".." reads as a parent directory.
    """
    if not isinstance(value, str):
        return "must be a string"
    bad = first_control_or_separator(value)
    if bad is not None:
        if bad in BIDI_CONTROLS:
            what = "bidirectional controls"
        elif bad in LINE_SEPARATORS:
            what = "line or paragraph separators"
        else:
            what = "NUL or control characters"
        return f"must not contain {what} (found {code_point(bad)}): {DAEMON_ID_RULE}"
    if is_blank(value):
        return "must not be blank (only spaces or zero-width characters)"
    if value in DOT_SEGMENTS:
        return (
            f"must not be '{value}': the id is a segment of the feed's path "
            "(/api/v1/daemons/{daemonId}/commands) and of queue names and log lines, where "
            f"'{value}' reads as {'this' if value == '.' else 'the parent'} directory, not a daemon: "
            f"{DAEMON_ID_RULE}"
        )
    if len(value) > MAX_DAEMON_ID:
        return f"is at most {MAX_DAEMON_ID} characters (this one has {len(value)})"
    if "\ufffd" in value:
        return f"must not contain U+FFFD (bytes that are not UTF-8, e.g. %FF in a URL): {DAEMON_ID_RULE}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"must be valid Unicode (no lone surrogates): {DAEMON_ID_RULE}"
    return None


def daemon_id_refusal(value: object, field: str = "daemonId") -> str | None:
    """The sentence refusing `value` as the daemon id in `field` (the field named, then the
    problem and the rule), or None when the id is good: one wording wherever a request is
    refused for its daemon id, so a daemon reads the same words from the feed and a question."""
    problem = daemon_id_problem(value)
    return None if problem is None else f"{field} {problem}."


__all__ = ["DAEMON_ID_RULE", "DOT_SEGMENTS", "MAX_DAEMON_ID", "daemon_id_problem", "daemon_id_refusal"]
