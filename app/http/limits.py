"""Bounds on every request body, checked before any handler (or the JSON parser) sees it.

Why here, as ASGI middleware, and not in each body model: the cost of a request is paid
while it is read and parsed, before a pydantic model can refuse it. A 200,000-deliverable
body held an API thread for 45 s; a value nested 300 levels deep was stored and then could
not be answered; a lone surrogate (`"\\ud800"`) made the error handler itself fail. So:

- a body is at most MAX_BODY_BYTES (1 MiB): judged from Content-Length before reading, and
  counted while it streams in (chunked bodies have no Content-Length) → 413;
- a JSON body nests at most MAX_JSON_DEPTH (32) levels, contains no NaN/Infinity literal, no
  number a double cannot hold (1e309), no integer longer than Python reads (4300 digits), and
  no lone UTF-16 surrogate in a string or key → 400 INVALID_REQUEST naming the limit and, where
  there is one, the field.

Malformed JSON is left to FastAPI's own 400 (it reports the position). Under `/api/v1` an
unauthenticated caller gets its 401 first, as for every other complaint about a request.
The checks are linear in the body's size, and run off the event loop for large bodies.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from fastapi import status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.errors import API_PREFIX, error_response, unauthenticated_first
from app.schemas import ErrorCode

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_JSON_DEPTH: Final = 32
_OFF_LOOP_BYTES: Final = 64 * 1024  # parse bodies larger than this in a worker thread
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
# A `\uD800`-`\uDFFF` escape somewhere in the raw body: only then can a parsed string hold a
# lone surrogate (raw UTF-8 cannot encode one), so only then are strings searched.
_SURROGATE_ESCAPE: Final = re.compile(rb"\\u[dD][89a-fA-F]")


class BodyRejected(Exception):
    """A body over one of the limits: the status, a message naming the limit, one problem."""

    def __init__(self, status_code: int, message: str, problem: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.problem = dict(problem)


class _NotANumber(ValueError):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _refuse_constant(literal: str) -> Any:
    raise _NotANumber(literal)


def _bad(kind: str, problem: str, field: str = "body", **extra: Any) -> BodyRejected:
    where = f" at {field}" if field != "body" else ""
    return BodyRejected(
        status.HTTP_400_BAD_REQUEST,
        f"The request body is not acceptable{where}: {problem}.",
        {"field": field, "in": "body", "type": kind, "problem": problem, **extra},
    )


def too_large(limit: int = MAX_BODY_BYTES) -> BodyRejected:
    problem = f"is larger than {limit // (1024 * 1024)} MiB ({limit} bytes), the limit for any request"
    return BodyRejected(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"The request body {problem}. Send less: split the work over several requests.",
        {"field": "body", "in": "body", "type": "body_too_large", "problem": problem, "limit": limit},
    )


def _path(entry: tuple[Any, ...] | None) -> str:
    """The field path of a walk entry (`phaseConfig.phases[0].name`), following parent links."""
    parts: list[str] = []
    while entry is not None and entry[3] is not None:
        key = entry[3]
        parts.append(f"[{key}]" if isinstance(key, int) else f".{_printable(key)}")
        entry = entry[2]
    return "".join(reversed(parts)).lstrip(".") or "body"


def _printable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text[:100])


def check_json(value: Any, *, may_hold_surrogates: bool = True, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise BodyRejected if a parsed JSON value is nested too deep or holds what JSON cannot.

    Iterative (an explicit stack), so a deep value cannot exhaust Python's recursion, and
    linear: each node is visited once. `may_hold_surrogates=False` skips the string search
    when the raw text shows no surrogate escape.
    """
    # Entries: (value, depth of the container holding it, parent entry, key in the parent).
    stack: list[tuple[Any, int, Any, Any]] = [(value, 0, None, None)]
    while stack:
        entry = stack.pop()
        node, depth = entry[0], entry[1]
        if isinstance(node, dict):
            if depth >= max_depth:
                raise _too_deep(entry, max_depth)
            for key, item in node.items():
                if may_hold_surrogates and _SURROGATE.search(key):
                    raise _surrogate(_path((key, depth + 1, entry, key)))
                stack.append((item, depth + 1, entry, key))
        elif isinstance(node, list):
            if depth >= max_depth:
                raise _too_deep(entry, max_depth)
            stack.extend((item, depth + 1, entry, index) for index, item in enumerate(node))
        elif isinstance(node, str):
            if may_hold_surrogates and _SURROGATE.search(node):
                raise _surrogate(_path(entry))
        elif isinstance(node, float) and not math.isfinite(node):
            raise _bad(
                "number_too_large",
                "a number is too large for a 64-bit float (it would be Infinity); send a finite number",
                _path(entry),
            )


def _too_deep(entry: tuple[Any, ...], max_depth: int) -> BodyRejected:
    return _bad(
        "json_too_deep",
        f"JSON may nest at most {max_depth} levels of objects and arrays",
        _path(entry),
        limit=max_depth,
    )


def _surrogate(field: str) -> BodyRejected:
    return _bad(
        "unicode_invalid",
        "a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which "
        "is not a character; send the full surrogate pair or the character's UTF-8 bytes",
        field,
    )


def check_json_body(body: bytes) -> None:
    """Parse a JSON body only to judge it; FastAPI parses it again for the handler.

    Malformed JSON passes through untouched: FastAPI's own 400 names the position.
    """
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except _NotANumber as exc:
        raise _bad(
            "number_invalid",
            f"{exc.literal} is not a JSON number (JSON has no NaN or Infinity); send a finite number or null",
        ) from None
    except RecursionError:
        raise _bad(
            "json_too_deep",
            f"JSON may nest at most {MAX_JSON_DEPTH} levels of objects and arrays",
            limit=MAX_JSON_DEPTH,
        ) from None
    except json.JSONDecodeError:
        return
    except UnicodeDecodeError:
        raise _bad("unicode_invalid", "the body is not UTF-8 text") from None
    except ValueError:  # Python refuses integers longer than 4300 digits
        raise _bad("number_too_large", "a number has too many digits; send at most 4300 digits") from None
    check_json(value, may_hold_surrogates=_SURROGATE_ESCAPE.search(body) is not None)


def _is_json(content_type: str | None) -> bool:
    """The bodies FastAPI decodes as JSON: no Content-Type, application/json, application/*+json."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BodyLimits:
    """ASGI middleware: read the body up to the cap, judge it, then replay it to the app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        try:
            if declared > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            body = await self._read(receive)
            content_type = headers.get(b"content-type")
            if body and _is_json(content_type.decode("latin-1") if content_type else None):
                if len(body) > _OFF_LOOP_BYTES:
                    await run_in_threadpool(check_json_body, body)
                else:
                    check_json_body(body)
        except BodyRejected as exc:
            await self._refuse(scope, exc, send)
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to judge
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, exc: BodyRejected, send: Send) -> None:
        request = Request(scope)
        response = await unauthenticated_first(request) if request.url.path.startswith(API_PREFIX) else None
        if response is None:
            details: dict[str, Any] = {"problems": [exc.problem]}
            if "limit" in exc.problem:
                details["limit"] = exc.problem["limit"]
            response = error_response(exc.status_code, ErrorCode.INVALID_REQUEST, exc.message, details)

        async def nothing_more() -> Message:
            return {"type": "http.disconnect"}

        await response(scope, nothing_more, send)


__all__ = [
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "BodyLimits",
    "BodyRejected",
    "check_json",
    "check_json_body",
    "too_large",
]
