"""`makima simulate` against the real service: `makima run` on this run's PostgreSQL and Redis.

The service is started as an operator starts it (`makima run`: uvicorn, a Celery worker on
the contracts and sweeps queues, a heartbeat worker, a batch worker and beat), pointed at this test
run's database and key prefix, on a free port. The simulator is the real command in its own
process, with no token given: it makes its owner's tokens in the same database, drives 20
supervisors for 15 s with 2 crashes per supervisor per minute, and must reconcile with nothing
lost. What it says it applied is then checked against the database itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.db import unit_of_work
from app.models import Contract, MessageOutcome, Principal, SupervisorHeartbeat, SupervisorQuestion
from tests.integration.live_server import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 90.0


def child_environment(**extra: str) -> dict[str, str]:
    """This run's database and broker settings, without this process's metrics directory
    (a `makima run` clears its counters at start; they must never be this process's)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def makima(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env or child_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`makima run` on this run's PostgreSQL and Redis, on a free port; its base URL."""
    workdir = tmp_path_factory.mktemp("simulate-service")
    port = free_port()
    log = workdir / "run.log"
    env = child_environment(MAKIMA_DATA_DIR=str(workdir / ".makima"), MAKIMA_HTTP_PORT=str(port))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run", "--stop-timeout", "5"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while "makima is running." not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"makima run did not start:\n{log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def test_twenty_supervisors_with_crashes_reconcile_with_nothing_lost(service: str) -> None:
    run = makima(
        "simulate",
        "--supervisors", "20",
        "--duration", "15",
        "--crash-rate", "2",
        "--url", service,
        "--seed", "11",
        "--json",
    )  # fmt: skip
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    report = json.loads(run.stdout)
    print(json.dumps(report["kinds"], indent=1))  # shown with -s, and on failure
    kinds = report["kinds"]
    assert report["lost"] == 0 and report["ok"] is True
    # Every kind was exercised (the service has every endpoint the fleet drives) and none lost.
    assert set(kinds) == {
        "contracts", "reports", "heartbeats", "deliverables", "states",
        "questions", "answers", "answer_commands", "restorations",
    }  # fmt: skip
    for name, row in kinds.items():
        assert row["skipped"] is None, (name, row)
        assert row["sent"] > 0 and row["lost"] == 0, (name, row)
        assert row["applied"] + row["refused"] == row["sent"], (name, row)
    assert kinds["contracts"]["applied"] == 20
    assert report["restorationMismatches"] == []
    assert report["daemons"] == 2
    # Progress lines went to stderr while it ran.
    assert "heartbeats" in run.stderr and "Sending stopped" in run.stderr

    # What the simulator read back is what the database holds for its owner.
    owner = report["owner"]
    assert owner.startswith("sim-")
    with unit_of_work() as uow:
        session = uow.session
        contracts = select(Contract.id).where(Contract.owner_id == owner)
        assert session.scalar(select(func.count()).select_from(contracts.subquery())) == 20
        statuses = set(session.scalars(select(Contract.status).where(Contract.owner_id == owner)))
        assert statuses <= {"active", "waiting_for_input"}  # open: pull-request is never marked
        stored_heartbeats = session.scalar(
            select(func.count())
            .select_from(SupervisorHeartbeat)
            .where(SupervisorHeartbeat.contract_id.in_(contracts))
        )
        assert stored_heartbeats == kinds["heartbeats"]["applied"]  # each id once, resends included
        applied_reports = session.scalar(
            select(func.count())
            .select_from(MessageOutcome)
            .where(MessageOutcome.contract_id.in_(contracts), MessageOutcome.status == "applied")
        )
        assert applied_reports == kinds["reports"]["applied"]
        if kinds["questions"]["skipped"] is None:
            questions = session.scalar(
                select(func.count())
                .select_from(SupervisorQuestion)
                .where(SupervisorQuestion.contract_id.in_(contracts))
            )
            assert questions == kinds["questions"]["applied"]


def test_half_a_pair_of_tokens_is_refused_before_anything_is_sent() -> None:
    run = makima("simulate", "--supervisors", "1", "--duration", "1", "--token", "mk_x", timeout=60)
    assert run.returncode == 2
    assert "give both --token" in run.stderr and "--person-token" in run.stderr


def test_no_service_at_the_url_says_so_and_fails() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = makima(
        "simulate", "--supervisors", "1", "--duration", "1", "--url", url,
        "--token", "mk_a", "--person-token", "mk_b", timeout=60,
    )  # fmt: skip
    assert run.returncode == 1
    assert f"no service answers at {url}" in run.stderr
    assert "makima run" in run.stderr


def test_no_service_and_no_tokens_fails_before_any_owner_or_token_is_made() -> None:
    def simulated_owners() -> int:
        with unit_of_work() as uow:
            return int(
                uow.session.scalar(
                    select(func.count()).select_from(Principal).where(Principal.owner_id.like("sim-%"))
                )
                or 0
            )

    before = simulated_owners()
    url = f"http://127.0.0.1:{free_port()}"
    run = makima("simulate", "--supervisors", "1", "--duration", "1", "--url", url, timeout=60)
    assert run.returncode == 1
    assert f"no service answers at {url}" in run.stderr
    assert "Owner 'sim-" not in run.stderr
    assert simulated_owners() == before
