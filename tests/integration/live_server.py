"""A real uvicorn server in a thread, and WebSocket helpers, for the live monitor's tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(app: Any, **config: Any) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields the base URL (http://127.0.0.1:<port>).
    `config`: more `uvicorn.Config` options (the HTTP protocol class, ...)."""
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "ws": "websockets-sansio", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def open_monitor(
    base: str, token: str, *, header: bool = True, sock: socket.socket | None = None, **flt: Any
) -> ClientConnection:
    """Connect, authenticate (header or first message), send the filter, read the ack."""
    url = base.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    headers = {"Authorization": f"Bearer {token}"} if header else None
    ws = connect(
        url, additional_headers=headers, sock=sock, max_queue=4 if sock is not None else 16
    ).__enter__()
    if not header:
        ws.send(json.dumps({"type": "auth", "token": token}))
    ws.send(json.dumps(flt))
    ack = json.loads(ws.recv(timeout=10))
    assert ack["type"] == "subscribed", ack
    return ws


def drain(ws: ClientConnection, idle: float = 1.5, limit: float = 60) -> list[dict[str, Any]]:
    """Every message until none arrives for `idle` seconds."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            out.append(json.loads(ws.recv(timeout=idle)))
        except TimeoutError:
            return out
        except ConnectionClosed:
            return out
    return out


def receive_until(ws: ClientConnection, want: int, timeout: float = 30) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"got {len(out)} of {want} messages")
        out.append(json.loads(ws.recv(timeout=remaining)))
    return out


class RawClient:
    """A WebSocket client on a bare socket that reads only when told: a truly slow client.

    (The websockets library reads ahead into memory on a thread of its own.)
    """

    def __init__(self, base: str, token: str, rcvbuf: int = 4096) -> None:
        import base64
        import os

        host, port = base.removeprefix("http://").split(":")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect((host, int(port)))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /api/v1/contracts/monitor HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(4096)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def send(self, message: dict[str, Any]) -> None:
        import os
        import struct

        data = json.dumps(message).encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(data) < 126:
            header += bytes([0x80 | len(data)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(data))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("connection closed")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """(opcode, payload) of each frame, until the close frame (included)."""
        import struct

        while True:
            b0, b1 = self._read(2)
            length = b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            payload = self._read(length)
            yield b0 & 0x0F, payload
            if b0 & 0x0F == 0x8:
                return
