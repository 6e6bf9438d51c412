"""Each request's line and headers must arrive within the head deadline, over real uvicorn.

uvicorn alone held a connection that sent nothing, or trickled its headers, for ever. The API
runs with `app.http.head_deadline.HeadDeadlineProtocol` (`makima run` and the compose file pass
it with `--http`); here the deadline is shortened to one second and the app served by a real
uvicorn on a free port, spoken to over raw sockets.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from app.http import create_app
from app.http.head_deadline import HeadDeadlineProtocol
from app.service_runner import HTTP_PROTOCOL
from tests.integration.helpers import no_send
from tests.integration.live_server import serve

pytestmark = pytest.mark.integration

DEADLINE = 1.0


class OneSecondHeads(HeadDeadlineProtocol):
    head_deadline_seconds = DEADLINE


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serve(create_app(sender=no_send), http=OneSecondHeads) as base:
        yield int(base.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed it."""
    sock.settimeout(limit)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received, time.monotonic()
        received += chunk


def _read_response(sock: socket.socket) -> bytes:
    """One response whose body length is in its head (what /healthz answers)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(ln.split(b":", 1)[1]) for ln in lines if ln.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def test_a_connection_that_sends_nothing_is_answered_408_and_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        opened = time.monotonic()
        answer, closed = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    # The body every error has (as the body's own 408), naming the limit.
    error = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "INVALID_REQUEST" and "within 1 s" in error["message"]
    assert error["details"]["problems"][0]["type"] == "head_too_slow"
    assert error["details"]["limit"] == DEADLINE
    assert DEADLINE - 0.1 <= closed - opened < DEADLINE + 3


def test_headers_trickled_a_byte_at_a_time_are_cut_off_at_the_deadline(port: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with socket.create_connection(("127.0.0.1", port)) as sock:
        opened = time.monotonic()
        sent = 0
        try:
            # A byte every 0.1 s: each byte used to re-arm nothing and cancel nothing; the
            # head never completes, so the deadline counts from the connection's start.
            for byte in head:
                sock.sendall(bytes([byte]))
                sent += 1
                time.sleep(0.1)
                if time.monotonic() - opened > DEADLINE + 3:
                    break
        except OSError:
            pass  # the server closed the connection while we were still trickling
        answer, closed = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert sent < len(head), "the whole head was sent before the server gave up"
    assert closed - opened < DEADLINE + 3


def test_a_kept_alive_connection_gets_a_new_deadline_for_each_request(port: int) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # Three requests over 1.5 deadlines: each head is quick, so none is cut off.
        for _ in range(3):
            sock.sendall(request)
            head = _read_response(sock)
            assert head.startswith(b"HTTP/1.1 200"), head
            time.sleep(DEADLINE / 2)
        # Then a head that never completes: cut off one deadline after the last response.
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        answer, _ = _read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_slow_body_is_the_body_deadlines_business_not_the_heads(port: int) -> None:
    """Once the head is in, the head deadline is off: a body that takes longer than it (but not
    the body's own 30 s) is read and answered."""
    body = b'{"name": "slow but fine", "contractType": "simple"}'
    head = (
        f"POST /api/v1/contracts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        time.sleep(DEADLINE * 1.5)
        sock.sendall(body)
        answer = _read_response(sock)
    # No token: 401 from the app, which is the point (the app answered; uvicorn did not 408).
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


@pytest.mark.parametrize(
    "finish_body", [True, False], ids=["body finished, then silence", "body never finished"]
)
def test_a_connection_answered_before_its_body_is_cut_off_at_the_deadline_too(
    port: int, finish_body: bool
) -> None:
    """A stranger's POST is answered 401 before its body is read. uvicorn then starts the next
    cycle when the body ends, with no timer of its own, and any byte cancels its keep-alive
    timer: without a deadline here, such a connection stayed open for good."""
    head = (
        b"POST /api/v1/contracts HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        answered = _read_response(sock)
        assert answered.startswith(b"HTTP/1.1 401"), answered
        after_answer = time.monotonic()
        try:
            if finish_body:
                sock.sendall(b"0123456789")
            else:
                for _ in range(int(DEADLINE * 10) + 20):  # a byte of the body every 0.1 s, never all
                    sock.sendall(b"0")
                    time.sleep(0.1)
        except OSError:
            pass  # closed while we were still trickling
        _, closed = _read_until_closed(sock)
    assert closed - after_answer < DEADLINE + 3


def test_a_websocket_outlives_the_head_deadline(port: int, make_caller) -> None:
    """Once upgraded, the connection is the WebSocket's: the deadline does not close it."""
    from tests.integration.live_server import open_monitor

    token, _ = make_caller()
    ws = open_monitor(f"http://127.0.0.1:{port}", token)
    try:
        time.sleep(DEADLINE * 2)
        ws.ping().wait(timeout=5)  # still open and answering
    finally:
        ws.close()


def test_uvicorn_loads_the_protocol_from_the_command_line_string() -> None:
    """`--http app.http.head_deadline:HeadDeadlineProtocol`, as `makima run` and compose pass it,
    names a class uvicorn's command line accepts and loads."""
    code = (
        f"import uvicorn; c = uvicorn.Config('app.http:app', http={HTTP_PROTOCOL!r}); c.load(); "
        "print(c.http_protocol_class.__module__ + ':' + c.http_protocol_class.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip().splitlines()[-1] == HTTP_PROTOCOL
