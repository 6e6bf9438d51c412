"""No report is lost for good across worker restarts: what the broker drops, the sender resends.

Real `celery worker` processes on the real Redis and PostgreSQL. Two ways a worker goes away
while daemons keep reporting:

- **warm restarts**, as a deploy does them: SIGTERM to a busy worker's main process, 20 times
  in a row under a steady stream of task reports;
- **stopped mid-fetch**: the worker's main process is SIGSTOPped (its BRPOP already sent),
  reports arrive, and it is SIGKILLed. Redis pops a message into the stopped process's socket
  before kombu can record it as unacknowledged, and nothing can bring that one back.

Either way the sender reconciles through `message_status`: whatever is still `pending`
past a bound is resent with the same id, and in the end every message is `applied` or
`refused`, none `unknown`. Each test prints its counts (lost before resend, resent, final).

Runs in its own module so no other module's worker consumes these messages.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from app.api import ContractsAPI
from app.domain.lifecycle import Status
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

pytestmark = pytest.mark.integration

RESTARTS = 20
REPORT_INTERVAL = 0.02  # a steady stream: ~50 reports/s while workers come and go
# Past this long after the last report, `pending` means lost: well beyond the time a live
# worker needs, and beyond the visibility timeout (6 s in tests) after which Redis hands back
# what a dead worker had recorded as unacknowledged.
PENDING_BOUND = 10.0


def active_contract(api: ContractsAPI) -> uuid.UUID:
    cid = uuid.UUID(str(api.create_contract("restarts", "simple").id))
    api.change_status(cid, Status.ACTIVE)
    return cid


def statuses(api: ContractsAPI, ids: list[str]) -> Counter[str]:
    return Counter(api.message_status(i).status.value for i in ids)


def reconcile(api: ContractsAPI, ids: list[str], label: str) -> dict[str, int]:
    """What a careful sender does: wait a bound, resend what is still pending, wait again."""
    deadline = time.monotonic() + PENDING_BOUND
    while time.monotonic() < deadline and statuses(api, ids)["pending"]:
        time.sleep(0.25)
    before = statuses(api, ids)
    lost = [i for i in ids if api.message_status(i).status.value == "pending"]
    resent = sum(api.resend(i).resent for i in lost)
    wait_for(lambda: statuses(api, ids)["pending"] == 0, timeout=30, what="resent messages applied")
    final = statuses(api, ids)
    counts = {
        "sent": len(ids),
        "applied before resend": before["applied"],
        "lost before resend": len(lost),
        "resent": resent,
        "final applied": final["applied"],
        "final refused": final["refused"],
        "final unknown": final["unknown"],
    }
    print(f"\n{label}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def test_twenty_warm_restarts_under_load_lose_nothing_once_the_sender_reconciles(
    tmp_path: Path, make_caller: Any
) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = active_contract(api)
    ids: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            ids.append(api.report_task_completed(cid, uuid.uuid4(), "steady", success=True))
            time.sleep(REPORT_INTERVAL)

    workers: list[WorkerProcess] = [start_worker(tmp_path, queues="contracts")]
    workers[0].wait_ready()
    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    try:
        for _ in range(RESTARTS):
            busy = workers[-1]
            # The next worker starts while this one works through the stream...
            successor = start_worker(tmp_path, queues="contracts")
            successor.wait_ready()
            # ...then this one gets the deploy's SIGTERM (warm shutdown) while busy.
            os.kill(busy.proc.pid, signal.SIGTERM)
            workers.append(successor)
        stop.set()
        sender.join(timeout=10)
        for worker in workers[:-1]:
            worker.proc.wait(timeout=30)
            assert worker.proc.returncode == 0, worker.log()[-2000:]
        counts = reconcile(api, list(ids), f"{RESTARTS} warm restarts")
    finally:
        stop.set()
        for worker in workers:
            worker.stop()
    assert counts["final unknown"] == 0
    assert counts["final applied"] + counts["final refused"] == counts["sent"] > RESTARTS * 5
    assert [e.type for e in api.events(cid, limit=500).events].count("task_completed") <= counts["sent"]


def test_a_worker_stopped_mid_fetch_loses_what_it_popped_and_the_sender_resends_it(
    tmp_path: Path, make_caller: Any
) -> None:
    """SIGSTOP the main process (its BRPOP is in flight), send 20, SIGKILL, start another."""
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = active_contract(api)
    stopped = start_worker(tmp_path, queues="contracts")
    stopped.wait_ready()
    successor: WorkerProcess | None = None
    try:
        time.sleep(0.5)  # idle: the consumer sits in BRPOP
        os.kill(stopped.proc.pid, signal.SIGSTOP)
        ids = [api.report_task_completed(cid, uuid.uuid4(), "frozen", success=True) for _ in range(20)]
        time.sleep(0.5)
        stopped.kill()
        successor = start_worker(tmp_path, queues="contracts")
        successor.wait_ready()
        counts = reconcile(api, ids, "stopped mid-fetch, then killed")
    finally:
        stopped.kill()
        if successor is not None:
            successor.stop()
    assert counts["final unknown"] == 0
    assert counts["final applied"] == 20
    events = [e.type for e in api.events(cid, limit=500).events]
    assert events.count("task_completed") == 20  # resent or not, each applied once
