"""The live monitor under load: 1,000 WebSocket subscribers while the fleet simulator runs.

A real API process (`python -m uvicorn app.http:app`, as `makima run` starts it) on PostgreSQL
and Redis, in a database and key prefix of this run's own (`tests.isolation`), and a Celery
worker on `makima run`'s queues (2 processes). The producer is `makima simulate` (default 25
supervisors, about 20 events a second: heartbeats, tasks spawned and completed, deliverables,
state saves, questions asked and answered by a simulated person, status and phase changes),
over HTTP like any daemon; or, with `--producer steady`, status changes committed through the
API module at a steady `--rate`, round-robin over 50 contracts, with the wall-clock time right
after each COMMIT returned. The subscribers are the owner's WebSocket clients (`websockets`,
asyncio, many connections per process), subscribed to everything the owner has (`{}`), so
every event goes to every subscriber: the worst case for the fan-out.

Latency is from an event's commit to its receipt by each subscriber: the time the COMMIT
returned (steady), or the `createdAt` the event carries (simulator: the writing transaction's
clock, a few milliseconds before its COMMIT). Printed for each run: p50, p99 and max over all
deliveries, events per second delivered, anything missing or closed, each event's first
delivery (the read path: wake-up, horizon, query) and the spread from its first to its last
subscriber (the fan-out), and the CPU each side used. Measured in the same run:

- baseline **raw Redis pub/sub** round trip (publish → a subscriber's receipt, one at a time):
  the floor of any wake-up through the broker;
- baseline **one subscriber**: the same producer, one WebSocket client;
- **N subscribers** (default 1,000) over 2 client processes: one Python process cannot read
  1,000 sockets at 20,000 messages a second and leave the latency to the server.

The bar (issue 13): p99 under 250 ms with 1,000 subscribers. The machine's other work shares
the cores, and PostgreSQL's commit horizon is cluster-wide: a long transaction anywhere on the
cluster holds back every event behind it (`--hold-ms` makes one; README "Live monitor").

    python bench/monitor.py [--subscribers 1000] [--seconds 60] [--processes 2] [--api-processes 1]
                            [--producer simulate|steady] [--supervisors 25] [--rate 20]
                            [--hold-ms 0 --hold-every-ms 500] [--no-compression]
"""

from __future__ import annotations

import argparse
import asyncio
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


def subscriber_process(url: str, token: str, count: int, pipe: Connection, compression: bool) -> None:
    """Hold `count` subscriptions; say "ready"; on "stop", send back every delivery.

    A delivery is (event id, its `createdAt`, when it was received, the producer's sequence
    number from a `reason` of "bench <n>" or -1), in four arrays.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    asyncio.run(_subscribers(url, token, count, pipe, compression))


class Deliveries:
    """What one subscriber process received (arrays: compact to send back)."""

    def __init__(self) -> None:
        self.ids, self.created, self.times, self.seqs = array("q"), array("d"), array("d"), array("q")
        self.closes: dict[str, int] = {}

    def record(self, text: str, received: float) -> None:
        from datetime import datetime

        message = json.loads(text)
        if message.get("id") is None:
            return
        reason = message.get("reason") or ""
        self.ids.append(message["id"])
        self.created.append(datetime.fromisoformat(message["createdAt"]).timestamp())
        self.times.append(received)
        self.seqs.append(int(reason[6:]) if reason.startswith("bench ") else -1)

    def arrays(self) -> list[bytes]:
        return [a.tobytes() for a in (self.ids, self.created, self.times, self.seqs)]


class Subscription(asyncio.Protocol):
    """One monitor client on the `websockets` sans-I/O protocol straight on an asyncio transport.

    The receipt time is taken as the bytes arrive, before any parsing; the client costs a few
    microseconds a message, so the two cores go to the service, not to the load generator.
    """

    def __init__(self, uri: Any, token: str, compression: bool, into: Deliveries) -> None:
        from websockets.client import ClientProtocol
        from websockets.extensions.permessage_deflate import enable_client_permessage_deflate

        extensions = enable_client_permessage_deflate(None) if compression else None
        self.protocol = ClientProtocol(uri, extensions=extensions, max_size=None)
        self.token, self.into = token, into
        self.subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.protocol.connect()
        request.headers["Authorization"] = f"Bearer {self.token}"
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Response

        received = time.time()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                if event.status_code != 101:
                    self._fail(RuntimeError(f"handshake answered {event.status_code}"))
                    return
                self.protocol.send_text(b"{}")  # everything the owner has
            elif event.opcode is Opcode.TEXT:
                if self.subscribed.done():
                    self.into.record(event.data.decode(), received)
                else:
                    self.subscribed.set_result(None)  # the "subscribed" answer
            elif event.opcode is Opcode.CLOSE:
                code = self.protocol.close_rcvd.code if self.protocol.close_rcvd else None
                key = f"closed {code}"
                self.into.closes[key] = self.into.closes.get(key, 0) + 1
                self._fail(RuntimeError(key))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RuntimeError("connection lost"))

    def _fail(self, exc: BaseException) -> None:
        if not self.subscribed.done():
            self.subscribed.set_exception(exc)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            for chunk in self.protocol.data_to_send():
                if chunk:
                    self.transport.write(chunk)


async def _subscribers(url: str, token: str, count: int, pipe: Connection, compression: bool) -> None:
    from websockets.uri import parse_uri

    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    into = Deliveries()
    gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
    connections: list[Subscription] = []

    async def one() -> None:
        async with gate:
            _, sub = await loop.create_connection(
                lambda: Subscription(uri, token, compression, into), uri.host, uri.port
            )
            connections.append(sub)
            await asyncio.wait_for(sub.subscribed, 60)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except Exception as exc:
        pipe.send(("error", repr(exc)))
        return
    pipe.send(("ready", count))
    cpu = time.process_time()
    await loop.run_in_executor(None, pipe.recv)  # "stop"
    cpu = time.process_time() - cpu  # receiving only
    for sub in connections:
        if sub.transport is not None:
            sub.transport.abort()
    pipe.send(("records", into.arrays(), into.closes, cpu))


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

    def run(self, seconds: float) -> dict[int, float]:
        """Commit for `seconds`; returns {sequence number: wall-clock time its COMMIT returned}."""
        committed: dict[int, float] = {}
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
            committed[self.seq] = time.time()
            self.is_paused[cid] = not self.is_paused[cid]
            due += 1 / self.rate
        self.note = f"{len(committed) / (time.monotonic() - start):.1f} commits/s kept"
        return committed


class SimulatedFleet:
    """`makima simulate` against the API process: supervisors on daemons, over HTTP, with workers.

    Its events are written by the API and by the worker processes (reports are queued); their
    commit time is taken as the `createdAt` each carries (the writing transaction's clock, a
    few milliseconds before its COMMIT: the latency it gives is, if anything, longer).
    """

    name = "makima simulate"

    def __init__(self, base: str, supervisor_token: str, person_token: str, supervisors: int) -> None:
        self.base, self.supervisors = base, supervisors
        self.tokens = (supervisor_token, person_token)
        self.note = ""
        self.runs = 0

    def run(self, seconds: float) -> dict[int, float]:
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
        return {}


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


def percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


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
    compression: bool,
) -> Result:
    url = base.replace("http://", "ws://") + "/api/v1/contracts/monitor"
    ctx = multiprocessing.get_context("spawn")
    processes = max(1, min(processes, subscribers))
    shares = [subscribers // processes + (1 if i < subscribers % processes else 0) for i in range(processes)]
    pipes, children = [], []
    for share in shares:
        mine, theirs = ctx.Pipe()
        child = ctx.Process(target=subscriber_process, args=(url, token, share, theirs, compression))
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
        with HorizonWatch() as watch:
            committed = producer.run(seconds)
        produced_for = time.time() - first
        time.sleep(3)  # the last deliveries arrive
        api_cpu = cpu_seconds(api_pid) - api_cpu0
        events, _ = _events_of(owner, before)
        for pipe in pipes:
            pipe.send("stop")
        latencies: list[float] = []
        # Per event: its first delivery (the read path: wake-up, horizon, query) and its last.
        earliest: dict[int, float] = {}
        latest: dict[int, float] = {}
        origin: dict[int, float] = {}
        last = first
        closes: dict[str, int] = {}
        clients_cpu = 0.0
        for pipe in pipes:
            _, raw, got_closes, cpu = pipe.recv()
            ids, created, times, seqs = array("q"), array("d"), array("d"), array("q")
            for target, data in zip((ids, created, times, seqs), raw, strict=True):
                target.frombytes(data)
            clients_cpu += cpu
            for key, n in got_closes.items():
                closes[key] = closes.get(key, 0) + n
            for event_id, made, received, seq in zip(ids, created, times, seqs, strict=True):
                if event_id <= before:
                    continue
                at = committed.get(seq, made) if committed else made
                latencies.append(received - at)
                last = max(last, received)
                origin[event_id] = at
                earliest[event_id] = min(earliest.get(event_id, received), received)
                latest[event_id] = max(latest.get(event_id, received), received)
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    latencies.sort()
    ms = [x * 1000 for x in latencies] or [float("nan")]
    # Rates over the time events were made (the simulator also starts up and reconciles).
    begun = min(origin.values(), default=first)
    span = max(origin.values(), default=first + produced_for) - begun
    firsts = sorted((at - origin[i]) * 1000 for i, at in earliest.items()) or [float("nan")]
    spreads = sorted((latest[i] - at) * 1000 for i, at in earliest.items()) or [float("nan")]
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
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="clients do not offer permessage-deflate (browsers and `websockets` do by default)",
    )
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
        compression = not args.no_compression
        load = os.getloadavg()
        print(
            f"monitor bench: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f};"
            f" producer: {producer.name}; {args.api_processes} API process(es);"
            f" {args.processes} subscriber processes;"
            f" clients {'offer' if compression else 'do not offer'} permessage-deflate",
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
                measure(label, base, api.pid, token, owner, producer, n, procs, seconds, compression)
                for label, n, procs, seconds in runs
            )
        basis = "the time its COMMIT returned" if args.producer == "steady" else "its createdAt"
        print(f"  latency: from each event's commit ({basis}) to its receipt by each subscriber")
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
