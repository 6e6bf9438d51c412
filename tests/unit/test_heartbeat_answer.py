"""The 202 answer to a list of heartbeats is written out by hand for speed; it must say exactly
what its response model (`HeartbeatsAccepted`, the documented schema) says."""

from __future__ import annotations

import json
import uuid

from app.heartbeat_buffer import ItemResult
from app.http.supervisors import accepted_body
from app.supervisors import HeartbeatItemResult, HeartbeatsAccepted


def _as_the_model_says(results: list[ItemResult]) -> object:
    items = [
        HeartbeatItemResult(
            index=r.index,
            id=r.id,
            status="accepted" if r.accepted else "refused",
            code=r.code,
            field=r.field,
            message=r.message,
        )
        for r in results
    ]
    accepted = sum(1 for r in results if r.accepted)
    model = HeartbeatsAccepted(accepted=accepted, refused=len(results) - accepted, results=items)
    return json.loads(model.model_dump_json(by_alias=True))


def test_the_answer_is_the_models_own_serialization() -> None:
    results = [
        ItemResult(0, str(uuid.uuid4())),
        ItemResult(
            1,
            None,
            "VALIDATION_FAILED",
            "state",
            "The heartbeat is not valid: state: 'sleepy' is not one of …",
        ),
        ItemResult(2, str(uuid.uuid4()), "CONTRACT_NOT_FOUND", "contractId", "Contract ü does not exist."),
    ]
    assert json.loads(accepted_body(results)) == _as_the_model_says(results)


def test_an_empty_answer_counts_nothing() -> None:
    assert json.loads(accepted_body([])) == {"accepted": 0, "refused": 0, "results": []}


def test_an_answer_whose_message_holds_a_lone_surrogate_is_still_written() -> None:
    """orjson refuses a lone surrogate; the answer falls back to escaping it, as JSON allows."""
    results = [ItemResult(0, None, "VALIDATION_FAILED", "phase", "bad \ud800 text")]
    assert json.loads(accepted_body(results))["results"][0]["message"] == "bad \ud800 text"
