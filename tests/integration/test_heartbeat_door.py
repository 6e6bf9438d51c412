"""The heartbeat endpoint's door (`app.http.heartbeat_door`): the usual heartbeat POST is
answered without FastAPI's routing, and every answer is the routed endpoint's, word for word.

Each case is sent to two apps over the same database: the app as served, and the same app
with the door taken out, so the answer FastAPI's route gives is the reference. Both record
what they send to the broker, which must match too.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from kombu.exceptions import OperationalError

from app.api import ContractsAPI
from app.db import unit_of_work
from app.domain.lifecycle import Status
from app.http import create_app
from app.http.heartbeat_door import PATH, HeartbeatDoor
from app.models import Supervisor, utcnow
from tests.integration.helpers import heartbeat_body

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

Sent = list[tuple[str, dict[str, Any]]]


class Recorder:
    """A sender that keeps what it is given (and can be told to fail as a broker down does)."""

    def __init__(self) -> None:
        self.sent: Sent = []
        self.down = False

    def __call__(self, task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        if self.down:
            raise OperationalError("Error 111 connecting to localhost:6379. Connection refused.")
        self.sent.append((task, payload))
        return uuid.uuid4().hex


def without_door(app: Any) -> Any:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HeartbeatDoor]
    return app


@pytest.fixture
def apps() -> Iterator[tuple[TestClient, Recorder, TestClient, Recorder]]:
    """(served app, its sender, the app without its door, that one's sender)."""
    served, routed = Recorder(), Recorder()
    with (
        TestClient(create_app(sender=served), raise_server_exceptions=False) as door,
        TestClient(without_door(create_app(sender=routed)), raise_server_exceptions=False) as route,
    ):
        yield door, served, route, routed


@pytest.fixture
def owner(make_caller: Callable[..., Any]) -> tuple[str, ContractsAPI, uuid.UUID]:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    return token, api, uuid.UUID(str(api.create_contract("door", "simple").id))


def both(
    apps: tuple[TestClient, Recorder, TestClient, Recorder],
    body: Any,
    token: str,
    *,
    path: str = PATH,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """Send `body` to both apps; assert the answers and what was sent are the same; return it."""
    door, served, route, routed = apps
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    answers = [client.post(path, json=body, headers=sent) for client in (door, route)]
    first, second = ((a.status_code, a.json()) for a in answers)
    assert first == second
    assert served.sent == routed.sent
    return first


def test_the_usual_heartbeat_post_is_answered_by_the_door_and_any_other_by_the_route(
    owner: tuple[str, ContractsAPI, uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.http import heartbeat_door, supervisors

    token, _, cid = owner
    through_door: list[Any] = []

    def answer(request: Any, caller: Any, body: Any) -> Any:
        through_door.append(body)
        return supervisors.answer(request, caller, body)

    monkeypatch.setattr(heartbeat_door, "answer", answer)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(sender=Recorder()), raise_server_exceptions=False) as client:
        usual = client.post(PATH, json=heartbeat_body(str(cid)), headers=headers)
        assert usual.status_code == 202, usual.text
        assert len(through_door) == 1
        charset = client.post(
            PATH,
            content=b"[]",
            headers={**headers, "Content-Type": "Application/JSON; charset=utf-8"},
        )
        assert charset.status_code == 202 and len(through_door) == 2
        unusual = [
            client.post(PATH + "?x=1", json=heartbeat_body(str(cid)), headers=headers),
            client.post(PATH, content=b"[]", headers={**headers, "Content-Type": "application/ld+json"}),
            client.post(PATH, content=b"[]", headers={**headers, "Content-Type": "text/plain"}),
            client.post(PATH, content=b"[]", headers=headers),  # no Content-Type
            client.post(PATH, json=7, headers=headers),
            client.post(PATH, json=[], headers={"Authorization": f"bearer  {token}"}),
        ]
    assert len(through_door) == 2, [r.text for r in unusual]
    assert [r.status_code for r in unusual] == [422, 202, 400, 400, 400, 202], [r.text for r in unusual]


def test_accepted_heartbeats_are_answered_and_sent_as_the_route_does(
    apps: tuple[TestClient, Recorder, TestClient, Recorder],
    owner: tuple[str, ContractsAPI, uuid.UUID],
) -> None:
    token, _, cid = owner
    one = heartbeat_body(str(cid), id=str(uuid.uuid4()), daemonId="d-1", host="h-1")
    status, answer = both(apps, one, token)
    assert status == 202 and answer["accepted"] == 1 and answer["results"][0]["id"] == one["id"]

    listed = [heartbeat_body(str(cid)) for _ in range(3)]
    listed[1]["state"] = "dreaming"
    status, answer = both(apps, listed, token)
    assert status == 202 and (answer["accepted"], answer["refused"]) == (2, 1)
    assert answer["results"][1]["field"] == "state"

    status, answer = both(apps, [], token)
    assert status == 202 and answer == {"accepted": 0, "refused": 0, "results": []}
    served, routed = apps[1], apps[3]
    assert len(served.sent) == len(routed.sent) == 2


def test_refusals_read_as_the_routes_do(
    apps: tuple[TestClient, Recorder, TestClient, Recorder],
    owner: tuple[str, ContractsAPI, uuid.UUID],
    make_caller: Callable[..., Any],
) -> None:
    token, api, cid = owner
    status, answer = both(apps, heartbeat_body(str(cid), progress=101), token)
    assert status == 400 and answer["error"]["details"]["field"] == "progress"

    stranger, _ = make_caller(role="supervisor")
    status, answer = both(apps, heartbeat_body(str(cid)), stranger)
    assert status == 404 and answer["error"]["code"] == "CONTRACT_NOT_FOUND"

    status, answer = both(apps, [heartbeat_body(str(cid))] * 1001, token)
    assert status == 400 and answer["error"]["details"]["limit"] == 1000

    status, answer = both(apps, "a heartbeat", token)
    assert status == 400 and answer["error"]["details"]["jsonType"] == "string"

    other = uuid.UUID(str(api.create_contract("holds the task", "simple").id))
    held = uuid.uuid4()
    with unit_of_work() as uow:
        now = utcnow()
        uow.session.add(
            Supervisor(
                task_id=held, contract_id=other, incarnation=1, version=1, state="working", phase="plan",
                current_activity="", progress=0, pending_task_ids=[], heartbeat_id=None, sent_at=now,
                last_received_at=now, alive=True, dead_at=None, daemon_id=None, host=None,
            )
        )  # fmt: skip
    status, answer = both(apps, heartbeat_body(str(cid), taskId=str(held)), token)
    assert status == 400 and answer["error"]["details"]["field"] == "taskId"

    api.change_status(cid, Status.FAILED, reason="abandoned")
    status, answer = both(apps, heartbeat_body(str(cid)), token)
    assert status == 400 and answer["error"]["details"]["field"] == "contractId"
    assert answer["error"]["details"]["status"] == "failed"

    ahead = heartbeat_body(str(cid), timestamp=(utcnow() + timedelta(days=2)).isoformat())
    status, answer = both(apps, ahead, token)
    assert status == 400 and answer["error"]["details"]["field"] == "timestamp"


def test_a_broker_that_is_down_and_a_flag_that_is_off_answer_as_the_route_does(
    apps: tuple[TestClient, Recorder, TestClient, Recorder],
    owner: tuple[str, ContractsAPI, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.config import Settings

    token, _, cid = owner
    apps[1].down = apps[3].down = True
    status, answer = both(apps, heartbeat_body(str(cid)), token)
    assert status == 503 and answer["error"]["code"] == "BROKER_UNAVAILABLE"

    apps[1].down = apps[3].down = False
    off = Settings(feature_flags={"supervisor_heartbeat": False})  # type: ignore[arg-type]
    monkeypatch.setattr("app.http.supervisors.get_settings", lambda: off)
    status, answer = both(apps, heartbeat_body(str(cid)), token)
    assert status == 503 and answer["error"]["code"] == "FEATURE_DISABLED"


def test_a_contract_closed_after_its_supervisor_was_heard_refuses_its_next_heartbeat_at_once(
    apps: tuple[TestClient, Recorder, TestClient, Recorder],
    owner: tuple[str, ContractsAPI, uuid.UUID],
) -> None:
    """The front remembers which task ids it found free of other contracts, never whether a
    contract is open: the heartbeat after the close is refused, not queued for the worker."""
    token, api, cid = owner
    beat = heartbeat_body(str(cid))
    status, _ = both(apps, beat, token)
    assert status == 202
    api.change_status(cid, Status.FAILED, reason="abandoned")
    status, answer = both(apps, {**beat, "timestamp": utcnow().isoformat()}, token)
    assert status == 400 and answer["error"]["details"]["field"] == "contractId"
    assert len(apps[1].sent) == 1


def test_a_task_id_lost_to_another_contract_is_refused_at_the_next_lookup_not_accepted_for_ever(
    owner: tuple[str, ContractsAPI, uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front remembers a task id as free of other contracts only once two lookups found it
    so, and never refreshes that by the heartbeats it lets through: the first heartbeat of a new
    task id can lose the race to another contract's, which the next lookup sees; and a pair
    remembered is asked about again once `VISIBLE_SECONDS` pass, however often it beats."""
    from app import heartbeat_buffer
    from app.config import get_settings
    from app.heartbeat_buffer import http_flush, parse_submission

    _, api, here = owner
    winner = uuid.UUID(str(api.create_contract("won the task id", "simple").id))
    flush = http_flush(None, get_settings(), Recorder())

    def answer(task: uuid.UUID) -> tuple[str | None, str | None]:
        submission = parse_submission(api.caller, [heartbeat_body(str(here), taskId=str(task))])
        flush([submission])
        return submission.results[0].code, submission.results[0].field

    def held_by_winner(task: uuid.UUID) -> None:
        with unit_of_work() as uow:
            now = utcnow()
            uow.session.add(
                Supervisor(
                    task_id=task, contract_id=winner, incarnation=1, version=1, state="working",
                    phase="plan", current_activity="", progress=0, pending_task_ids=[], heartbeat_id=None,
                    sent_at=now, last_received_at=now, alive=True, dead_at=None, daemon_id=None, host=None,
                )
            )  # fmt: skip

    raced = uuid.uuid4()
    assert answer(raced) == (None, None)  # free at the first lookup
    held_by_winner(raced)  # the other contract's first heartbeat is stored meanwhile
    assert answer(raced) == ("VALIDATION_FAILED", "taskId")

    monkeypatch.setattr(heartbeat_buffer, "VISIBLE_SECONDS", 0.6)  # 5 minutes, shortened
    steady = uuid.uuid4()
    assert answer(steady) == (None, None)
    assert answer(steady) == (None, None)  # free twice: remembered
    held_by_winner(steady)  # (a state the worker would refuse; here, to see who is asked)
    remembered = time.monotonic()
    answers = []
    while time.monotonic() - remembered < 1.5:  # beating every 0.1 s, well inside the bound
        answers.append((time.monotonic() - remembered, answer(steady)))
        time.sleep(0.1)
    assert all(code is None for at, (code, _) in answers if at < 0.5), answers  # not asked again
    assert ("VALIDATION_FAILED", "taskId") in [a for at, a in answers if at >= 0.6], answers
