"""A request whose client went away before its body was whole is not applied (`BodyLimits`).

The client saw its request fail, so applying the part that arrived (a chunked body without its
last chunk, or fewer bytes than its Content-Length) made its retry a duplicate.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.http.limits import BodyLimits


def run(messages: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """(what the app behind the limits was given, what was sent back) for these arrivals."""
    called: list[Any] = []
    sent: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        called.append(await receive())

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/healthz",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
    }
    asyncio.run(BodyLimits(app)(scope, receive, send))
    return called, sent


def test_a_body_cut_short_by_a_disconnect_reaches_nothing_and_nobody_is_answered() -> None:
    called, sent = run(
        [
            {"type": "http.request", "body": b'{"name": "half', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    assert called == [] and sent == []


def test_a_whole_body_still_reaches_the_app() -> None:
    called, _ = run(
        [
            {"type": "http.request", "body": b'{"name": ', "more_body": True},
            {"type": "http.request", "body": b'"whole"}', "more_body": False},
        ]
    )
    assert called == [{"type": "http.request", "body": b'{"name": "whole"}', "more_body": False}]
