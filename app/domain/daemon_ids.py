"""Daemon ids: the one rule for what may name a daemon, wherever an id is taken.

A daemon chooses its own id, and from then on the id names its command feed
(`GET /api/v1/daemons/{daemonId}/commands`), its broker queue, and the supervisors whose
heartbeats it sent. Heartbeats, state saves, restorations, worktree reports and the feed all
judge an id by `daemon_id_problem`, so an id taken in one place is never refused in another:
a heartbeat that stored an id holding a newline, which the feed then refused, left that daemon
listed with commands it could never read.

Pure (stdlib only): callers raise their own error (`InvalidHeartbeat`, `ValidationFailed`)
with the field named and the problem given here.
"""

from __future__ import annotations

import unicodedata
from typing import Final

MAX_DAEMON_ID: Final = 200

# What is allowed, in the words every refusal ends with.
DAEMON_ID_RULE: Final = (
    f"a daemon id is 1 to {MAX_DAEMON_ID} characters, not blank, "
    "with no NUL or other control character (newline, tab, ...) and no U+FFFD"
)


def daemon_id_problem(value: object) -> str | None:
    """What is wrong with `value` as a daemon id (a phrase to follow the field's name), or None.

    Control characters are refused because the id is a path segment and a queue name: a
    newline, say, cannot be routed to the feed, and a terminal escape in a log line misleads
    whoever reads it. U+FFFD is what undecodable bytes in a URL become, so two different byte
    strings would read one feed. A lone surrogate cannot be stored as UTF-8.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be blank"
    if len(value) > MAX_DAEMON_ID:
        return f"is at most {MAX_DAEMON_ID} characters (this one has {len(value)})"
    control = next((c for c in value if unicodedata.category(c) == "Cc"), None)
    if control is not None:
        return f"must not contain NUL or control characters (found U+{ord(control):04X}): {DAEMON_ID_RULE}"
    if "\ufffd" in value:
        return f"must not contain U+FFFD (bytes that are not UTF-8, e.g. %FF in a URL): {DAEMON_ID_RULE}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"must be valid Unicode (no lone surrogates): {DAEMON_ID_RULE}"
    return None


__all__ = ["DAEMON_ID_RULE", "MAX_DAEMON_ID", "daemon_id_problem"]
