"""A WebSocket close reason always fits its frame (123 bytes of UTF-8) and reads as text."""

from __future__ import annotations

import pytest

from app.http.errors import WS_REASON_BYTES, websocket_close_reason

LONG = (
    "statuses: 'nope' is not a status; allowed: created, active, waiting_for_input, paused, "
    "blocked, completing, completed, failed, archived"
)


def test_a_reason_that_fits_is_sent_whole() -> None:
    assert websocket_close_reason("too slow: resume after 1234") == "too slow: resume after 1234"
    exact = "x" * WS_REASON_BYTES
    assert websocket_close_reason(exact) == exact


def test_a_longer_reason_is_cut_after_a_whole_word_with_an_ellipsis() -> None:
    reason = websocket_close_reason(LONG)
    assert len(reason.encode()) <= WS_REASON_BYTES
    assert reason.endswith("completed…")  # not "..., f" nor a trailing comma
    assert LONG.startswith(reason.removesuffix("…"))


@pytest.mark.parametrize(
    "text",
    [
        "é" * 100,  # 2 bytes each
        "€" * 100,  # 3 bytes each
        "😀" * 100,  # 4 bytes each
        "contractIds: 'ünïcødé-" + "😀é" * 60 + "' is not a UUID",
        "x" * 1000,  # one word: cut at a character
    ],
    ids=["2-byte", "3-byte", "4-byte", "mixed", "one-word"],
)
def test_a_cut_never_splits_a_utf8_character(text: str) -> None:
    reason = websocket_close_reason(text)
    data = reason.encode()  # would raise on a half character (a lone surrogate)
    assert len(data) <= WS_REASON_BYTES
    assert reason.endswith("…") and text.startswith(reason.removesuffix("…"))
    assert len(data) > WS_REASON_BYTES - 8, "cut much shorter than it had to be"


def test_a_lone_surrogate_which_utf8_cannot_carry_becomes_a_replacement_character() -> None:
    assert (
        websocket_close_reason("statuses: '\ud800' is not a status") == "statuses: '\ufffd' is not a status"
    )
