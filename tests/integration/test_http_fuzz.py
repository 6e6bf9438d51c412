"""Bad input is never a 500: random bodies, bytes and queries against every endpoint.

Bodies mix arbitrary JSON with the endpoints' real field names and plausible values, so the
examples reach past the schema into the domain and the database (too-long strings, NUL
characters, huge numbers, deep nesting), where a missing check would surface as a 500.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.auth import Role, create_token
from app.db import unit_of_work
from app.http import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
FUZZ = settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: a red build is a bug, never bad luck
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=300)
    | st.sampled_from(["active", "paused", "failed", "plan", "execute", "plan-document", "x" * 600, "a\x00b"])
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**63, -1, 0, ""])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)

ENDPOINTS: list[tuple[str, str, list[str]]] = [
    ("POST", "", ["name", "contractType", "phaseGuard", "autoCompleteEnabled", "phaseConfig"]),
    ("POST", "/{id}/status", ["targetStatus", "reason", "blocker", "waitingFor"]),
    ("POST", "/{id}/phase", ["phase", "expectedVersion", "confirmed", "force"]),
    ("POST", "/{id}/deliverables/plan-document/complete", ["phase"]),
    ("PUT", "/{id}/auto-complete", ["enabled"]),
    ("POST", "/{id}/tasks/{task}/started", ["taskName", "isSupervisor", "messageId"]),
    ("POST", "/{id}/tasks/{task}/completed", ["taskName", "success", "messageId"]),
    ("POST", "/{id}/worktrees", ["path", "messageId"]),
    ("POST", "/{id}/check-completion", []),
]


def _no_send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
    return ""


@pytest.fixture(scope="module")
def fuzz_client() -> Iterator[tuple[TestClient, dict[str, str], str]]:
    with unit_of_work() as uow:
        token = create_token(uow.session, f"fuzz-{uuid.uuid4().hex[:8]}", Role.USER)
    headers = {"Authorization": f"Bearer {token}"}
    app = create_app(sender=_no_send)
    with TestClient(app, raise_server_exceptions=False) as client:
        made = client.post(BASE, json={"name": "fuzz", "contractType": "simple"}, headers=headers)
        assert made.status_code == 201, made.text
        yield client, headers, made.json()["id"]


def assert_not_a_server_error(resp: Any) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body


@pytest.mark.parametrize(("method", "path", "fields"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
@FUZZ
@given(data=st.data())
def test_random_bodies_never_cause_a_server_error(
    fuzz_client: tuple[TestClient, dict[str, str], str], method: str, path: str, fields: list[str], data: Any
) -> None:
    client, headers, cid = fuzz_client
    keys = st.sampled_from(fields) if fields else st.text(max_size=12)
    body = data.draw(json_values | st.dictionaries(keys, json_values, max_size=len(fields) + 1))
    url = BASE + path.replace("{id}", cid).replace("{task}", str(uuid.uuid4()))
    # Python's json writes NaN/Infinity, which Python's json (the server's) reads back.
    content = json.dumps(body).encode()
    resp = client.request(
        method, url, content=content, headers={**headers, "Content-Type": "application/json"}
    )
    assert_not_a_server_error(resp)
    # Whatever was accepted must still read back cleanly.
    assert client.get(f"{BASE}/{cid}", headers=headers).status_code == 200
    assert client.get(f"{BASE}/{cid}/events", headers=headers).status_code == 200


@FUZZ
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_cause_a_server_error(
    fuzz_client: tuple[TestClient, dict[str, str], str], raw: bytes
) -> None:
    client, headers, cid = fuzz_client
    resp = client.post(
        f"{BASE}/{cid}/phase", content=raw, headers={**headers, "Content-Type": "application/json"}
    )
    assert_not_a_server_error(resp)


@FUZZ
@given(
    params=st.dictionaries(
        st.sampled_from(["status", "phase", "stale", "threshold", "waiting", "limit", "cursor", "after"]),
        st.text(max_size=40) | st.sampled_from(["active,paused", "30m", "true", "0", "501", "2h", "a\x00"]),
        max_size=4,
    ),
    segment=st.text(min_size=1, max_size=40).map(lambda s: quote(s, safe="")),
)
def test_random_queries_and_path_segments_never_cause_a_server_error(
    fuzz_client: tuple[TestClient, dict[str, str], str], params: dict[str, str], segment: str
) -> None:
    client, headers, cid = fuzz_client
    assert_not_a_server_error(client.get(BASE, params=params, headers=headers))
    assert_not_a_server_error(client.get(f"{BASE}/{cid}/events", params=params, headers=headers))
    assert_not_a_server_error(client.get(f"{BASE}/{segment}", headers=headers))
    assert_not_a_server_error(client.post(f"{BASE}/{cid}/deliverables/{segment}/complete", headers=headers))
