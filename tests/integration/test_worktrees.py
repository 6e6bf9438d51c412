"""Worktrees per daemon, end to end: reports over HTTP and the API module, a real worker, the
completion flow, the cleanup of orphans (beat sweep and admin endpoint), and the counts.

A daemon reports the worktrees it creates and removes, naming itself; when a contract closes,
the daemon that holds each worktree is asked (on its own queue) to remove it, and asked again
at most once per `[worktrees] cleanup_interval_seconds` until it says it did.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Interval, func, literal, select, update

from app.api import ContractsAPI
from app.auth import Role, create_token
from app.broker import get_celery
from app.config import get_settings
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.http import create_app
from app.models import ContractWorktree, DaemonCommand
from app.queues import TaskName
from tests.integration.helpers import commands_received, contract_row, count_events, new_contract
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
INTERVAL = timedelta(seconds=get_settings().worktrees.cleanup_interval_seconds)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(
        tmp_path_factory.mktemp("worktrees"), queues="contracts,heartbeats,sweeps", concurrency=2
    )
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


class Caller:
    """One principal over HTTP (and the same token through the API module)."""

    def __init__(self, client: TestClient, owner: str, role: str) -> None:
        with unit_of_work() as uow:
            self.token = create_token(uow.session, owner, Role(role))
        self.client = client
        self.owner = owner
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.api = ContractsAPI(self.token)

    def call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        return self.client.request(method, path, headers=self.headers, json=body, params=params or None)

    def ok(self, method: str, path: str, body: Any = None, expect: int = 200, **params: Any) -> Any:
        resp = self.call(method, path, body, **params)
        assert resp.status_code == expect, resp.text
        return resp.json()

    def created(self, cid: uuid.UUID, path: str, daemon_id: str | None = None, **extra: Any) -> str:
        body = {"path": path, **({"daemonId": daemon_id} if daemon_id else {}), **extra}
        return str(self.ok("POST", f"{BASE}/{cid}/worktrees", body, expect=202)["messageId"])

    def removed(self, cid: uuid.UUID, path: str, daemon_id: str | None = None, **extra: Any) -> str:
        body = {"path": path, **({"daemonId": daemon_id} if daemon_id else {}), **extra}
        return str(self.ok("POST", f"{BASE}/{cid}/worktrees/removed", body, expect=202)["messageId"])

    def worktrees(self, cid: uuid.UUID) -> dict[str, Any]:
        return dict(self.ok("GET", f"{BASE}/{cid}/worktrees"))

    def settled(self, message_id: str) -> dict[str, Any]:
        return dict(
            wait_for(
                lambda: (s := self.ok("GET", f"/api/v1/messages/{message_id}"))["status"] != "pending" and s,
                what=f"message {message_id} applied or refused",
            )
        )

    def applied(self, *message_ids: str) -> None:
        for message_id in message_ids:
            status = self.settled(message_id)
            assert status["status"] == "applied", status


def person_and_daemon(client: TestClient) -> tuple[Caller, Caller]:
    owner = f"wt-{uuid.uuid4().hex[:8]}"
    return Caller(client, owner, "user"), Caller(client, owner, "supervisor")


def daemons(n: int) -> list[str]:
    return [f"wt-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]


def by_path(listing: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["path"]: w for w in listing["worktrees"]}


def commands_about(worktree_ids: list[str]) -> dict[str, int]:
    """How many remove_worktree commands were written for each of these worktrees."""
    with unit_of_work() as uow:
        rows = uow.session.execute(
            select(DaemonCommand.payload["worktreeId"].as_string(), func.count())
            .where(DaemonCommand.command == "remove_worktree")
            .group_by(DaemonCommand.payload["worktreeId"].as_string())
        ).all()
    found = {str(k): int(n) for k, n in rows}
    return {w: found.get(w, 0) for w in worktree_ids}


def sweep(worker: WorkerProcess, times: int = 1) -> None:
    """What beat does, `times` at once, and wait until every run finished."""

    def finished() -> int:
        return sum(
            1
            for line in worker.log().splitlines()
            if f"{TaskName.CLEANUP_WORKTREES.value}[" in line and "succeeded" in line
        )

    before = finished()
    for _ in range(times):
        get_celery().send_task(TaskName.CLEANUP_WORKTREES.value, queue="sweeps")
    wait_for(lambda: finished() >= before + times, what=f"{times} cleanup sweep(s)")


def closed_with_worktrees(
    person: Caller, daemon: Caller, paths: dict[str, str]
) -> tuple[uuid.UUID, dict[str, str]]:
    """A contract that failed holding these worktrees (path → daemon); returns their ids."""
    cid = uuid.UUID(person.ok("POST", BASE, {"name": "orphans", "contractType": "simple"}, expect=201)["id"])
    person.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": "active"})
    daemon.applied(*(daemon.created(cid, path, d) for path, d in paths.items()))
    person.ok("POST", f"{BASE}/{cid}/status", {"targetStatus": "failed", "reason": "the run broke"})
    return cid, {w["path"]: w["id"] for w in person.worktrees(cid)["worktrees"]}


# --- reporting, listing, counting -------------------------------------------------------------


def test_worktrees_are_reported_per_daemon_and_counted_per_contract_daemon_and_fleet(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    d1, d2 = daemons(2)
    cid = new_contract(daemon.api)
    daemon.applied(
        daemon.created(cid, "/srv/wt/a", d1),
        daemon.created(cid, "/srv/wt/b", d2),
        daemon.created(cid, "/srv/wt/c"),  # a daemon that does not name itself
    )
    # The same path again, now naming its daemon: one worktree, whose daemon is now known.
    again = daemon.created(cid, "/srv/wt/c", d1)
    daemon.applied(again)

    listing = person.worktrees(cid)
    rows = by_path(listing)
    assert {p: (w["daemonId"], w["state"]) for p, w in rows.items()} == {
        "/srv/wt/a": (d1, "open"),
        "/srv/wt/b": (d2, "open"),
        "/srv/wt/c": (d1, "open"),
    }
    assert listing["counts"] == {"open": 3, "released": 0, "removed": 0}
    assert count_events(cid, "worktree_created") == 3

    # Removed, with a message id; the same message again changes nothing more.
    message_id = f"rm-{uuid.uuid4()}"
    daemon.applied(daemon.removed(cid, "/srv/wt/a", d1, messageId=message_id))
    daemon.applied(daemon.removed(cid, "/srv/wt/a", d1, messageId=message_id))
    assert daemon.api.resend(message_id).status == "applied"
    assert count_events(cid, "worktree_removed") == 1
    row = by_path(person.worktrees(cid))["/srv/wt/a"]
    assert row["state"] == "removed" and row["removedAt"] is not None
    # Said again under another id: already removed, recorded once.
    daemon.applied(daemon.removed(cid, "/srv/wt/a", d1))
    assert count_events(cid, "worktree_removed") == 1
    assert person.worktrees(cid)["counts"] == {"open": 2, "released": 0, "removed": 1}

    # Per daemon: these daemons sent no heartbeat, and are listed by their worktrees.
    listed = {d["daemonId"]: d for d in person.ok("GET", "/api/v1/daemons")["daemons"]}
    assert listed[d1]["worktrees"] == {"open": 1, "released": 0, "removed": 1}
    assert listed[d2]["worktrees"] == {"open": 1, "released": 0, "removed": 0}
    assert listed[d1]["lastSeenAt"] is None and listed[d1]["alive"] is False
    assert listed[d1]["supervisors"] == 0

    # The fleet: the dashboard's total for this owner (resourceUsage counts the open ones).
    board = person.ok("GET", f"{BASE}/dashboard")
    assert board["worktrees"] == {"open": 2, "released": 0, "removed": 1}
    assert board["resourceUsage"]["worktrees"] == 2

    # Another owner sees none of it.
    stranger = Caller(client, f"stranger-{uuid.uuid4().hex[:8]}", "supervisor")
    for resp in (
        stranger.call("GET", f"{BASE}/{cid}/worktrees"),
        stranger.call("POST", f"{BASE}/{cid}/worktrees/removed", {"path": "/srv/wt/b"}),
    ):
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "CONTRACT_NOT_FOUND", resp.text
    assert all(d["daemonId"] not in (d1, d2) for d in stranger.ok("GET", "/api/v1/daemons")["daemons"])
    assert stranger.ok("GET", f"{BASE}/dashboard")["worktrees"] == {"open": 0, "released": 0, "removed": 0}


def test_a_removal_of_a_path_never_reported_is_recorded_and_an_ambiguous_one_is_refused(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    d1, d2 = daemons(2)
    cid = new_contract(daemon.api)
    # A removal whose `created` was lost: recorded as removed all the same.
    daemon.applied(daemon.removed(cid, "/srv/wt/lost", d1))
    lost = by_path(person.worktrees(cid))["/srv/wt/lost"]
    assert (lost["daemonId"], lost["state"]) == (d1, "removed")
    with unit_of_work() as uow:
        from app.models import ContractEvent

        payload = uow.session.scalars(
            select(ContractEvent.payload).where(
                ContractEvent.contract_id == cid, ContractEvent.type == "worktree_removed"
            )
        ).one()
    assert payload["known"] is False and payload["path"] == "/srv/wt/lost"

    # Two daemons (two hosts) each hold /srv/same: a removal must say whose.
    daemon.applied(daemon.created(cid, "/srv/same", d1), daemon.created(cid, "/srv/same", d2))
    refused = daemon.settled(daemon.removed(cid, "/srv/same"))
    assert refused["status"] == "refused" and refused["error"]["code"] == "VALIDATION_FAILED"
    assert d1 in refused["error"]["message"] and d2 in refused["error"]["message"]
    daemon.applied(daemon.removed(cid, "/srv/same", d2))
    states = {(w["path"], w["daemonId"]): w["state"] for w in person.worktrees(cid)["worktrees"]}
    assert states[("/srv/same", d1)] == "open" and states[("/srv/same", d2)] == "removed"


def test_bad_worktree_reports_are_refused_naming_the_field(client: TestClient) -> None:
    person, daemon = person_and_daemon(client)
    cid = person.ok("POST", BASE, {"name": "bad", "contractType": "simple"}, expect=201)["id"]
    for body, field in (
        ({"path": ""}, "path"),
        ({"path": "/a", "daemonId": "x" * 201}, "daemonId"),
        ({"path": "/a", "daemonId": ""}, "daemonId"),
        ({"path": "/a", "host": "h"}, "host"),
    ):
        for suffix in ("", "/removed"):
            resp = daemon.call("POST", f"{BASE}/{cid}/worktrees{suffix}", body)
            assert resp.status_code == 422, resp.text
            assert [p["field"] for p in resp.json()["error"]["details"]["problems"]] == [field], resp.text
    blank = daemon.call("POST", f"{BASE}/{cid}/worktrees", {"path": "/a", "daemonId": "   "})
    assert blank.status_code == 400 and "daemonId" in blank.json()["error"]["message"], blank.text


# The refusals that hold for created reports only (`check_worktree_path(one_spelling=False)`).
CREATED_ONLY = ("'.' segments", "separator", "below the root", "invisible, bidirectional or replacement")


@pytest.mark.parametrize(
    ("path", "words"),
    [
        (" ", "path must not be blank"),
        ("\n", "path must not be blank"),
        ("\u3000\t", "path must not be blank"),
        ("/srv/wt/a\nb", "must not contain NUL or control characters (found U+000A)"),
        ("/srv/wt/\x1b[2J", "must not contain NUL or control characters (found U+001B)"),
        ("../../etc/passwd", "path must be an absolute path"),
        ("srv/wt/a", "path must be an absolute path"),
        ("/srv/wt/../../etc/passwd", "must not contain '..' segments"),
        ("C:\\wt\\..\\Windows", "must not contain '..' segments"),
        ("/srv/./wt", "must not contain '.' segments"),
        ("C:\\wt\\.", "must not contain '.' segments"),
        ("/srv//wt", "must not repeat a separator"),
        ("C:\\wt\\\\x", "must not repeat a separator"),
        ("/srv/wt/", "must not end with a separator"),
        ("C:/wt/", "must not end with a separator"),
        ("/", "must name a directory below the root"),
        ("/srv/\u202ewt", "invisible, bidirectional or replacement characters (found U+202E)"),
        ("/srv/w\u200bt", "invisible, bidirectional or replacement characters (found U+200B)"),
        ("/srv/wt\u2028x", "invisible, bidirectional or replacement characters (found U+2028)"),
        ("/srv/\ufffd", "invisible, bidirectional or replacement characters (found U+FFFD)"),
        ("/srv/\ufeffx", "invisible, bidirectional or replacement characters (found U+FEFF)"),
        ("C:\\", "must name a directory below the root"),
    ],
)
def test_a_worktree_path_is_absolute_without_dot_dot_or_control_characters_and_not_blank(
    client: TestClient, path: str, words: str
) -> None:
    """The path goes back to a daemon as it is, in remove_worktree: it must mean one place, and
    have one spelling (`/srv/wt/`, `/srv//wt` and `/srv/./wt` would each be another worktree)."""
    person, daemon = person_and_daemon(client)
    cid = person.ok("POST", BASE, {"name": "paths", "contractType": "simple"}, expect=201)["id"]
    # The spelling rules hold for what a daemon will be told to remove: created worktrees. A
    # removal report keeps the rest, so a worktree recorded before them can still be removed.
    spelling = any(w in words for w in CREATED_ONLY)
    for suffix in ("",) if spelling else ("", "/removed"):
        resp = daemon.call("POST", f"{BASE}/{cid}/worktrees{suffix}", {"path": path, "daemonId": "d-1"})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == "VALIDATION_FAILED" and error["details"]["field"] == "path"
        assert words in error["message"], error["message"]
    assert person.worktrees(uuid.UUID(cid))["worktrees"] == []


def test_absolute_posix_and_windows_paths_are_kept_exactly_as_sent(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    cid = uuid.UUID(person.ok("POST", BASE, {"name": "paths", "contractType": "simple"}, expect=201)["id"])
    sent = ["/srv/wt/a b/.c", "C:\\wt\\x", "D:/wt/y..z"]
    daemon.applied(*(daemon.created(cid, path, "d-1") for path in sent))
    assert sorted(by_path(person.worktrees(cid))) == sorted(sent)


def test_a_worktree_recorded_before_the_spelling_rules_can_still_be_reported_removed(
    worker: WorkerProcess, client: TestClient
) -> None:
    """`/srv/old/` was accepted once; the daemon reports its removal under that same path."""
    person, daemon = person_and_daemon(client)
    cid = uuid.UUID(person.ok("POST", BASE, {"name": "paths", "contractType": "simple"}, expect=201)["id"])
    with unit_of_work() as uow:
        uow.session.add(ContractWorktree(contract_id=cid, path="/srv/old/", daemon_id="d-1"))
    daemon.applied(daemon.removed(cid, "/srv/old/", "d-1"))
    listed = by_path(person.worktrees(cid))
    assert list(listed) == ["/srv/old/"] and listed["/srv/old/"]["removedAt"] is not None, listed


# --- completion and the daemon holding each worktree -----------------------------------------


def test_completion_asks_the_daemon_that_reported_each_worktree_to_remove_it(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    runs_supervisor, holds_a, holds_b = daemons(3)
    api = daemon.api
    cid = api.create_contract("completes", "simple").id
    supervisor = uuid.uuid4()
    api.report_task_started(cid, supervisor, "supervisor", is_supervisor=True)
    api.send_heartbeat(cid, supervisor, "working", "plan", daemon_id=runs_supervisor)
    api.flush()
    wait_for(lambda: contract_row(cid).status == Status.ACTIVE.value, what="active")
    daemon.applied(
        api.report_worktree_created(cid, "/srv/wt/a", daemon_id=holds_a),
        api.report_worktree_created(cid, "/srv/wt/b", daemon_id=holds_b),
    )
    from app.models import Supervisor

    def heard() -> bool:
        with unit_of_work() as uow:
            row = uow.session.get(Supervisor, supervisor)
            return row is not None and row.daemon_id == runs_supervisor

    wait_for(heard, what="the supervisor's daemon heard")

    api.mark_deliverable(cid, "plan-document")
    wait_for(lambda: contract_row(cid).phase == "execute", what="execute")
    task = uuid.uuid4()
    api.report_task_started(cid, task, "implement")
    api.mark_deliverable(cid, "pull-request")
    api.report_task_completed(cid, task, "implement", success=True)
    wait_for(lambda: contract_row(cid).status == Status.COMPLETED.value, what="completed")

    ids = {w["path"]: w["id"] for w in person.worktrees(cid)["worktrees"]}
    for holder, path in ((holds_a, "/srv/wt/a"), (holds_b, "/srv/wt/b")):
        got = wait_for(lambda h=holder: commands_received(h, owner=daemon.owner), what=f"{holder}'s queue")
        assert [(c["command"], c["payload"]["worktreeId"], c["payload"]["path"]) for c in got] == [
            ("remove_worktree", ids[path], path)
        ]
    stop = wait_for(
        lambda: commands_received(runs_supervisor, owner=daemon.owner), what="the supervisor's daemon's queue"
    )
    assert [(c["command"], c["payload"]["taskId"]) for c in stop] == [("stop_supervisor", str(supervisor))]
    listing = person.worktrees(cid)
    assert listing["counts"] == {"open": 0, "released": 2, "removed": 0}
    assert all(w["releasedAt"] for w in listing["worktrees"])

    # The daemon removes it after completion: accepted on the closed contract.
    daemon.applied(daemon.removed(cid, "/srv/wt/a", holds_a))
    assert person.worktrees(cid)["counts"] == {"open": 0, "released": 1, "removed": 1}
    # A new worktree on a closed contract is still refused at once.
    late = daemon.call("POST", f"{BASE}/{cid}/worktrees", {"path": "/srv/wt/late", "daemonId": holds_a})
    assert late.status_code == 400 and late.json()["error"]["code"] == "VALIDATION_FAILED"


def test_a_worktree_reported_with_another_owners_daemon_id_is_never_sent_to_that_owners_daemon(
    worker: WorkerProcess, client: TestClient
) -> None:
    """Daemon ids are chosen by clients: Alice naming Bob's daemon id on her own contract asks
    only a daemon of hers of that name; Bob's daemon's queue never carries her command."""
    alice_person, alice = person_and_daemon(client)
    _, bob = person_and_daemon(client)
    bobs_daemon = f"bob-gpu-{uuid.uuid4().hex[:8]}"
    bobs_cid = new_contract(bob.api)
    bob.applied(bob.created(bobs_cid, "/home/bob/precious-repo", bobs_daemon))

    _, ids = closed_with_worktrees(alice_person, alice, {"/home/bob/precious-repo": bobs_daemon})
    sweep(worker)

    got = wait_for(lambda: commands_received(bobs_daemon, owner=alice.owner), what="alice's daemon's queue")
    assert [(c["command"], c["payload"]["worktreeId"]) for c in got] == [
        ("remove_worktree", ids["/home/bob/precious-repo"])
    ]
    assert commands_received(bobs_daemon, owner=bob.owner) == []
    assert commands_received(None, owner=bob.owner) == []


# --- the cleanup of orphans -------------------------------------------------------------------


def test_the_cleanup_sweep_asks_each_orphan_once_per_interval_until_it_is_removed(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    w1, w2 = daemons(2)
    cid, ids = closed_with_worktrees(person, daemon, {"/srv/o/a": w1, "/srv/o/b": w2, "/srv/o/c": w1})
    daemon.applied(daemon.removed(cid, "/srv/o/c", w1))  # removed before anyone asked
    live = new_contract(daemon.api)  # an open contract's worktree is no orphan
    daemon.applied(daemon.created(live, "/srv/o/live", w1))
    live_id = person.worktrees(live)["worktrees"][0]["id"]
    mine = [ids["/srv/o/a"], ids["/srv/o/b"], ids["/srv/o/c"], live_id]

    sweep(worker, times=2)  # two at once, as two beats by mistake would
    assert commands_about(mine) == dict(zip(mine, (1, 1, 0, 0), strict=True))
    wait_for(lambda: commands_received(w2, owner=daemon.owner), what=f"{w2}'s queue")
    assert [c["payload"]["worktreeId"] for c in commands_received(w2, owner=daemon.owner)] == [
        ids["/srv/o/b"]
    ]
    wait_for(lambda: commands_received(w1, owner=daemon.owner), what=f"{w1}'s queue")
    assert [c["payload"]["worktreeId"] for c in commands_received(w1, owner=daemon.owner)] == [
        ids["/srv/o/a"]
    ]
    assert person.worktrees(cid)["counts"] == {"open": 0, "released": 2, "removed": 1}

    sweep(worker)  # within the interval: nothing is asked again
    assert commands_about(mine) == dict(zip(mine, (1, 1, 0, 0), strict=True))

    # An interval passes (as if an hour went by); meanwhile w1 removed its worktree.
    with unit_of_work() as uow:
        uow.session.execute(
            update(ContractWorktree)
            .where(ContractWorktree.id.in_([uuid.UUID(ids["/srv/o/a"]), uuid.UUID(ids["/srv/o/b"])]))
            .values(
                released_at=ContractWorktree.released_at
                - literal(INTERVAL + timedelta(seconds=1), Interval())
            )
        )
    daemon.applied(daemon.removed(cid, "/srv/o/a", w1))
    sweep(worker)
    assert commands_about(mine) == dict(zip(mine, (1, 2, 0, 0), strict=True))
    wait_for(lambda: len(commands_received(w2, owner=daemon.owner)) == 2, what=f"{w2} asked again")
    assert len(commands_received(w1, owner=daemon.owner)) == 1


def test_the_cleanup_endpoint_is_an_admins_and_answers_what_it_asked(
    worker: WorkerProcess, client: TestClient
) -> None:
    person, daemon = person_and_daemon(client)
    admin = Caller(client, "operators", "admin")
    (w3,) = daemons(1)
    _, ids = closed_with_worktrees(person, daemon, {"/srv/e/1": w3, "/srv/e/2": w3})
    mine = set(ids.values())

    for refused in (person, daemon):
        resp = refused.call("POST", "/api/v1/worktrees/cleanup")
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "FORBIDDEN", resp.text
        assert "clean up worktrees" in resp.json()["error"]["message"]

    one = admin.ok("POST", "/api/v1/worktrees/cleanup", dryRun="true", limit=1)
    assert one["asked"] == 1 and len(one["worktrees"]) == 1 and one["more"] is True
    dry = admin.ok("POST", "/api/v1/worktrees/cleanup", dryRun="true")
    planned = [w for w in dry["worktrees"] if w["worktreeId"] in mine]
    assert dry["dryRun"] is True and len(planned) == 2
    assert all(
        w["commandId"] is None and w["daemonId"] == w3 and w["contractStatus"] == "failed" for w in planned
    )
    assert {"daemonId": w3, "worktrees": 2} in dry["daemons"]
    assert commands_about(sorted(mine)) == dict.fromkeys(sorted(mine), 0)

    done = admin.ok("POST", "/api/v1/worktrees/cleanup", dryRun="false")
    asked = [w for w in done["worktrees"] if w["worktreeId"] in mine]
    assert done["dryRun"] is False and len(asked) == 2 and all(w["commandId"] for w in asked)
    assert {"daemonId": w3, "worktrees": 2} in done["daemons"]
    assert done["asked"] == len(done["worktrees"]) and done["intervalSeconds"] == INTERVAL.total_seconds()
    got = wait_for(
        lambda: (
            len(commands_received(w3, owner=daemon.owner)) == 2 and commands_received(w3, owner=daemon.owner)
        ),
        what=f"{w3}'s queue",
    )
    assert sorted(c["commandId"] for c in got) == sorted(w["commandId"] for w in asked)

    again = admin.ok("POST", "/api/v1/worktrees/cleanup")  # safe to repeat: nothing due for these
    assert not [w for w in again["worktrees"] if w["worktreeId"] in mine]
    assert commands_about(sorted(mine)) == dict.fromkeys(sorted(mine), 1)

    for limit in (0, 5001):
        resp = admin.call("POST", "/api/v1/worktrees/cleanup", limit=limit)
        assert resp.status_code == 422, resp.text
