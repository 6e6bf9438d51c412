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

A body sent with a Content-Encoding other than identity (gzip, br, ...) is refused, not read
as JSON: 415 naming the header (`encoded`), since a compressed body's size says nothing of what
it would grow to. Malformed JSON is refused here too, with its position (400 `json_invalid`).
Under `/api/v1` an unauthenticated caller gets its 401 first, as for every other complaint
about a request; before even that, a request with two Authorization headers is 400 (whose
token is it?), and one with two Idempotency-Key headers is 400 after it
(`app.http.single_headers`).
The checks are linear in the body's size, and run off the event loop for large bodies.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

from fastapi import status
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.error_handlers import unauthenticated_first
from app.http.errors import AUTHENTICATED_PREFIX, error_response
from app.http.single_headers import AUTHORIZATION, repeated_header
from app.schemas import ErrorCode

MAX_BODY_BYTES: Final = 1024 * 1024
MAX_JSON_DEPTH: Final = 32
# The whole body must arrive within this long: one trickled a byte at a time held its
# connection and buffer as long as the sender liked.
BODY_READ_SECONDS: Final = 30
_OFF_LOOP_BYTES: Final = 64 * 1024  # parse bodies larger than this in a worker thread
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_CONTAINERS: Final = (dict, list)
# A `\uD800`-`\uDFFF` escape somewhere in the raw body: only then can a parsed string hold a
# lone surrogate (raw UTF-8 cannot encode one), so only then are strings searched.
_SURROGATE_TEXT_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


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


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose key repeats is refused: which of the two values was meant is a guess."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def _finite_float(text: str) -> float:
    """A JSON number with a fraction or exponent; one a double cannot hold is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise _NotANumber(text)
    return value


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


def encoded(content_encoding: str) -> BodyRejected:
    """A body sent compressed (`Content-Encoding: gzip`, `br`, ...): 415, naming the header.

    Bodies are judged and parsed as the bytes that arrive; decompressing them would let a
    small request grow past the 1 MiB bound after it was checked, so none is taken. Without
    this refusal a gzip body was read as JSON and refused as "not UTF-8 text", which names no
    real problem of the request."""
    given = content_encoding.strip()[:100]
    problem = (
        f"'{given}' is not accepted; request bodies take no content encoding: send the JSON "
        "uncompressed, without the header (or with Content-Encoding: identity)"
    )
    return BodyRejected(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        f"Content-Encoding: {problem}.",
        {
            "field": "Content-Encoding",
            "in": "header",
            "type": "content_encoding",
            "problem": problem,
            "given": given,
            "allowed": ["identity"],
        },
    )


def too_slow() -> BodyRejected:
    rate = MAX_BODY_BYTES // BODY_READ_SECONDS
    problem = f"did not arrive within {BODY_READ_SECONDS} s (the largest body needs {rate} bytes a second)"
    return BodyRejected(
        status.HTTP_408_REQUEST_TIMEOUT,
        f"The request body {problem}. Send the whole body at once.",
        {
            "field": "body",
            "in": "body",
            "type": "body_too_slow",
            "problem": problem,
            "limit": BODY_READ_SECONDS,
        },
    )


def _printable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text[:100])


def _joined(path: list[Any]) -> str:
    """A field path as problems spell it: `phaseConfig.phases[0].name`."""
    text = "".join(f"[{k}]" if isinstance(k, int) else f".{_printable(k)}" for k in path)
    return text.lstrip(".") or "body"


def _offending(value: Any, max_depth: int) -> tuple[str, str]:
    """Where the first problem is: (kind, field path). Only run once a problem is known to exist.

    Depth-first with an explicit stack, carrying each node's path; slower than the check
    itself, which is why the check does not track paths.
    """
    stack: list[tuple[Any, int, list[Any]]] = [(value, 0, [])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return "surrogate", _joined(path)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth >= max_depth:
            return "deep", _joined(path)
        for key, item in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str) and _SURROGATE.search(key):
                return "surrogate", _joined([*path, key])
            stack.append((item, depth + 1, [*path, key]))
    return "deep", "body"


def check_json(value: Any, *, may_hold_surrogates: bool = True, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise BodyRejected if a parsed JSON value is nested too deep or holds a lone surrogate.

    Level by level, with no recursion (a deep value cannot exhaust Python's stack) and linear:
    each container is visited once and its scalars are only looked at when the raw text shows
    a surrogate escape (`may_hold_surrogates`). Numbers are judged while parsing. The field
    named in the error is found afterwards, by `_offending`.
    """
    problem = ""
    level = [value] if isinstance(value, dict | list) else []
    if may_hold_surrogates and isinstance(value, str) and _SURROGATE.search(value):
        problem = "surrogate"
    depth = 0
    while level and not problem:
        if depth >= max_depth:
            problem = "deep"
            break
        depth += 1
        below: list[Any] = []
        for node in level:
            children = node.values() if type(node) is dict else node
            if may_hold_surrogates:
                keys = node.keys() if type(node) is dict else ()
                if any(_SURROGATE.search(t) for t in (*keys, *children) if type(t) is str):
                    problem = "surrogate"
                    break
            below.extend([c for c in children if type(c) in _CONTAINERS])
        level = below
    if problem:
        kind, field = _offending(value, max_depth)
        raise _surrogate(field) if kind == "surrogate" else _too_deep(field, max_depth)


def _too_deep(field: str, max_depth: int) -> BodyRejected:
    return _bad(
        "json_too_deep",
        f"JSON may nest at most {max_depth} levels of objects and arrays",
        field,
        limit=max_depth,
    )


def _surrogate(field: str) -> BodyRejected:
    return _bad(
        "unicode_invalid",
        "a string holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), which "
        "is not a character; send the full surrogate pair or the character's UTF-8 bytes",
        field,
    )


# The scope key under which `BodyLimits` leaves the value it parsed, for `app.http.routing`
# to hand to FastAPI: a heartbeat list of 100 cost uvicorn 3.5 µs per heartbeat to judge and
# 1.7 more when FastAPI parsed the same bytes again.
PARSED_JSON: Final = "makima.parsed_json"


def check_json_body(body: bytes) -> Any:
    """Parse a JSON body and judge it; returns the value, or BodyRejected saying what is wrong.

    Text that is not JSON is refused here too, naming the position, and never handed on: FastAPI
    would parse the bytes again its own way, reading UTF-16 and UTF-32 that this strict UTF-8
    parse cannot, and so take a body none of the rules below had judged.

    The body is decoded as strict UTF-8 first (a leading byte-order mark allowed): `json.loads`
    given bytes decodes them with `surrogatepass`, so the UTF-8-looking bytes of a lone
    surrogate (ED A0 80) would become a lone surrogate in a string that no check here sees as
    an escape, and every later write or read of that text would fail.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _bad(
            "unicode_invalid",
            f"the body is not UTF-8 text (bytes {body[exc.start : exc.start + 4].hex(' ')} at offset "
            f"{exc.start} are not UTF-8; a lone UTF-16 surrogate half encoded as bytes is not a "
            "character either); send JSON encoded as UTF-8",
        ) from None
    try:
        return load_json(text)
    except json.JSONDecodeError as exc:
        raise BodyRejected(
            status.HTTP_400_BAD_REQUEST,
            f"The request body is not valid JSON: {exc.msg} (at character {exc.pos}). Send JSON "
            "encoded as UTF-8.",
            {"field": "body", "in": "body", "type": "json_invalid", "problem": exc.msg, "position": exc.pos},
        ) from None


def load_json(text: str) -> Any:
    """Parse JSON text and judge it as a request body is judged (numbers, duplicate keys, depth,
    lone surrogates): BodyRejected naming the problem, or json.JSONDecodeError for text that is
    not JSON. For JSON that arrives outside an HTTP body too (the monitor's WebSocket messages),
    so every door holds it to the same rules.
    """
    try:
        value = json.loads(
            text, parse_constant=_refuse_constant, parse_float=_finite_float, object_pairs_hook=_unique_keys
        )
    except _DuplicateKey as exc:
        raise _bad(
            "json_duplicate_key",
            f"the key {exc.key[:100]!r} appears twice in one object; send each key once",
        ) from None
    except _NotANumber as exc:
        if exc.literal in ("NaN", "Infinity", "-Infinity"):
            raise _bad(
                "number_invalid",
                f"{exc.literal} is not a JSON number (JSON has no NaN or Infinity); "
                "send a finite number or null",
            ) from None
        raise _bad(
            "number_too_large",
            f"the number {exc.literal[:40]} is too large for a 64-bit float (it would be Infinity); "
            "send a finite number",
        ) from None
    except RecursionError:
        raise _bad(
            "json_too_deep",
            f"JSON may nest at most {MAX_JSON_DEPTH} levels of objects and arrays",
            limit=MAX_JSON_DEPTH,
        ) from None
    except json.JSONDecodeError:
        raise
    except ValueError:  # Python refuses integers longer than 4300 digits
        raise _bad("number_too_large", "a number has too many digits; send at most 4300 digits") from None
    check_json(value, may_hold_surrogates=_SURROGATE_TEXT_ESCAPE.search(text) is not None)
    return value


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
        request = Request(scope)
        # Two tokens: the caller is a guess, so neither the 401-first rule nor a handler may pick one.
        repeated = repeated_header(request.headers, (AUTHORIZATION,))
        if repeated is None and scope["path"].startswith(AUTHENTICATED_PREFIX):
            # Before a byte of the body is read: a caller without a valid token costs us no
            # buffer (a thousand strangers' megabyte bodies were a gigabyte held).
            denied = await unauthenticated_first(request)
            if denied is not None:
                await denied(scope, receive, send)
                return
        repeated = repeated or repeated_header(request.headers)
        if repeated is not None:
            await repeated.response()(scope, _nothing_more, send)
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
            if body is None:
                # The client went away before its body was whole: nothing is applied (it saw
                # the request fail, so applying part of it would make its retry a duplicate),
                # and there is no one to answer.
                return
            encoding = headers.get(b"content-encoding", b"").decode("latin-1")
            if body and encoding.strip().lower() not in ("", "identity"):
                raise encoded(encoding)
            content_type = headers.get(b"content-type")
            if body and _is_json(content_type.decode("latin-1") if content_type else None):
                if len(body) > _OFF_LOOP_BYTES:
                    parsed = await run_in_threadpool(check_json_body, body)
                else:
                    parsed = check_json_body(body)
                scope[PARSED_JSON] = parsed
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

    async def _read(self, receive: Receive) -> bytes | None:
        """The whole body, or None when the client disconnected before its end."""
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + BODY_READ_SECONDS
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                raise too_slow() from None
            if message["type"] != "http.request":  # the client went away: nothing to judge
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large(self.max_body_bytes)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, exc: BodyRejected, send: Send) -> None:
        # A caller without a valid token was answered 401 before its body was read (`__call__`).
        details: dict[str, Any] = {"problems": [exc.problem]}
        if "limit" in exc.problem:
            details["limit"] = exc.problem["limit"]
        response = error_response(exc.status_code, ErrorCode.INVALID_REQUEST, exc.message, details)
        await response(scope, _nothing_more, send)


async def _nothing_more() -> Message:
    """The receive a refusal is answered with: its body is never read."""
    return {"type": "http.disconnect"}


__all__ = [
    "BODY_READ_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "PARSED_JSON",
    "BodyLimits",
    "BodyRejected",
    "check_json",
    "check_json_body",
    "encoded",
    "load_json",
    "too_large",
]
