"""`archive_old` over many contracts on PostgreSQL, against one bulk UPDATE of the same rows.

The batch path is what a worker on the `batch` queue runs (`app.batch_runner.run_batch`): chunks of
`[batch] chunk_size` contracts (2,000 by default; `MAKIMA_BATCH__CHUNK_SIZE=1` for one transaction
per contract), each one short transaction that locks the batch row, claims the chunk with
`FOR NO KEY UPDATE SKIP LOCKED`, judges every contract with the status table, moves them, writes
one `status_changed` event per contract, records the chunk's ids and the cursor.
The baseline is the least archiving can cost: one `UPDATE contracts SET status='archived', ...`
of the same rows in one transaction (no events, no record, one long lock on every row).

Both run on the same table with the same indexes, each from the same state: every measured run
starts after the table was updated whole once and vacuumed (so none meets a freshly loaded,
tightly packed table the others do not), and after a CHECKPOINT (so none pays more full-page
writes than another because of when the last checkpoint fell). The bulk UPDATE runs before and
after the batch, and the ratio is taken against the faster of the two.

Printed: contracts/s of each, the ratio, the longest single transaction of the batch, and the
load average. The bar: no batch transaction longer than 1 s, and at least 0.2 of the bulk
UPDATE's rate. Rows are created with COPY, not through the API. A throwaway database is created
and dropped.

    python bench/batch.py [contracts]      # default 100000
"""

from __future__ import annotations

import io
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTRACTS = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000


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

    at = (utcnow() - timedelta(days=10)).isoformat()
    buf = io.StringIO()
    for _ in range(n):
        cid = uuid.uuid4()
        buf.write(f"{cid}\tbench\tc-{cid}\tsimple\texecute\tcompleted\t2\tf\tt\t{at}\t{at}\t{at}\t{at}\n")
    buf.seek(0)
    raw = engine.raw_connection()  # type: ignore[attr-defined]
    try:
        with raw.cursor() as cur:
            cur.copy_expert(
                "COPY contracts (id, owner_id, name, contract_type, phase, status, version, phase_guard,"
                " auto_complete_enabled, status_changed_at, last_activity_at, created_at, updated_at)"
                " FROM STDIN",
                buf,
            )
        raw.commit()
    finally:
        raw.close()


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run(db_url: str) -> None:
    from sqlalchemy import text

    from app import batch_runner
    from app.api import ContractsAPI
    from app.auth import Role, create_token
    from app.db import get_engine, unit_of_work

    engine = get_engine(db_url)

    def reset() -> None:
        """Every contract completed 10 days ago again, then VACUUM ANALYZE and a CHECKPOINT."""
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE contracts SET status = 'completed',"
                    " status_changed_at = now() - interval '10 days',"
                    " last_activity_at = now() - interval '10 days'"
                )
            )
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE contracts"))
            conn.execute(text("CHECKPOINT"))

    def bulk_update() -> tuple[int, float]:
        """The baseline: one UPDATE of the rows archive_old selects, in one transaction."""
        t0 = time.perf_counter()
        with engine.begin() as conn:
            rows = conn.execute(
                text(
                    "UPDATE contracts SET status = 'archived', status_changed_at = now(), waiting_for = NULL,"
                    " blocked_reason = NULL, last_activity_at = now(), updated_at = now()"
                    " WHERE status IN ('completed', 'failed')"
                    " AND status_changed_at < now() - interval '7 days'"
                )
            ).rowcount
        return rows, time.perf_counter() - t0

    print(f"load average {_load()}; creating {CONTRACTS} completed contracts with COPY ...", flush=True)
    _copy_contracts(engine, CONTRACTS)
    reset()

    bulk_rows, bulk_before = bulk_update()
    reset()

    # The batch, as a worker runs it (no broker needed: archiving has no follow-ups).
    with unit_of_work(engine=engine) as uow:
        admin = create_token(uow.session, "operators", Role.ADMIN)
    api = ContractsAPI(admin, engine=engine, sender=lambda task, payload, countdown=None: "")
    t0 = time.perf_counter()
    view, _ = api.start_batch("archive_old", {"olderThanHours": 168, "statusFilter": ["completed", "failed"]})
    started = time.perf_counter() - t0
    runner = batch_runner.Runner(engine=engine)
    while not batch_runner.run_batch(runner, view.batch_id, slice_seconds=3600):
        pass
    batch_seconds = time.perf_counter() - t0
    done = api.batch_status(view.batch_id)
    assert done is not None and done.affected_count == CONTRACTS, done
    with engine.connect() as conn:
        events = conn.scalar(text("SELECT count(*) FROM contract_events WHERE type = 'status_changed'"))
    assert events == CONTRACTS, events
    reset()

    bulk_rows_after, bulk_after = bulk_update()
    assert bulk_rows == bulk_rows_after == CONTRACTS, (bulk_rows, bulk_rows_after)

    longest = max([started, *runner.transactions])
    batch_rate = CONTRACTS / batch_seconds
    bulk_rate = CONTRACTS / min(bulk_before, bulk_after)
    ratio = batch_rate / bulk_rate
    print(
        f"bulk UPDATE    : {CONTRACTS} rows in {bulk_before:.2f} s before the batch, {bulk_after:.2f} s after"
        f" = {bulk_rate:,.0f} contracts/s at the faster (one transaction)"
    )
    print(
        f"archive_old    : {CONTRACTS} contracts in {batch_seconds:.2f} s = {batch_rate:,.0f} contracts/s, "
        f"{len(runner.transactions)} chunk transactions of {runner.chunk_size}, "
        f"longest transaction {longest * 1000:.0f} ms (start: {started * 1000:.0f} ms)"
    )
    print(f"ratio          : {ratio:.2g} of the bulk UPDATE's rate")
    ok = longest <= 1.0 and ratio >= 0.2
    print(f"bar (<= 1 s per transaction, >= 0.2 of bulk): {'met' if ok else 'NOT met'}")
    print(f"load average   : {_load()}")


if __name__ == "__main__":
    main()
