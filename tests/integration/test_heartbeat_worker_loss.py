"""A worker SIGKILLed in the middle of a heartbeat batch loses no heartbeat.

Its own module, so no other worker consumes while the first one holds the batch: a test
transaction holds the supervisor's row, the worker's upsert waits inside its transaction, the
worker is killed, and a second worker gets the unacknowledged list after the visibility
timeout and stores every heartbeat once. Both run Celery's solo pool, as the heartbeat worker
is deployed (`makima run`, docker-compose.yml): the process killed is the one holding the list.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from app.api import ContractsAPI
from app.db import get_engine, unit_of_work
from app.models import Supervisor, SupervisorHeartbeat, utcnow
from tests.integration.test_worker_loss import worker_is_waiting_on_the_lock
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration


def stored(cid: uuid.UUID) -> list[uuid.UUID]:
    with unit_of_work() as uow:
        return list(
            uow.session.scalars(select(SupervisorHeartbeat.id).where(SupervisorHeartbeat.contract_id == cid))
        )


def test_a_worker_killed_mid_batch_loses_no_heartbeat(tmp_path: Path, make_caller) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = uuid.UUID(str(api.create_contract("killed mid-batch", "simple").id))
    first = start_worker(tmp_path, queues="heartbeats", pool="solo")
    first.wait_ready()
    second: WorkerProcess | None = None
    try:
        task = uuid.uuid4()
        t0 = utcnow()
        api.send_heartbeat(cid, task, "initializing", "plan", timestamp=t0)
        api.flush()
        wait_for(lambda: len(stored(cid)) == 1, what="first heartbeat stored")

        blocker = get_engine().connect()
        tx = blocker.begin()
        blocker.execute(text("SELECT 1 FROM supervisors WHERE task_id = :t FOR UPDATE"), {"t": task})
        others = [uuid.uuid4() for _ in range(50)]
        ids = [
            api.send_heartbeat(cid, task, "working", "plan", progress=50, timestamp=t0 + timedelta(seconds=1))
        ]
        ids += [api.send_heartbeat(cid, t, "working", "plan", timestamp=t0) for t in others]
        api.flush()
        wait_for(worker_is_waiting_on_the_lock, what="batch blocked inside its transaction")
        first.kill()
        tx.rollback()
        blocker.close()
        assert len(stored(cid)) == 1  # nothing of the killed batch was committed

        second = start_worker(tmp_path, queues="heartbeats", pool="solo")
        second.wait_ready()
        wait_for(lambda: len(stored(cid)) == 52, timeout=45, what="redelivered batch stored")
        assert set(ids) <= set(stored(cid))
        with unit_of_work() as uow:
            row = uow.session.get(Supervisor, task)
            assert row is not None and (row.state, row.progress) == ("working", 50)
            assert all(uow.session.get(Supervisor, t) is not None for t in others)
    finally:
        first.stop()
        if second is not None:
            second.stop()
