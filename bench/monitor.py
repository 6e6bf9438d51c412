"""The live monitor under load: 1,000 WebSocket subscribers while the fleet simulator runs.

A real API process (`python -m uvicorn app.http:app`, as `makima run` starts it) on PostgreSQL
and Redis, in a database and key prefix of this run's own (`tests.isolation`), and a Celery
worker on `makima run`'s queues (2 processes). The producer is `makima simulate` (default 25
supervisors, about 15-20 events a second: heartbeats, tasks spawned and completed,
deliverables, state saves, questions asked and answered by a simulated person, status and
phase changes), over HTTP like any daemon; or, with `--producer steady`, status changes
committed through the API module at a steady `--rate`, round-robin over 50 contracts. The
subscribers are the owner's WebSocket clients (`Subscription`: a minimal client on plain
sockets, 500 per process), subscribed to everything the owner has (`{}`), so every event goes
to every subscriber: the worst case for the fan-out.

**What the latency measures**: for each delivery, from the moment the event's transaction
committed to the moment its bytes reached that subscriber's process. The commit moment is
the writer's wall clock right after its COMMIT returned, which every writer publishes on the
live channel with its event ids (`app.live_events.announce_events`; `WakeUps` here listens
like an API process does). An event no wake-up names keeps its `createdAt`, stamped just
before its transaction's write (`app.pending_writes.stamp_events`; the heartbeat ingestion
stamps it when the batch is received, before its one statement, so for its
`supervisor_state_changed` events the figure also holds that statement and COMMIT): the
report says how many events were timed each way, and per event type. Same machine, same
clock; the receipt time is taken as the bytes arrive, before any parsing.

Printed for each run: p50, p99 and max over all deliveries, events per second delivered,
anything missing or closed, each event's first delivery (the read path: the wake-up, the
horizon, the query) and the spread from its first to its last subscriber (the fan-out), the
wake-ups' own delay (COMMIT to a listener), the CPU each side used, the load average, and the
latency per event type. Measured in the same run:

- baseline **raw Redis pub/sub** round trip (publish → a subscriber's receipt, one at a time):
  the floor of any wake-up through the broker;
- baseline **one subscriber**: the same producer, one WebSocket client;
- **N subscribers** (default 1,000) over 2 client processes.

The bar (issue 13): p99 under 250 ms with 1,000 subscribers. The machine's other work shares
the cores, and PostgreSQL's commit horizon is cluster-wide: a long transaction anywhere on the
cluster holds back every event behind it (`--hold-ms` makes one; README "Live monitor").
`bench/monitor_fanout.py` measures the fan-out alone (no database, no producer).

    python bench/monitor.py [--subscribers 1000] [--seconds 60] [--processes 2] [--api-processes 1]
                            [--producer simulate|steady] [--supervisors 25] [--rate 20]
                            [--hold-ms 0 --hold-every-ms 500]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BAR_P99_MS = 250.0
CONTRACTS = 50
# How many subscribers open their connection at the same time (a burst of 1,000 handshakes
# would measure the accept queue, not the monitor).
CONNECTING_AT_ONCE = 50


# --- subscriber processes (spawned: they import nothing of the service) ----------------------


def subscriber_process(url: str, token: str, count: int, pipe: Connection) -> None:
    """Hold `count` subscriptions; say "ready"; on "stop", send back every delivery.

    A delivery is (event id, when its bytes arrived), in two arrays.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    into = Deliveries()
    try:
        clients = _connect_all(url, token, count, into)
    except Exception as exc:
        pipe.send(("error", repr(exc)))
        return
    pipe.send(("ready", count))
    cpu = time.process_time()
    _receive_until_stopped(clients, pipe)
    cpu = time.process_time() - cpu  # receiving only
    for client in clients.values():
        client.sock.close()
    pipe.send(("records", into.arrays(), into.closes, cpu))


class Deliveries:
    """What one subscriber process received (arrays: compact to send back)."""

    def __init__(self) -> None:
        self.ids, self.times = array("q"), array("d")
        self.closes: dict[str, int] = {}

    def record(self, frame: bytearray, start: int, end: int, received: float) -> None:
        """One event message, as its bytes came: only its id is read, from the bytes.

        The event's own fields come first and the envelope last (`LiveEvent.message`:
        `..., "id": 12, "type": ..., "contractId": ..., "createdAt": ...`), so the last `"id":`
        is the event id; a notice's is `null` (none arrive here: no `includeHeartbeats`).
        """
        at = frame.rfind(b'"id":', start, end)
        comma = frame.find(b",", at, end)
        if at < 0 or comma < 0 or frame[at + 5] == ord("n"):
            return
        self.ids.append(int(frame[at + 5 : comma]))
        self.times.append(received)

    def arrays(self) -> list[bytes]:
        return [self.ids.tobytes(), self.times.tobytes()]


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A client's frame (RFC 6455 5.2): final, masked; the payloads sent here are short."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


class Subscription:
    """One monitor client speaking just enough WebSocket (RFC 6455) on a plain socket.

    The opening handshake and the filter message (`{}`: everything the owner has), then the
    server's frames read straight from the bytes (a server's frames are unmasked; the monitor
    sends each message in one frame): a text frame's event id is read from its bytes and
    nothing else is parsed while the run lasts, a ping is answered, a close is counted. The
    receipt time is taken as the bytes arrive. A process reads its sockets in one `epoll`
    loop, no event loop: a few µs of client CPU a message, where a general client (an asyncio
    protocol, the `websockets` parser, then JSON) cost about 30 µs here, and the bench's own
    processes share the two cores with the service (in a deployment the clients are
    elsewhere). No permessage-deflate is offered (the API as `makima run` starts it, and as
    this bench does, negotiates none anyway).
    """

    def __init__(self, sock: socket.socket, into: Deliveries) -> None:
        self.sock, self.into = sock, into
        self.buffer = bytearray()
        self.handshaken = False
        self.subscribed = False
        self.closed: str | None = None

    def opening(self, host: str, port: int, path: str, token: str) -> bytes:
        import base64

        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()

    def received(self, data: bytes, at: float) -> None:
        buf = self.buffer
        buf += data
        if not self.handshaken:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[: buf.find(b"\r\n")])
            if status.split(b" ")[1:2] != [b"101"]:
                raise RuntimeError(f"handshake answered {status.decode(errors='replace')}")
            del buf[: end + 4]
            self.handshaken = True
            self.sock.sendall(_client_frame(0x1, b"{}"))
        pos, size = 0, len(buf)
        while size - pos >= 2:
            head, length = 2, buf[pos + 1] & 0x7F
            if length == 126:
                head, length = 4, int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif length == 127:
                head, length = 10, int.from_bytes(buf[pos + 2 : pos + 10], "big")
            end = pos + head + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 0x1:
                if self.subscribed:
                    self.into.record(buf, pos + head, end, at)
                else:
                    self.subscribed = True  # the "subscribed" answer
            elif opcode == 0x9:  # ping: pong with its payload
                self.sock.sendall(_client_frame(0xA, bytes(buf[pos + head : end])))
            elif opcode == 0x8:
                code = int.from_bytes(buf[pos + head : pos + head + 2], "big") if length >= 2 else None
                self.closed = f"closed {code}"
                self.into.closes[self.closed] = self.into.closes.get(self.closed, 0) + 1
            elif opcode != 0xA:
                raise RuntimeError(f"unexpected frame (opcode {opcode})")
            pos = end
        del buf[:pos]


def _connect_all(url: str, token: str, count: int, into: Deliveries) -> dict[int, Subscription]:
    """Open and subscribe `count` connections, `CONNECTING_AT_ONCE` at a time (each step of a
    group sent before any answer is awaited); returns them by file descriptor, non-blocking."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    clients: dict[int, Subscription] = {}
    for first in range(0, count, CONNECTING_AT_ONCE):
        group = []
        for _ in range(min(CONNECTING_AT_ONCE, count - first)):
            sock = socket.create_connection((host, port), timeout=60)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            client = Subscription(sock, into)
            sock.sendall(client.opening(host, port, parts.path, token))
            group.append(client)
        for client in group:
            while not client.subscribed:
                data = client.sock.recv(65536)
                if not data or client.closed:
                    raise RuntimeError(client.closed or "connection closed while subscribing")
                client.received(data, time.time())
            client.sock.setblocking(False)
            clients[client.sock.fileno()] = client
    return clients


def _receive_until_stopped(clients: dict[int, Subscription], pipe: Connection) -> None:
    """Read every socket as its bytes arrive, until the parent says "stop" on the pipe."""
    import select

    poller = select.epoll()
    for fd in clients:
        poller.register(fd, select.EPOLLIN)
    poller.register(pipe.fileno(), select.EPOLLIN)
    stop = pipe.fileno()
    try:
        while True:
            for fd, _ in poller.poll():
                if fd == stop:
                    pipe.recv()  # "stop"
                    return
                client = clients[fd]
                try:
                    data = client.sock.recv(262144)
                except BlockingIOError:
                    continue
                if not data:
                    poller.unregister(fd)
                    continue
                client.received(data, time.time())
    finally:
        poller.close()


# --- the API process ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(processes: int = 1) -> tuple[subprocess.Popen[bytes], str]:
    """uvicorn as `makima run` starts it (one process, per-message deflate off).

    With `processes` > 1, uvicorn's own `--workers`: the subscribers spread over the processes
    (the kernel hands each connection to one), and each process's hub reads the events once.
    """
    import httpx

    port = free_port()
    more = ["--workers", str(processes)] if processes > 1 else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.http:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws-per-message-deflate",
            "false",  # as `makima run` starts it: no per-connection compression of each event
            "--timeout-graceful-shutdown",
            "2",
            "--log-level",
            "warning",
            *more,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("uvicorn did not start")


def start_workers(data_dir: Path) -> list[Any]:
    """One Celery worker on the queues `makima run` gives its worker, 2 processes, as it does."""
    from app.service_runner import WORKER_QUEUES
    from tests.integration.worker_processes import start_worker

    worker = start_worker(data_dir, queues=WORKER_QUEUES, concurrency=2)
    worker.wait_ready()
    return [worker]


def cpu_seconds(pid: int) -> float:
    """CPU the process and its children (uvicorn's workers) have used so far."""
    import psutil

    total = 0.0
    main = psutil.Process(pid)
    for proc in [main, *main.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


# --- the producers ----------------------------------------------------------------------------


class SteadyProducer:
    """Status changes through the API module at a steady rate; the time after each COMMIT."""

    name = "steady status changes"

    def __init__(self, token: str, rate: float) -> None:
        from app.api import ContractsAPI
        from app.domain.lifecycle import Status

        def no_broker(task: str, payload: dict[str, Any], countdown: float | None = None, /) -> str:
            return "not-sent"  # status changes between active and paused send no follow-up

        self.rate = rate
        self.api = ContractsAPI(token, sender=no_broker)
        self.paused, self.active = Status.PAUSED, Status.ACTIVE
        self.contracts = []
        for i in range(CONTRACTS):
            cid = uuid.UUID(str(self.api.create_contract(f"monitor bench {i}", "simple").id))
            self.api.change_status(cid, Status.ACTIVE)
            self.contracts.append(cid)
        self.is_paused = dict.fromkeys(self.contracts, False)
        self.seq = 0
        self.note = ""

    def run(self, seconds: float) -> None:
        """Commit for `seconds`, one status change each 1/rate s."""
        committed = 0
        start = time.monotonic()
        due = start
        while due - start < seconds:
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            self.seq += 1
            cid = self.contracts[self.seq % len(self.contracts)]
            target = self.active if self.is_paused[cid] else self.paused
            self.api.change_status(cid, target, reason=f"bench {self.seq}")
            committed += 1
            self.is_paused[cid] = not self.is_paused[cid]
            due += 1 / self.rate
        self.note = f"{committed / (time.monotonic() - start):.1f} commits/s kept"


class SimulatedFleet:
    """`makima simulate` against the API process: supervisors on daemons, over HTTP, with workers.

    Its events are written by the API and by the worker processes (reports are queued).
    """

    name = "makima simulate"

    def __init__(self, base: str, supervisor_token: str, person_token: str, supervisors: int) -> None:
        self.base, self.supervisors = base, supervisors
        self.tokens = (supervisor_token, person_token)
        self.note = ""
        self.runs = 0

    def run(self, seconds: float) -> None:
        self.runs += 1
        command = [
            sys.executable,
            "-m",
            "app.cli",
            "simulate",
            "--supervisors",
            str(self.supervisors),
            "--duration",
            f"{seconds:g}",
            "--url",
            self.base,
            "--token",
            self.tokens[0],
            "--person-token",
            self.tokens[1],
            "--seed",
            str(13 + self.runs),
            "--json",
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 600)
        try:
            lost = json.loads(done.stdout).get("lost")
        except ValueError:
            lost = f"unknown (exit {done.returncode}: {done.stderr.strip()[-300:]})"
        self.note = f"{self.supervisors} supervisors, the simulator's lost items: {lost}"


# --- one measured run --------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    subscribers: int
    events: int
    events_per_s: float
    deliveries: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    delivered_per_s: float
    api_cpu: float
    clients_cpu: float
    closes: dict[str, int]
    first_p50_ms: float
    first_p99_ms: float
    spread_p50_ms: float
    spread_p99_ms: float
    note: str
    horizon: str
    wake_ups: str
    # Per event type: (type, events, how many of them timed from createdAt, p50 and p99 over
    # its deliveries, p99 of its first delivery).
    by_type: list[tuple[str, int, int, float, float, float]]


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _stored(low: int, high: int) -> dict[int, tuple[str, float]]:
    """Each event's type and `createdAt` (epoch seconds), read back from the table after a run."""
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, type, extract(epoch FROM created_at) FROM contract_events"
                " WHERE id >= :low AND id <= :high"
            ),
            {"low": low, "high": high},
        ).all()
    return {int(row[0]): (str(row[1]), float(row[2])) for row in rows}


def _by_type(
    per_event: dict[int, list[float]],
    firsts: dict[int, float],
    from_created: set[int],
    types: dict[int, str],
) -> list[tuple[str, int, int, float, float, float]]:
    """Latency by event type, most frequent first: which writers the tail comes from."""
    grouped: dict[str, list[int]] = {}
    for event_id in per_event:
        grouped.setdefault(types.get(event_id, "?"), []).append(event_id)
    out = []
    for type_, ids in sorted(grouped.items(), key=lambda kv: -len(kv[1])):
        all_ms = sorted(x * 1000 for i in ids for x in per_event[i])
        first_ms = sorted(firsts[i] for i in ids)
        created = sum(1 for i in ids if i in from_created)
        out.append(
            (
                type_,
                len(ids),
                created,
                statistics.median(all_ms),
                percentile(all_ms, 0.99),
                percentile(first_ms, 0.99),
            )
        )
    return out


def _events_of(owner: str, after_id: int) -> tuple[int, int]:
    """How many events the owner's contracts have after `after_id`, and the newest id."""
    from sqlalchemy import text

    from app.db import get_engine

    with get_engine().connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), coalesce(max(e.id), 0) FROM contract_events e"
                " JOIN contracts c ON c.id = e.contract_id WHERE c.owner_id = :owner AND e.id > :after"
            ),
            {"owner": owner, "after": after_id},
        ).one()
    return int(row[0]), int(row[1])


def measure(
    label: str,
    base: str,
    api_pid: int,
    token: str,
    owner: str,
    producer: SteadyProducer | SimulatedFleet,
    subscribers: int,
    processes: int,
    seconds: float,
) -> Result:
    url = base.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    ctx = multiprocessing.get_context("spawn")
    processes = max(1, min(processes, subscribers))
    shares = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
    pipes, children = [], []
    for share in shares:
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=subscriber_process, args=(url, token, share, theirs))
        child.start()
        pipes.append(mine)
        children.append(child)
    try:
        for pipe in pipes:
            kind, value = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"a subscriber process failed: {value}")
        print(f"  {label}: {subscribers} subscribed; {producer.name} for {seconds:g} s", flush=True)
        time.sleep(1)  # the last subscriptions settle
        _, before = _events_of(owner, 0)
        api_cpu0 = cpu_seconds(api_pid)
        first = time.time()
        with WakeUps() as wake_ups, HorizonWatch() as watch:
            producer.run(seconds)
            produced_for = time.time() - first
            time.sleep(3)  # the last deliveries (and wake-ups) arrive
        api_cpu = cpu_seconds(api_pid) - api_cpu0
        events, newest = _events_of(owner, before)
        for pipe in pipes:
            pipe.send("stop")
        received: list[tuple[array[int], array[float]]] = []
        closes: dict[str, int] = {}
        clients_cpu = 0.0
        for pipe in pipes:
            _, raw, got_closes, cpu = pipe.recv()
            ids, times = array("q"), array("d")
            ids.frombytes(raw[0])
            times.frombytes(raw[1])
            received.append((ids, times))
            clients_cpu += cpu
            for key, n in got_closes.items():
                closes[key] = closes.get(key, 0) + n
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    # Each event's commit: when its writer's COMMIT returned (its wake-up), else its createdAt.
    stored = _stored(before + 1, max([newest, *(max(ids, default=0) for ids, _ in received)]))
    origin: dict[int, float] = {}
    from_created: set[int] = set()
    for event_id, (_, created) in stored.items():
        at = wake_ups.committed.get(event_id)
        if at is None:
            at = created
            from_created.add(event_id)
        origin[event_id] = at
    latencies: list[float] = []
    # Per event: its first delivery (the read path: wake-up, horizon, query) and its last.
    earliest: dict[int, float] = {}
    latest: dict[int, float] = {}
    per_event: dict[int, list[float]] = {}
    last = first
    for ids, times in received:
        for event_id, at in zip(ids, times, strict=True):
            if event_id <= before or event_id not in origin:
                continue
            latency = at - origin[event_id]
            latencies.append(latency)
            per_event.setdefault(event_id, []).append(latency)
            last = max(last, at)
            earliest[event_id] = min(earliest.get(event_id, at), at)
            latest[event_id] = max(latest.get(event_id, at), at)
    latencies.sort()
    ms = [x * 1000 for x in latencies] or [float("nan")]
    # Rates over the time events were committed (the simulator also starts up and reconciles).
    delivered = [origin[i] for i in earliest]
    begun = min(delivered, default=first)
    span = max(delivered, default=first + produced_for) - begun
    first_of = {i: (at - origin[i]) * 1000 for i, at in earliest.items()}
    firsts = sorted(first_of.values()) or [float("nan")]
    spreads = sorted((latest[i] - at) * 1000 for i, at in earliest.items()) or [float("nan")]
    timed = from_created & earliest.keys()
    return Result(
        label,
        subscribers,
        events,
        events / max(span, 1e-9),
        len(latencies),
        events * subscribers,
        statistics.median(ms),
        percentile(ms, 0.99),
        ms[-1],
        len(latencies) / max(last - begun, 1e-9),
        api_cpu,
        clients_cpu,
        closes,
        statistics.median(firsts),
        percentile(firsts, 0.99),
        statistics.median(spreads),
        percentile(spreads, 0.99),
        producer.note,
        watch.summary(),
        wake_ups.summary() + f"; commit time from the wake-up for {len(earliest) - len(timed)} events,"
        f" from createdAt for {len(timed)}",
        _by_type(per_event, first_of, from_created, {i: t for i, (t, _) in stored.items()}),
    )


class OtherTransactions:
    """Another database's write transactions on the cluster, each held open `hold_ms`, then committed.

    What another application (or another test run on a shared machine) does to the cluster's
    commit horizon: `pg_snapshot_xmin` stops at each while it is open. The monitor reads below
    the database's horizon when an event is held back, so these should not delay the stream.
    """

    def __init__(self, hold_ms: float, every_ms: float) -> None:
        self.hold, self.every = hold_ms / 1000, every_ms / 1000
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.count = 0

    def _run(self) -> None:
        from sqlalchemy import create_engine, text

        from tests.isolation import PG_ADMIN_URL

        engine = create_engine(PG_ADMIN_URL)  # the maintenance database: not ours
        rng = random.Random(13)
        # Gaps drawn at random, so the held windows do not lock in step with the producer.
        while not self.stop.wait(rng.uniform(0, 2 * max(self.every - self.hold, 0))):
            with engine.begin() as conn:
                conn.execute(text("SELECT pg_current_xact_id()"))  # takes a transaction id
                time.sleep(self.hold)
            self.count += 1
        engine.dispose()

    def __enter__(self) -> OtherTransactions:
        if self.hold > 0:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


class WakeUps:
    """The live channel's wake-ups during a run: when each event's transaction committed.

    Every writer publishes, right after its COMMIT returned, the ids it wrote and the time
    (`app.live_events.announce_events`); this listens like an API process does. An event the
    wake-ups do not name (the heartbeat ingestion's, whose one statement returns a count) keeps
    its `createdAt`, stamped just before its transaction's write. Also kept: how long each
    wake-up took from that COMMIT to this listener (the publish path every API process shares).
    """

    def __init__(self) -> None:
        self.committed: dict[int, float] = {}
        self.delays: list[float] = []
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import redis

        from app.live_events import channel, redis_url

        client = redis.Redis.from_url(redis_url())
        sub = client.pubsub(ignore_subscribe_messages=True)
        sub.subscribe(channel())
        self.ready.set()
        while not self.stop.is_set():
            message = sub.get_message(timeout=0.2)
            if message is None:
                continue
            received = time.time()
            batch = json.loads(message["data"])
            for item in batch if isinstance(batch, list) else [batch]:
                at = item.get("committedAt") if isinstance(item, dict) else None
                if not isinstance(at, float):
                    continue
                self.delays.append((received - at) * 1000)
                for event_id in item.get("ids", ()):
                    self.committed[int(event_id)] = at
        sub.close()
        client.close()

    def __enter__(self) -> WakeUps:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> str:
        if not self.delays:
            return "no wake-ups seen"
        ordered = sorted(self.delays)
        return (
            f"{len(ordered)} wake-ups, from COMMIT to a listener's receipt"
            f" p50 {statistics.median(ordered):.1f} ms, p99 {percentile(ordered, 0.99):.1f} ms"
        )


class HorizonWatch:
    """How long write transactions stayed open during a run, sampled every 20 ms: this database's
    (they hold the stream back: an event waits for every older one) and other databases' (they
    hold back the cluster's horizon, which the monitor reads below first)."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from sqlalchemy import text

        from app.db import get_engine

        with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.stop.wait(0.02):
                ours, others = conn.execute(
                    text(
                        "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start))"
                        "   FILTER (WHERE datname = current_database()), 0),"
                        " coalesce(max(extract(epoch FROM clock_timestamp() - xact_start))"
                        "   FILTER (WHERE datname <> current_database()), 0)"
                        " FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
                    )
                ).one()
                self.samples.append((float(ours) * 1000, float(others) * 1000))

    def __enter__(self) -> HorizonWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> str:
        if not self.samples:
            return "no samples"
        parts = []
        for i, whose in enumerate(("this database's", "other databases'")):
            ages = [sample[i] for sample in self.samples]
            held = sum(1 for ms in ages if ms > 100) / len(ages)
            parts.append(f"{whose} older than 100 ms in {held:.0%} of samples, at most {max(ages):.0f} ms")
        return "oldest open write transaction: " + "; ".join(parts)


def redis_round_trip(samples: int = 2000) -> tuple[float, float]:
    """Publish → receipt on one Redis channel, one message at a time: p50 and p99 in ms."""
    import redis

    from tests.isolation import REDIS_URL

    channel = f"{os.environ['MAKIMA_BROKER_KEY_PREFIX']}bench-round-trip"
    pub, sub_client = redis.Redis.from_url(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    sub = sub_client.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(channel)
    sub.get_message(timeout=1)
    out: list[float] = []
    for _ in range(samples):
        sent = time.time()
        pub.publish(channel, str(sent))
        message = None
        while message is None:
            message = sub.get_message(timeout=1)
        out.append((time.time() - float(message["data"])) * 1000)
    sub.close()
    pub.close()
    sub_client.close()
    out.sort()
    return statistics.median(out), percentile(out, 0.99)


def report(result: Result, baseline_p99: float | None) -> None:
    missing = result.expected - result.deliveries
    print(
        f"  {result.label:22} {result.subscribers:6d} {result.events:7d} {result.events_per_s:7.1f}"
        f" {result.deliveries:10d} {missing:8d} {result.p50_ms:8.1f} {result.p99_ms:8.1f}"
        f" {result.max_ms:8.1f} {result.delivered_per_s:11.0f}"
        + (f"   p99 x{result.p99_ms / baseline_p99:.1f} of one subscriber's" if baseline_p99 else "")
    )
    print(
        f"  {'':22} each event's first delivery p50 {result.first_p50_ms:.1f} ms,"
        f" p99 {result.first_p99_ms:.1f} ms;"
        f" first to last subscriber p50 {result.spread_p50_ms:.1f} ms, p99 {result.spread_p99_ms:.1f} ms"
    )
    print(
        f"  {'':22} CPU: API process {result.api_cpu:.1f} s, subscriber processes {result.clients_cpu:.1f} s;"
        f" {result.note}" + (f"; closed: {result.closes}" if result.closes else "")
    )
    print(f"  {'':22} {result.horizon}")
    print(f"  {'':22} {result.wake_ups}")
    for type_, n, created, p50, p99, first_p99 in result.by_type:
        print(
            f"  {'':22}   {type_:26} {n:6d} events  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms"
            f"  first delivery p99 {first_p99:7.1f} ms"
            + (f"  ({created} timed from createdAt)" if created else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60, help="how long the producer runs")
    parser.add_argument("--processes", type=int, default=2, help="subscriber processes")
    parser.add_argument(
        "--api-processes", type=int, default=1, help="uvicorn --workers (makima run starts 1)"
    )
    parser.add_argument("--baseline-seconds", type=float, default=20, help="the one-subscriber run")
    parser.add_argument(
        "--producer",
        choices=["simulate", "steady"],
        default="simulate",
        help="the fleet simulator (default), or status changes at a steady --rate",
    )
    parser.add_argument("--supervisors", type=int, default=25, help="simulated supervisors")
    parser.add_argument("--rate", type=float, default=20, help="steady: events committed per second")
    parser.add_argument(
        "--hold-ms",
        type=float,
        default=0,
        help="another database's client holds a write transaction open this long, every --hold-every-ms",
    )
    parser.add_argument("--hold-every-ms", type=float, default=500)
    args = parser.parse_args()

    from tests.isolation import Isolation

    scratch = Isolation("makima_bench")
    data_dir = Path(tempfile.mkdtemp(prefix="makima-bench-monitor-"))
    os.environ.update(
        {
            **scratch.environment(),
            "MAKIMA_DATA_DIR": str(data_dir),
            "PROMETHEUS_MULTIPROC_DIR": str(data_dir / "metrics"),
        }
    )
    (data_dir / "metrics").mkdir()
    scratch.create_database()
    api: subprocess.Popen[bytes] | None = None
    workers: list[Any] = []
    try:
        from app.auth import Role, create_token
        from app.db import unit_of_work

        owner = "monitor-bench"
        with unit_of_work() as uow:
            token = create_token(uow.session, owner, Role.USER)
            daemons_token = create_token(uow.session, owner, Role.SUPERVISOR)
        api, base = start_api(args.api_processes)
        producer: SteadyProducer | SimulatedFleet
        if args.producer == "steady":
            producer = SteadyProducer(token, args.rate)
        else:
            workers = start_workers(data_dir)
            producer = SimulatedFleet(base, daemons_token, token, args.supervisors)
        load = os.getloadavg()
        print(
            f"monitor bench: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f};"
            f" producer: {producer.name}; {args.api_processes} API process(es);"
            f" {args.processes} subscriber processes",
            flush=True,
        )
        redis_p50, redis_p99 = redis_round_trip()
        if args.hold_ms:
            print(
                f"  another database's client holds a write transaction {args.hold_ms:g} ms"
                f" every {args.hold_every_ms:g} ms on average"
            )
        with OtherTransactions(args.hold_ms, args.hold_every_ms):
            runs = [("one subscriber", 1, 1, args.baseline_seconds)]
            runs.append((f"{args.subscribers} subscribers", args.subscribers, args.processes, args.seconds))
            one, many = (
                measure(label, base, api.pid, token, owner, producer, n, procs, seconds)
                for label, n, procs, seconds in runs
            )
        print(
            "  latency: from each event's commit (when its writer's COMMIT returned, from its wake-up;"
            " else its createdAt) to its receipt by each subscriber"
        )
        print(f"  baseline, raw Redis pub/sub round trip: p50 {redis_p50:.2f} ms, p99 {redis_p99:.2f} ms")
        print(
            f"  {'run':22} {'subs':>6} {'events':>7} {'ev/s':>7} {'deliveries':>10} {'missing':>8}"
            f" {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'delivered/s':>11}"
        )
        report(one, None)
        report(many, one.p99_ms)
        verdict = "met" if many.p99_ms < BAR_P99_MS and many.deliveries == many.expected else "NOT met"
        print(
            f"  bar (p99 < {BAR_P99_MS:.0f} ms with {args.subscribers} subscribers,"
            f" nothing missing): {verdict}"
            f" (p99 {many.p99_ms:.1f} ms; load average now {os.getloadavg()[0]:.2f})"
        )
    finally:
        for worker in workers:
            worker.stop()
        if api is not None:
            api.terminate()
            try:
                api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                api.kill()
        scratch.drop_database()
        scratch.purge_keys()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
