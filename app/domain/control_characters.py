"""What no one-line text we show may hold: control characters, line separators, bidi controls.

A daemon's id, its host, a heartbeat's phase and current activity, a contract's name and a
task's name are shown as they were sent: in the daemon list, the dashboard, fence notices,
restart commands and logs. A control character there (category Cc: C0 such as NUL, newline,
tab and escape, DEL, C1 such as NEL) forges a line or repaints whoever's terminal reads it, and
the line and paragraph separators (U+2028, U+2029: categories Zl and Zp, not Cc) break a line
in logs and editors all the same. The bidirectional controls (the Bidi_Control characters:
U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069, category Cf) make text lie without
breaking it: "report", U+202E (right-to-left override), "fdp.exe" is shown as "reportexe.pdf",
and a name or a host can be made to read as another one. The text rules ask this one question
(`first_control_or_separator`), so none takes what another refuses, and word their refusals
with `kind_of`, `one_line_problem` and `ONE_LINE_RULE`. What "only blanks" means, for a name
and a question alike, is here too (`is_blank`).

Pure (stdlib only).
"""

from __future__ import annotations

import unicodedata
from typing import Final

# Not control characters (Zl, Zp), but a log or terminal breaks the line at them all the same.
LINE_SEPARATORS: Final = frozenset("\u2028\u2029")

# Unicode's Bidi_Control characters (format characters, Cf): each reorders how the text around
# it is displayed, so the text shown is not the text stored.
BIDI_CONTROLS: Final = frozenset(
    "\u061c"  # ARABIC LETTER MARK
    "\u200e\u200f"  # LEFT-TO-RIGHT MARK, RIGHT-TO-LEFT MARK
    "\u202a\u202b\u202c\u202d\u202e"  # LRE, RLE, PDF, LRO, RLO (embeddings and overrides)
    "\u2066\u2067\u2068\u2069"  # LRI, RLI, FSI, PDI (isolates)
)
# How a rule names them, in the words its refusals end with.
BIDI_CONTROLS_NAMED: Final = "U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069"

# What one line of text shown as sent may not hold, in the words a refusal ends with.
ONE_LINE_RULE: Final = (
    "no control character (NUL, newline, tab, escape, DEL, C1 controls such as U+0085), no line or "
    f"paragraph separator (U+2028, U+2029) and no bidirectional control ({BIDI_CONTROLS_NAMED})"
)


def first_control_or_separator(text: str) -> str | None:
    """The first control character, line/paragraph separator or bidirectional control in
    `text`, or None.

    A printable string holds none of them (Cc, Zl, Zp and Cf are not printable), so most text
    is answered by `str.isprintable` alone; what is not printable for another reason (another
    format character such as a zero-width joiner, an unassigned code point) is not this rule's
    business.
    """
    if text.isprintable():
        return None
    return next(
        (c for c in text if c in LINE_SEPARATORS or c in BIDI_CONTROLS or unicodedata.category(c) == "Cc"),
        None,
    )


# What "only blanks" means: whitespace and the invisible format characters (zero-width space
# U+200B, BOM U+FEFF, ...) that `str.strip` keeps but no reader sees.
_BLANK_CATEGORIES: Final = frozenset({"Zs", "Zl", "Zp", "Cf", "Cc"})
# The ASCII characters those are: the controls U+0000-U+001F and U+007F (category Cc, the
# whitespace among them included) and the space.
_ASCII_BLANKS: Final = "".join(map(chr, range(0x20))) + " \x7f"


def is_blank(value: str) -> bool:
    """Whether `value` has nothing a person can read: empty, or only whitespace and Unicode
    format characters (categories Zs, Zl, Zp, Cf like U+200B and U+FEFF, and Cc).

    One meaning for a question's text and a contract's or a task's name: a name of spaces, or
    of a zero-width space, is shown as nothing in the dashboard and the logs."""
    if value.isascii():  # the usual case, on every heartbeat's host and daemon id: no loop in Python
        return not value.strip(_ASCII_BLANKS)
    return all(c.isspace() or unicodedata.category(c) in _BLANK_CATEGORIES for c in value)


def kind_of(char: str) -> str:
    """What `char`, found by `first_control_or_separator`, is, as a refusal names it: a
    bidirectional control is not called a line break, nor a newline a bidi control."""
    if char in BIDI_CONTROLS:
        return "bidirectional control"
    if char in LINE_SEPARATORS:
        return "line or paragraph separator"
    if char == "\x00":
        return "NUL character"
    return "control character"


def code_point(char: str) -> str:
    """How a refusal names a character: U+000A, U+2028."""
    return f"U+{ord(char):04X}"


def one_line_problem(text: str) -> str | None:
    """What keeps `text` from being shown as sent on one line, as a phrase to follow a field's
    name (`must not contain a bidirectional control (found U+202E)`), or None."""
    bad = first_control_or_separator(text)
    if bad is None:
        return None
    return f"must not contain a {kind_of(bad)} (found {code_point(bad)})"


__all__ = [
    "BIDI_CONTROLS",
    "BIDI_CONTROLS_NAMED",
    "LINE_SEPARATORS",
    "ONE_LINE_RULE",
    "code_point",
    "first_control_or_separator",
    "is_blank",
    "kind_of",
    "one_line_problem",
]
