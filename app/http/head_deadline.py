"""uvicorn's h11 protocol with a deadline for each request's head (request line and headers).

uvicorn has no such deadline. A connection that opens and sends nothing, or sends its headers a
byte every few seconds, is held for ever: its keep-alive timer starts only after a first
response, and any byte received cancels it. A few thousand such connections (a slow-loris
attack, or a broken client) hold as many sockets and buffers in the one API process. Here every
request's head must be complete within `HEAD_DEADLINE_SECONDS` of the connection opening, or of
the previous response on a kept-alive connection (and a body the app answered without reading,
a 401 or a 413 before the body, must be finished by then too); past it the connection gets `408 Request
Timeout` (`INVALID_REQUEST`, problem type `head_too_slow`, the body every error has) and is
closed. The body has its own deadline (`app.http.limits`, 30 s), judged once the head is in; a
WebSocket, once upgraded, is no longer this protocol's.

Run as `uvicorn app.http:app --http app.http.head_deadline:HeadDeadlineProtocol` (`makima run`,
the compose file and the Dockerfile do).
"""

from __future__ import annotations

import asyncio
import json
from typing import Final

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_DEADLINE_SECONDS: Final = 10.0


def _problem(problem: str, seconds: float) -> dict[str, object]:
    return {"field": "head", "in": "head", "type": "head_too_slow", "problem": problem, "limit": seconds}


def timed_out_response(seconds: float) -> bytes:
    """The 408 a connection gets when its request's head missed the deadline, as raw bytes, in
    the body every error has (`{"error": {code, message, details}}`, as the body's own 408)."""
    problem = f"did not arrive within {seconds:g} s"
    body = json.dumps(
        {
            "error": {
                "code": "INVALID_REQUEST",
                "message": f"The request line and headers {problem}. Send the whole request at once.",
                "details": {"problems": [_problem(problem, seconds)], "limit": seconds},
            }
        },
        separators=(",", ":"),
    ).encode()
    return (
        b"HTTP/1.1 408 Request Timeout\r\n"
        b"content-type: application/json\r\n"
        b"connection: close\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


class HeadDeadlineProtocol(H11Protocol):
    """H11Protocol whose connections must send each request's head within the deadline."""

    head_deadline_seconds: float = HEAD_DEADLINE_SECONDS
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._judge()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._judge()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._judge()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _waiting_on_client(self) -> bool:
        """No request is being answered, so the connection is the client's to use: a new
        request's head is due, or the rest of a body the app answered without reading (a 401
        before the body, a 413, a 408), whose end starts the next cycle in uvicorn with no
        timer of its own. An upgraded connection (a WebSocket) is no longer this protocol's."""
        answering = self.cycle is not None and not self.cycle.response_complete
        upgraded = self.transport.get_protocol() is not self
        return not (answering or upgraded or self.transport.is_closing())

    def _judge(self) -> None:
        """Armed while the client owes us something; never re-armed by a byte that arrives
        (a trickle must finish within the one deadline), disarmed once a request is answered."""
        if not self._waiting_on_client():
            self._disarm()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_deadline_seconds, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._waiting_on_client():
            return
        if self.conn.their_state is h11.IDLE:
            # Written raw: h11 has no request to answer yet (the head never arrived whole).
            self.transport.write(timed_out_response(self.head_deadline_seconds))
        # Otherwise the request was answered already and its body never finished: just close.
        self.transport.close()


__all__ = ["HEAD_DEADLINE_SECONDS", "HeadDeadlineProtocol", "timed_out_response"]
