"""`/metrics` with two real worker processes: the counters add up across processes, the gauges
match the rows (issue 13)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import SADeprecationWarning

from app.api import ContractsAPI
from app.db import get_engine, unit_of_work
from app.domain.lifecycle import Status
from app.http.application import create_app
from app.metrics import DatabaseCollector
from app.models import Contract, ContractEvent
from tests.integration.helpers import new_contract
from tests.integration.worker_processes import start_worker, wait_for

pytestmark = pytest.mark.integration


def _scrape(client: TestClient) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    values: dict[str, float] = {}
    for line in response.text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def _count(rows: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in rows.items() if k.startswith(prefix))


def test_counters_add_up_over_two_worker_processes_and_gauges_match_rows(
    tmp_path: Path, make_caller: Any
) -> None:
    workers = [start_worker(tmp_path, concurrency=1) for _ in range(2)]
    try:
        for w in workers:
            w.wait_ready()
        client = TestClient(create_app())
        before = _scrape(client)
        _token, caller = make_caller()
        api = ContractsAPI(caller=caller)
        contracts = [new_contract(api, name=f"m{i}") for i in range(6)]  # activated by the workers
        for cid in contracts[:3]:
            api.change_status(cid, Status.PAUSED)
        with unit_of_work() as uow:
            rows = uow.session.execute(select(Contract.status, func.count()).group_by(Contract.status)).all()
            by_status = {str(status): int(count) for status, count in rows}
            started = uow.session.scalar(
                select(func.count())
                .select_from(ContractEvent)
                .where(ContractEvent.contract_id.in_(contracts), ContractEvent.type == "task_spawned")
            )
        after = wait_for(
            lambda: (
                s
                if _count(s := _scrape(client), 'contract_events_total{type="task_spawned"}')
                - _count(before, 'contract_events_total{type="task_spawned"}')
                >= started
                else None
            ),
            what="task_spawned counted",
        )
        for status, count in by_status.items():
            assert after[f'contracts_by_status{{status="{status}"}}'] == count
        assert after['contracts_by_status{status="archived"}'] == by_status.get("archived", 0)
        delta = _count(after, 'contract_events_total{type="status_changed"}') - _count(
            before, 'contract_events_total{type="status_changed"}'
        )
        assert delta == 6 + 3  # six activations in the workers, three pauses here
        assert "contracts_stale_count" in after
        # the activations were counted in the workers' pool processes, the pauses in this one
        assert all("succeeded" in w.log() for w in workers) or any("succeeded" in w.log() for w in workers)
    finally:
        for w in workers:
            w.stop()


def test_the_status_gauge_counts_the_rows_through_no_deprecated_sqlalchemy_call(make_caller: Any) -> None:
    """`contracts_by_status` reads its counts as plain rows: `Result.tuples()`, which it once
    used, is deprecated since SQLAlchemy 2.1 and warned on every scrape."""
    _token, caller = make_caller()
    ContractsAPI(caller=caller).create_contract("gauged", "simple")
    with unit_of_work() as uow:
        rows = uow.session.execute(select(Contract.status, func.count()).group_by(Contract.status)).all()
    by_status = {str(status): int(count) for status, count in rows}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SADeprecationWarning)
        families = list(DatabaseCollector(get_engine()).collect())
    (gauge,) = [f for f in families if f.name == "contracts_by_status"]
    counted = {s.labels["status"]: s.value for s in gauge.samples}
    assert counted == {status.value: by_status.get(status.value, 0) for status in Status}
    assert counted[Status.CREATED.value] >= 1
