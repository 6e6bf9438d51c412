"""Which stored dead letters can be replayed (app.dead_letters.decode_for_replay).

Two shapes are stored: what a worker parks (`{"args", "kwargs"}` plus the task name) and a
raw broker message (Celery protocol 2: `[args, kwargs, embed]`, the task in the headers;
protocol 1: a dict naming the task). Anything else is refused with the reason, never sent.
"""

from __future__ import annotations

import json

import pytest

from app.dead_letters import NotReplayable, Replayable, decode_for_replay

PAYLOAD = {"contractId": "c-1", "taskId": "t-1"}


def test_a_parked_task_replays_with_its_stored_name() -> None:
    body = json.dumps({"args": [PAYLOAD], "kwargs": {}})
    assert decode_for_replay("contracts.task_started", None, body) == Replayable(
        "contracts.task_started", [PAYLOAD], {}
    )


def test_a_protocol_2_message_takes_its_name_from_the_headers() -> None:
    body = json.dumps([[PAYLOAD], {"x": 1}, {"callbacks": None}])
    call = decode_for_replay(None, {"task": "contracts.task_completed"}, body)
    assert call == Replayable("contracts.task_completed", [PAYLOAD], {"x": 1})


def test_a_protocol_1_message_names_its_own_task() -> None:
    body = json.dumps({"task": "contracts.ping", "args": [], "kwargs": {}, "id": "m-1"})
    assert decode_for_replay(None, None, body) == Replayable("contracts.ping", [], {})


@pytest.mark.parametrize(
    ("task_name", "body", "reason"),
    [
        ("contracts.ping", "\x80 not json {", "not JSON"),
        ("contracts.ping", json.dumps({"hello": "world"}), "not a Celery task call"),
        ("contracts.ping", json.dumps({"args": {}, "kwargs": {}}), "args are not a list"),
        (None, json.dumps({"args": [], "kwargs": {}}), "names no task"),
    ],
)
def test_what_does_not_decode_as_a_task_call_is_refused_with_the_reason(
    task_name: str | None, body: str, reason: str
) -> None:
    with pytest.raises(NotReplayable, match=reason):
        decode_for_replay(task_name, None, body)
