"""Guarded phase changes per second against a plain UPDATE of the same rows, in one run.

The guarded path is what `POST /api/v1/contracts/{id}/phase` runs (`contracts.change_phase_now`:
a Core connection, its BEGIN sent with the lock, its COMMIT sent by itself): one transaction
that locks the row (`SELECT ... FOR UPDATE`), checks the caller may see it, reads the completed
deliverables and tasks to judge the gate (force=False), checks the expected version and the
phase guard, updates the row and writes the `phase_changed` event. The baseline is the least
any phase change can cost: `UPDATE contracts SET phase=..., version=version+1 WHERE id=...`,
also one per transaction, on the same rows. The ratio is what the guards cost on top of the
database's own floor; quote it, not the absolute figures (the machine is shared). The two
alternate in ten rounds over slices of the rows, so a burst of someone else's load lands on
both.

A throwaway database and Redis key prefix are created and dropped. The guarded path hands
its follow-up to a no-op sender, so the figure is the command itself; the through-the-API
variant (`ContractsAPI.change_phase`, as the HTTP front calls it) is printed beside it: it
also builds the response (the contract with its phase's progress) and publishes the real
follow-up to Redis after commit.

    python bench/phase_change.py [contracts]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTRACTS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROUNDS = 10  # plain and guarded alternate this many times, so load on a shared machine hits both


def _timed(ids: list[uuid.UUID], one: Callable[[uuid.UUID], None]) -> tuple[float, list[float]]:
    """Run `one` per id, each call its own transaction; returns (rate per second, latencies in ms)."""
    latencies: list[float] = []
    start = time.perf_counter()
    for cid in ids:
        t0 = time.perf_counter()
        one(cid)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    return len(ids) / elapsed, latencies


def _interleaved(
    ids: list[uuid.UUID], first: Callable[[uuid.UUID], None], second: Callable[[uuid.UUID], None]
) -> tuple[float, list[float], float, list[float]]:
    """`_timed` for both, alternating over ROUNDS slices of `ids`: (rate, latencies) of each."""
    times = [0.0, 0.0]
    latencies: tuple[list[float], list[float]] = ([], [])
    for r in range(ROUNDS):
        part = ids[r::ROUNDS]
        for i, one in enumerate((first, second)):
            rate, lat = _timed(part, one)
            times[i] += len(part) / rate
            latencies[i].extend(lat)
    return len(ids) / times[0], latencies[0], len(ids) / times[1], latencies[1]


def _p(latencies: list[float], q: float) -> float:
    return statistics.quantiles(latencies, n=100)[int(q) - 1] if len(latencies) >= 2 else latencies[0]


def main() -> None:
    from tests.isolation import Isolation

    scratch = Isolation("makima_bench")
    # Before any `app` import: settings are read once. No broker is configured or needed.
    os.environ.update(scratch.environment())
    scratch.create_database()
    try:
        run(scratch.db_url)
    finally:
        scratch.drop_database()
        scratch.purge_keys()
        scratch.remove_metrics()


def run(db_url: str) -> None:
    from sqlalchemy import func, select, text

    from app import contracts
    from app.auth import Role, authenticate, create_token
    from app.db import get_engine, unit_of_work
    from app.domain.lifecycle import Status
    from app.domain.phase_change import PhaseChangeRequest
    from app.models import Contract, ContractEvent, utcnow

    def no_dispatch(task: str, payload: dict, countdown: float | None = None) -> str:
        """Follow-ups (auto-advance evaluation) would go to the broker; not what is measured."""
        return ""

    engine = get_engine(db_url)
    with unit_of_work(no_dispatch) as uow:
        token = create_token(uow.session, "bench", Role.USER)
    with unit_of_work(no_dispatch) as uow:
        caller = authenticate(uow.session, token)

    # Setup in bulk: N contracts, active, with the plan phase's required deliverable marked,
    # so the guarded change has a real gate to judge and passes it.
    setup_start = time.perf_counter()
    ids: list[uuid.UUID] = []
    with unit_of_work(no_dispatch) as uow:
        for i in range(CONTRACTS):
            now = utcnow()
            contract = contracts.create_contract(
                uow, caller, name=f"bench-{i}", contract_type="simple", auto_complete_enabled=False, now=now
            )
            contracts.change_status(uow, caller, contract.id, Status.ACTIVE, now=now)
            contracts.mark_deliverable(uow, caller, contract.id, "plan-document", now=now)
            ids.append(contract.id)
    # Measured from a settled table and a fresh checkpoint: the setup's dead rows vacuumed, and
    # no checkpoint owed, so neither path pays the full-page images a checkpoint due mid-run
    # would charge to whichever ran after it (runs varied 0.54-0.68 without this).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("contracts", "contract_events", "contract_deliverables", "task_outbox"):
            conn.execute(text(f"VACUUM ANALYZE {table}"))
        conn.execute(text("CHECKPOINT"))
    setup = time.perf_counter() - setup_start

    def plain(cid: uuid.UUID) -> None:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE contracts SET phase = :phase, version = version + 1 WHERE id = :id"),
                {"phase": "plan", "id": cid},
            )

    request = PhaseChangeRequest("execute", expected_version=2, confirmed=False, force=False)

    def guarded(cid: uuid.UUID) -> None:
        contracts.change_phase_now(caller, cid, request, now=utcnow(), sender=no_dispatch, engine=engine)

    # Warm both paths (connections, statement caches) on rows outside the measured set.
    warm = ids[:50]
    measured = ids[50:]
    for cid in warm:
        plain(cid)
        guarded(cid)

    # Interleaved in rounds, plain first in each: it leaves its rows in 'plan' at version 2,
    # which the guarded run expects. Both see the same load on a shared machine.
    plain_rate, plain_lat, guarded_rate, guarded_lat = _interleaved(measured, plain, guarded)

    # Through the API module with the real sender: back to plan by a plain UPDATE (version 4),
    # then the same guarded change as a caller of the API makes it.
    from app.api import ContractsAPI
    from app.broker import send_task

    api = ContractsAPI(caller=caller, sender=send_task, engine=engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE contracts SET phase = 'plan', version = 4"))
    for cid in warm:
        api.change_phase(cid, "execute", expected_version=4)
    api_rate, api_lat = _timed(
        measured, lambda cid: api.change_phase(cid, "execute", expected_version=4) and None
    )

    with unit_of_work(no_dispatch) as uow:
        in_execute = uow.session.scalar(
            select(func.count())
            .select_from(Contract)
            .where(Contract.phase == "execute", Contract.version == 5)
        )
        changed = uow.session.scalar(
            select(func.count()).select_from(ContractEvent).where(ContractEvent.type == "phase_changed")
        )
    assert in_execute == len(ids), (in_execute, len(ids))
    assert changed == 2 * len(ids), (changed, len(ids))

    with engine.connect() as conn:
        pg = conn.execute(text("SHOW server_version")).scalar()
    print(f"phase_change bench: {len(measured)} contracts measured (+{len(warm)} warm-up), PostgreSQL {pg}")
    print(f"  setup (create + activate + mark deliverable, one transaction): {setup:.1f} s")
    print(
        f"  plain UPDATE, one per transaction:          {plain_rate:8.0f} /s"
        f"   p50 {_p(plain_lat, 50):5.2f} ms  p99 {_p(plain_lat, 99):5.2f} ms"
    )
    print(
        f"  guarded change_phase, one per transaction:  {guarded_rate:8.0f} /s"
        f"   p50 {_p(guarded_lat, 50):5.2f} ms  p99 {_p(guarded_lat, 99):5.2f} ms"
    )
    print(f"  ratio guarded / plain:                      {guarded_rate / plain_rate:8.2f}")
    print(f"  ratio of medians (less sensitive to load):  {_p(plain_lat, 50) / _p(guarded_lat, 50):8.2f}")
    print(
        f"  through the API (response + real publish):  {api_rate:8.0f} /s"
        f"   p50 {_p(api_lat, 50):5.2f} ms  p99 {_p(api_lat, 99):5.2f} ms"
    )
    print(f"  ratio API / plain:                          {api_rate / plain_rate:8.2f}")


if __name__ == "__main__":
    main()
