"""Message ids: the one rule for what may name a report, when it is sent and when it is asked about.

A daemon gives each report a `messageId` (or is given one) and later asks what became of it by
URL (`GET /api/v1/messages/{messageId}`, `.../resend`), so an id is only what a URL path segment
carries as is: letters, digits and `. _ : @ -`, like a UUID. The report endpoints and the API
module's reports refuse any other id (`_enqueue`); the lookup and the resend are held to the
same rule, so an id no report could carry is refused naming the rule instead of answered
`unknown`, which told a sender to report afresh a message it could never have sent.

Pure (stdlib only): `message_id_problem` says what is wrong, `check_message_id` raises the
`ValidationFailed` every front answers with.
"""

from __future__ import annotations

import re
from typing import Final

from app.domain.control_characters import code_point
from app.domain.errors import ValidationFailed

MAX_MESSAGE_ID: Final = 200
MESSAGE_ID: Final = re.compile(rf"[A-Za-z0-9._:@-]{{1,{MAX_MESSAGE_ID}}}")
_ALLOWED: Final = re.compile(r"[A-Za-z0-9._:@-]")

# What a message id may be, in the words every refusal ends with.
MESSAGE_ID_RULE: Final = (
    f"a messageId is 1 to {MAX_MESSAGE_ID} characters of A-Z, a-z, 0-9 and . _ : @ - "
    "(so it can be asked for by URL later), like a UUID"
)


def message_id_problem(value: object) -> str | None:
    """What is wrong with `value` as a message id (a phrase to follow the field's name), or None.

    The first character outside the rule is named by its code point (a space is U+0020), so a
    sender sees which one to drop without the id echoed back with it.
    """
    if not isinstance(value, str):
        return f"must be a string: {MESSAGE_ID_RULE}"
    if not 1 <= len(value) <= MAX_MESSAGE_ID:
        return f"has {len(value)} characters: {MESSAGE_ID_RULE}"
    bad = next((c for c in value if _ALLOWED.fullmatch(c) is None), None)
    if bad is not None:
        return f"must not contain {code_point(bad)}: {MESSAGE_ID_RULE}"
    return None


def check_message_id(value: object, field: str = "messageId") -> str:
    """`value` when it is a message id, else `ValidationFailed` naming `field`, the problem and
    the rule (details: the field, its length and the limit, the pattern)."""
    problem = message_id_problem(value)
    if problem is None:
        return str(value)
    length = len(value) if isinstance(value, str) else None
    raise ValidationFailed(
        f"{field} {problem}.",
        details={"field": field, "length": length, "limit": MAX_MESSAGE_ID, "pattern": MESSAGE_ID.pattern},
    )


__all__ = ["MAX_MESSAGE_ID", "MESSAGE_ID", "MESSAGE_ID_RULE", "check_message_id", "message_id_problem"]
