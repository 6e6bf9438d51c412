"""`GET /api/v1/contracts/dashboard` with 100,000 contracts and 1,000,000 events, on PostgreSQL.

Rows are created in bulk (contracts with COPY, events, supervisors, tasks and worktrees with
one `INSERT ... SELECT` each, events in random contract order so each owner's are spread over
the whole id range), then `VACUUM ANALYZE`. Timed in the same run, each `REQUESTS` times:

- a plain `SELECT count(*) FROM contracts` (the baseline: the least a summary can cost);
- the dashboard through the HTTP app in-process (auth, queries, JSON), as an owner with 1,000
  contracts (one of 100 owners), and as an admin (every owner's).

Printed: p50 and p95 of each. The bar: dashboard p95 under 50 ms. A throwaway database is
created and dropped (`tests.isolation`).

    python bench/dashboard.py [contracts] [events] [requests]   # default 100000 1000000 200
"""

from __future__ import annotations

import io
import os
import random
import statistics
import sys
import time
import uuid
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTRACTS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
EVENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
REQUESTS = int(sys.argv[3]) if len(sys.argv) > 3 else 200
OWNERS = 100
BAR_MS = 50.0

# (status, share, phases) — most contracts are finished; the open ones spread over phases.
MIX = [
    ("completed", 0.45, ["execute"]),
    ("archived", 0.15, ["execute"]),
    ("active", 0.20, ["research", "specify", "plan", "execute", "review"]),
    ("waiting_for_input", 0.05, ["plan", "review"]),
    ("paused", 0.05, ["execute"]),
    ("created", 0.05, ["research"]),
    ("failed", 0.05, ["execute"]),
]
WAITING_FOR = ["question", "phase_confirmation", "completion_confirmation"]


def main() -> None:
    from tests.isolation import Isolation

    scratch = Isolation("makima_bench")
    os.environ.update(scratch.environment())  # before any `app` import: settings are read once
    scratch.create_database()
    try:
        run(scratch.db_url)
    finally:
        scratch.drop_database()
        scratch.purge_keys()
        scratch.remove_metrics()


def _copy_contracts(engine: object, n: int) -> None:
    from app.models import utcnow

    rng = random.Random(4)
    now = utcnow()
    buf = io.StringIO()
    for i in range(n):
        cid = uuid.uuid4()
        roll, acc = rng.random(), 0.0
        status, phases = MIX[-1][0], MIX[-1][2]
        for name, share, ph in MIX:
            acc += share
            if roll < acc:
                status, phases = name, ph
                break
        phase = rng.choice(phases)
        # One active contract in ten is stale (silent for hours); the rest heard within minutes.
        silent = (
            timedelta(hours=rng.uniform(1, 48))
            if rng.random() < 0.1
            else timedelta(minutes=rng.uniform(0, 20))
        )
        activity = (now - silent).isoformat()
        waiting = rng.choice(WAITING_FOR) if status == "waiting_for_input" else "\\N"
        created = (now - timedelta(days=rng.uniform(0, 60))).isoformat()
        buf.write(
            f"{cid}\towner-{i % OWNERS:03d}\tbench contract {i}\tsimple\t{phase}\t{status}\t2\tf\tt"
            f"\t{activity}\t{activity}\t{waiting}\t{created}\t{activity}\n"
        )
    buf.seek(0)
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        with raw.cursor() as cur:
            cur.copy_expert(
                "COPY contracts (id, owner_id, name, contract_type, phase, status, version, phase_guard,"
                " auto_complete_enabled, status_changed_at, last_activity_at, waiting_for, created_at,"
                " updated_at) FROM STDIN",
                buf,
            )
        raw.commit()
    finally:
        raw.close()


def _populate(engine: object, events: int) -> None:
    from sqlalchemy import text

    per_contract = max(1, events // CONTRACTS)
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            text(
                "INSERT INTO contract_events (contract_id, type, payload, created_at)"
                " SELECT c.id, 'status_changed', jsonb_build_object('n', g),"
                " now() - (g || ' minutes')::interval"
                " FROM contracts c CROSS JOIN generate_series(1, :k) g ORDER BY random()"
            ),
            {"k": per_contract},
        )
        # Live supervisors on 2,000 active contracts (20 daemons), a dead one on 500 more.
        conn.execute(
            text(
                "INSERT INTO supervisors (task_id, contract_id, incarnation, version, state, phase,"
                " current_activity, progress, pending_task_ids, last_received_at, alive, daemon_id, host,"
                " created_at, updated_at)"
                " SELECT gen_random_uuid(), id, 1, 1, 'working', phase, 'x', 50,"
                ' \'["a", "b"]\'::jsonb,'
                " now() - (CASE WHEN rn <= 2000 THEN 0 ELSE 3600 END) * interval '1 s',"
                " rn <= 2000, 'daemon-' || (rn % 20), 'host', now(), now()"
                " FROM (SELECT id, phase, row_number() OVER () rn FROM contracts WHERE status = 'active'"
                " LIMIT 2500) s"
            )
        )
        conn.execute(
            text(
                "INSERT INTO contract_tasks (id, contract_id, name, status, is_supervisor, phase,"
                " created_at, updated_at)"
                " SELECT gen_random_uuid(), id, 'task',"
                " CASE WHEN g = 1 THEN 'running' ELSE 'done' END, false, phase, now(), now()"
                " FROM (SELECT id, phase FROM contracts WHERE status = 'active' LIMIT 5000) s"
                " CROSS JOIN generate_series(1, 3) g"
            )
        )
        conn.execute(
            text(
                "INSERT INTO contract_worktrees (id, contract_id, path, created_at, released_at)"
                " SELECT gen_random_uuid(), id, '/w/' || id, now(), CASE WHEN status = 'active' THEN NULL"
                " ELSE now() END FROM contracts TABLESAMPLE SYSTEM (5)"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # type: ignore[attr-defined]
        conn.execute(text("VACUUM ANALYZE"))


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    return statistics.median(ordered) * 1000, p95 * 1000


def _time(fn: Callable[[], object], n: int) -> tuple[float, float]:
    for _ in range(5):  # warm the caches and the connection pool
        fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return _percentiles(samples)


def run(db_url: str) -> None:
    from sqlalchemy import text

    from app.auth import Role, create_token
    from app.db import get_engine, unit_of_work
    from app.http import create_app

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
        from starlette.testclient import TestClient

    engine = get_engine(db_url)
    t0 = time.perf_counter()
    print(
        f"creating {CONTRACTS:,} contracts (COPY) and {EVENTS:,} events (INSERT ... SELECT) ...", flush=True
    )
    _copy_contracts(engine, CONTRACTS)
    _populate(engine, EVENTS)
    with engine.connect() as conn:
        n_contracts = conn.scalar(text("SELECT count(*) FROM contracts"))
        n_events = conn.scalar(text("SELECT count(*) FROM contract_events"))
    print(
        f"created {n_contracts:,} contracts, {n_events:,} events in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    with unit_of_work(engine=engine) as uow:
        owner_token = create_token(uow.session, "owner-007", Role.USER)
        admin_token = create_token(uow.session, "operators", Role.ADMIN)

    def count() -> object:
        with engine.connect() as conn:
            return conn.scalar(text("SELECT count(*) FROM contracts"))

    app = create_app(engine=engine, sender=lambda task, payload, countdown=None: "")
    results: dict[str, tuple[float, float]] = {"SELECT count(*) FROM contracts": _time(count, REQUESTS)}
    with TestClient(app) as client:
        for label, token in (
            ("dashboard, owner (1,000 contracts)", owner_token),
            ("dashboard, admin (all)", admin_token),
        ):
            headers = {"Authorization": f"Bearer {token}"}

            def get(headers: dict[str, str] = headers) -> object:
                resp = client.get("/api/v1/contracts/dashboard", headers=headers)
                assert resp.status_code == 200, resp.text
                return resp

            results[label] = _time(get, REQUESTS)
        body = client.get(
            "/api/v1/contracts/dashboard", headers={"Authorization": f"Bearer {owner_token}"}
        ).json()

    print(
        f"owner-007 sees: {sum(body['statusCounts'].values()):,} contracts, stale {body['staleCount']}, "
        f"waiting {body['waitingCount']}, usage {body['resourceUsage']}"
    )
    print(f"{'':38} {'p50 ms':>8} {'p95 ms':>8}   ({REQUESTS} requests each)")
    for label, (p50, p95) in results.items():
        print(f"{label:38} {p50:8.1f} {p95:8.1f}")
    worst = max(p95 for label, (_, p95) in results.items() if label.startswith("dashboard"))
    verdict = "met" if worst < BAR_MS else "NOT met"
    print(f"bar (dashboard p95 < {BAR_MS:.0f} ms): {verdict} (worst p95 {worst:.1f} ms)")


if __name__ == "__main__":
    main()
