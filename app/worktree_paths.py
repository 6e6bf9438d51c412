"""A worktree's path as a daemon reports it: the one rule that makes it mean one place.

Its own module because the rule is a concept of its own (what a path may hold and how it is
spelled), read and changed apart from the worktrees' records and their cleanup
(`app.worktrees`), which checks every report by it.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from app.domain.errors import ValidationFailed

MAX_PATH: Final = 4096

# An absolute path: POSIX (`/srv/repo`) or a Windows drive (`C:\\repo`, `C:/repo`).
_ABSOLUTE: Final = re.compile(r"/|[A-Za-z]:[\\/]")
_SEGMENTS: Final = re.compile(r"[\\/]")


def check_worktree_path(path: object, field: str = "path", *, one_spelling: bool = True) -> str:
    """A worktree path as reported, or `ValidationFailed` naming what is wrong.

    The path goes back to a daemon as it is, in `remove_worktree`, so it must mean one place
    on its own: absolute (POSIX `/...` or a Windows drive `C:\\...`), with no `..` or `.`
    segment, no doubled or trailing separator (two spellings of one place would be two worktrees),
    no NUL or other control character (newlines and tabs included), not blank, at most
    `MAX_PATH` characters. Nothing is normalised silently: a path that would need it is refused.

    `one_spelling=False` (a removal report) skips the spelling rules (`.`, doubled or trailing
    separators, a root): a worktree recorded before they existed must still be reported removed
    under the path it was recorded with, and a removal creates nothing a daemon is sent.
    """
    limits = {"field": field, "limit": MAX_PATH}
    if not isinstance(path, str) or not path.strip():
        raise ValidationFailed(
            f"{field} must not be blank: give the worktree's absolute path.", details=limits
        )
    if len(path) > MAX_PATH:
        raise ValidationFailed(
            f"{field} is at most {MAX_PATH} characters (this one has {len(path)}).", details=limits
        )
    control = next((c for c in path if unicodedata.category(c) in ("Cc", "Cs")), None)
    if control is not None:
        raise ValidationFailed(
            f"{field} must not contain NUL or control characters (found U+{ord(control):04X}).",
            details=limits,
        )
    if not _ABSOLUTE.match(path):
        raise ValidationFailed(
            f"{field} must be an absolute path (/... or a drive such as C:\\...), not {path[:80]!r}.",
            details=limits,
        )
    segments = _SEGMENTS.split(path)
    if ".." in segments:
        raise ValidationFailed(
            f"{field} must not contain '..' segments: give the worktree's own absolute path.", details=limits
        )
    if not one_spelling:
        return path
    # Characters that show as nothing or as something else (bidi controls such as U+202E,
    # zero-width ones, line separators, U+FFFD from bytes that were not UTF-8): two paths that
    # read the same would be two worktrees, and a person would read another path than the one
    # a daemon is told to remove.
    hidden = next((c for c in path if c == "\ufffd" or unicodedata.category(c) in ("Cf", "Zl", "Zp")), None)
    if hidden is not None:
        raise ValidationFailed(
            f"{field} must not contain invisible, bidirectional or replacement characters "
            f"(found U+{ord(hidden):04X}): a path is shown as sent and must read as what it is.",
            details=limits,
        )
    if "." in segments:
        raise ValidationFailed(
            f"{field} must not contain '.' segments: give the worktree's path as written plainly "
            f"(/srv/wt, not /srv/./wt).",
            details=limits,
        )
    # Segment 0 is the root's empty name (POSIX) or the drive (`C:`); the root alone is one place.
    inner = segments[1:]
    if inner == [""]:
        # A daemon is told to remove this path once the contract is done: never a whole disk.
        raise ValidationFailed(
            f"{field} must name a directory below the root, not the root {path!r} itself.", details=limits
        )
    if "" in inner:
        where = "end with a separator" if inner[-1] == "" and "" not in inner[:-1] else "repeat a separator"
        raise ValidationFailed(
            f"{field} must not {where}: give the worktree's path as written plainly "
            f"(/srv/wt, not /srv//wt or /srv/wt/), so one place has one spelling.",
            details=limits,
        )
    return path


__all__ = ["MAX_PATH", "check_worktree_path"]
