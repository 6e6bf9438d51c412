"""`GET /api/v1/contracts/dashboard` through the real HTTP app: the counts match the rows.

Two owners each see only their own contracts, supervisors, tasks and worktrees; an admin sees
every owner's. The app records what it would enqueue instead of sending it to a broker.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.config import get_settings
from app.db import unit_of_work
from app.http import create_app
from app.models import Contract, ContractEvent, ContractTask, ContractWorktree, Supervisor, utcnow

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(sender=lambda task, payload, countdown=None: uuid.uuid4().hex)
    with TestClient(app) as c:
        yield c


class User:
    def __init__(self, client: TestClient, token: str, owner: str) -> None:
        self.client = client
        self.owner = owner
        self.headers = {"Authorization": f"Bearer {token}"}

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        resp = self.client.request(method, path, headers=self.headers, json=body)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def create(self, name: str) -> uuid.UUID:
        body = {"name": name, "contractType": "simple", "autoCompleteEnabled": False}
        return uuid.UUID(self.ok("POST", BASE, body, expect=201)["id"])

    def status(self, cid: uuid.UUID, target: str) -> None:
        self.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": target})

    def dashboard(self) -> dict[str, Any]:
        return dict(self.ok("GET", f"{BASE}/dashboard"))


def _user(client: TestClient, make_caller: Any, role: str = "user") -> User:
    owner = f"dash-{uuid.uuid4().hex[:8]}"
    token, _ = make_caller(owner, role)
    return User(client, token, owner)


def _populate(user: User, *, active: int, waiting: int, paused: int, stale: int) -> dict[str, Any]:
    """Contracts in several statuses, some stale, plus supervisors, tasks and worktrees."""
    made: dict[str, list[uuid.UUID]] = {"created": [], "active": [], "waiting": [], "paused": [], "stale": []}
    made["created"].append(user.create(f"{user.owner} fresh"))
    for i in range(active):
        cid = user.create(f"{user.owner} active {i}")
        user.status(cid, "active")
        made["active"].append(cid)
    for i in range(waiting):
        cid = user.create(f"{user.owner} waiting {i}")
        user.status(cid, "active")
        user.status(cid, "waiting_for_input")
        made["waiting"].append(cid)
    for i in range(paused):
        cid = user.create(f"{user.owner} paused {i}")
        user.status(cid, "active")
        user.status(cid, "paused")
        made["paused"].append(cid)
    now = utcnow()
    live = made["active"][0]
    with unit_of_work() as uow:
        s = uow.session
        for cid in made["active"][:stale]:
            s.execute(
                update(Contract).where(Contract.id == cid).values(last_activity_at=now - timedelta(days=1))
            )
            made["stale"].append(cid)
        # One live supervisor with two pending task ids, one dead one; on the first active contract.
        for alive, daemon in ((True, f"{user.owner}-daemon"), (False, f"{user.owner}-gone")):
            s.add(
                Supervisor(
                    task_id=uuid.uuid4(),
                    contract_id=live,
                    incarnation=1,
                    version=1,
                    state="working",
                    phase="plan",
                    current_activity="x",
                    progress=0,
                    pending_task_ids=[str(uuid.uuid4()), str(uuid.uuid4())] if alive else [],
                    last_received_at=now if alive else now - timedelta(hours=1),
                    alive=alive,
                    daemon_id=daemon,
                    host="h",
                )
            )
        for status, is_sup in (("running", False), ("running", False), ("running", True), ("done", False)):
            s.add(
                ContractTask(
                    id=uuid.uuid4(),
                    contract_id=live,
                    name="t",
                    status=status,
                    is_supervisor=is_sup,
                    phase="plan",
                )
            )
        s.add(ContractWorktree(contract_id=live, path="/w/open"))
        s.add(ContractWorktree(contract_id=live, path="/w/done", released_at=now))
    return made


def _rows(owner: str | None) -> dict[str, Any]:
    """What the dashboard must say, counted straight from the rows."""

    def scoped(q: Any) -> Any:
        return q if owner is None else q.where(Contract.owner_id == owner)

    with unit_of_work() as uow:
        s = uow.session
        statuses = dict(
            s.execute(scoped(select(Contract.status, func.count()).group_by(Contract.status))).all()
        )
        phases = dict(
            s.execute(
                scoped(
                    select(Contract.phase, func.count())
                    .where(Contract.status == "active")
                    .group_by(Contract.phase)
                )
            ).all()
        )
        waiting = s.scalar(
            scoped(select(func.count()).select_from(Contract).where(Contract.status == "waiting_for_input"))
        )
        newest = s.scalar(
            scoped(
                select(func.max(ContractEvent.id)).join(Contract, Contract.id == ContractEvent.contract_id)
            )
        )
    return {"statuses": statuses, "phases": phases, "waiting": waiting, "newest": newest}


def _check(board: dict[str, Any], rows: dict[str, Any]) -> None:
    assert {k: v for k, v in board["statusCounts"].items() if v} == rows["statuses"]
    assert board["phaseCounts"] == rows["phases"]
    assert board["waitingCount"] == rows["waiting"]
    assert board["recentEvents"][0]["id"] == rows["newest"]


def test_dashboard_counts_match_the_rows_per_owner_and_for_an_admin(
    client: TestClient, make_caller: Any
) -> None:
    alice, bob = _user(client, make_caller), _user(client, make_caller)
    admin = _user(client, make_caller, "admin")
    made_a = _populate(alice, active=3, waiting=2, paused=1, stale=2)
    made_b = _populate(bob, active=1, waiting=1, paused=0, stale=1)

    for user, made, counts in (
        (alice, made_a, {"created": 1, "active": 3, "waiting_for_input": 2, "paused": 1}),
        (bob, made_b, {"created": 1, "active": 1, "waiting_for_input": 1}),
    ):
        board = user.dashboard()
        _check(board, _rows(user.owner))
        assert {k: v for k, v in board["statusCounts"].items() if v} == counts
        assert set(board["statusCounts"]) >= {"created", "active", "archived"}  # every status, 0 included
        assert board["phaseCounts"] == {"plan": counts["active"]}
        # The one stale rule: active or created and silent past the threshold.
        assert {uuid.UUID(c["id"]) for c in board["staleContracts"]} == set(made["stale"])
        assert board["staleCount"] == len(made["stale"])
        assert all(c["staleDurationSecs"] >= 86_000 for c in board["staleContracts"])
        assert {uuid.UUID(c["id"]) for c in board["waitingForInput"]} == set(made["waiting"])
        assert all(c["waitingFor"] and c["name"].startswith(user.owner) for c in board["waitingForInput"])
        assert all(c["question"] is None for c in board["waitingForInput"])
        # Only its own events, newest first.
        mine = {str(c) for group in made.values() for c in group}
        events = board["recentEvents"]
        assert events and all(e["contractId"] in mine for e in events)
        assert [e["id"] for e in events] == sorted((e["id"] for e in events), reverse=True)
        assert board["resourceUsage"] == {
            "activeSupervisors": 1,
            "runningTasks": 2,
            "pendingTasks": 2,
            "activeDaemons": 1,
            "worktrees": 1,
        }

    # The admin sees every owner's: the rows of the whole table.
    board = admin.dashboard()
    _check(board, _rows(None))
    assert board["staleCount"] >= 3
    usage = board["resourceUsage"]
    assert usage["activeSupervisors"] >= 2 and usage["runningTasks"] >= 4 and usage["worktrees"] >= 2
    with unit_of_work() as uow:
        live_since = utcnow() - timedelta(seconds=get_settings().contracts.heartbeat_timeout_seconds)
        alive = uow.session.scalar(
            select(func.count())
            .select_from(Supervisor)
            .where(Supervisor.alive.is_(True), Supervisor.last_received_at >= live_since)
        )
    assert usage["activeSupervisors"] == alive


def test_dashboard_needs_a_token_and_the_feature_flag(
    client: TestClient, make_caller: Any, monkeypatch: Any
) -> None:
    assert client.get(f"{BASE}/dashboard").status_code == 401
    user = _user(client, make_caller)
    assert user.dashboard()["statusCounts"]["created"] == 0
    monkeypatch.setattr(get_settings().feature_flags, "monitoring_dashboard", False)
    resp = client.get(f"{BASE}/dashboard", headers=user.headers)
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "FEATURE_DISABLED"
