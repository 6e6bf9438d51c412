"""Control characters and line separators: what no one-line text we show may hold.

A daemon's id, its host, a heartbeat's phase and current activity are shown as they were sent:
in the daemon list, the dashboard, fence notices, restart commands and logs. A control
character there (category Cc: C0 such as NUL, newline, tab and escape, DEL, C1 such as NEL)
forges a line or repaints whoever's terminal reads it, and the line and paragraph separators
(U+2028, U+2029: categories Zl and Zp, not Cc) break a line in logs and editors all the same.
The text rules ask this one question, so none takes what another refuses.

Pure (stdlib only).
"""

from __future__ import annotations

import unicodedata
from typing import Final

# Not control characters (Zl, Zp), but a log or terminal breaks the line at them all the same.
LINE_SEPARATORS: Final = frozenset("\u2028\u2029")


def first_control_or_separator(text: str) -> str | None:
    """The first control character or line/paragraph separator in `text`, or None.

    A printable string holds neither (Cc, Zl and Zp are not printable), so most text is
    answered by `str.isprintable` alone; what is not printable for another reason (a format
    character, an unassigned code point) is not this rule's business.
    """
    if text.isprintable():
        return None
    return next((c for c in text if c in LINE_SEPARATORS or unicodedata.category(c) == "Cc"), None)


def code_point(char: str) -> str:
    """How a refusal names a character: U+000A, U+2028."""
    return f"U+{ord(char):04X}"


__all__ = ["LINE_SEPARATORS", "code_point", "first_control_or_separator"]
