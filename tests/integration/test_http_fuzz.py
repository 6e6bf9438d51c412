"""Bad input is never a 500: random bodies, bytes and queries against every endpoint.

Bodies mix arbitrary JSON with the endpoints' real field names and plausible values, so the
examples reach past the schema into the domain and the database (too-long strings, NUL
characters, huge numbers, deep nesting), where a missing check would surface as a 500.

Three sources of examples, all with a fixed number of examples and derandomized, so a red
build is a bug and never bad luck, and all against the real PostgreSQL with a sender that
needs no broker:

- schemathesis over `/openapi.json`: every published operation, authenticated, with the
  fuzz owner's real contract id in the path, in positive and negative modes;
- Hypothesis strategies of our own for what a schema cannot describe: lone surrogates, NUL,
  right-to-left marks, emoji, very long strings, nesting far past the limit, 1e309, 2**64,
  NaN/Infinity literals, bodies over the 1 MiB cap;
- raw bytes and random query strings and path segments.

Every answer must be below 500, and every error in the `{"error": {code, message, details}}`
shape.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

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

MIB = 1024 * 1024

# Strings a careless or hostile client sends: half characters, NUL, bidi controls, emoji
# sequences, combining marks, a BOM, and strings far longer than any field allows.
edge_strings = st.sampled_from(
    [
        "\ud800",
        "\udfff",
        "a\udc00b",
        "\ud83d",
        "\x00",
        "a\x00b",
        "\u202eevil\u202c",
        "\u200f\u0645\u0631\u062d\u0628\u0627",  # RLM + Arabic
        "\u05e9\u05dc\u05d5\u05dd",  # Hebrew
        "😀",
        "👩\u200d👩\u200d👧",
        "e\u0301\u0301\u0301",
        "\ufeff",
        "\uffff",
        "x" * 600,
        "y" * 100_000,
    ]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=300)
    | edge_strings
    | st.sampled_from(["active", "paused", "failed", "plan", "execute", "plan-document", "x" * 600, "a\x00b"])
    | st.sampled_from([float("inf"), float("-inf"), float("nan"), 2**63, 2**64, -1, 0, "", 10**400])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12) | edge_strings, inner, max_size=4)
    ),
    max_leaves=12,
)


def deeply_nested(levels: int, leaf: Any) -> Any:
    value = leaf
    for i in range(levels):
        value = [value] if i % 2 else {"a": value}
    return value


# Values nested from just under the 32-level limit to past the 250 levels that once broke the
# answers (deeper still, past the parser's recursion limit, in HOSTILE_BODIES).
deep_values = st.builds(deeply_nested, st.integers(min_value=30, max_value=600), scalars)

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
    values = json_values | deep_values
    body = data.draw(values | st.dictionaries(keys, values, max_size=len(fields) + 1))
    url = BASE + path.replace("{id}", cid).replace("{task}", str(uuid.uuid4()))
    # Python's json writes NaN/Infinity (which the server must refuse) and escapes a lone
    # surrogate as `\\ud800`, as a JSON client would send it.
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


STREAM_PARAMETERS = ["contractIds", "statuses", "includeStale", "includeHeartbeats", "after"]
query_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@FUZZ
@given(
    known=st.dictionaries(
        st.sampled_from(STREAM_PARAMETERS),
        query_text | st.sampled_from(["active,paused", "true", "0", "-1", str(2**64), "not-a-uuid"]),
        max_size=3,
    ),
    unknown=st.dictionaries(
        (query_text | st.sampled_from(["contractID", "contract_ids", "include_stale", "after "])).filter(
            lambda name: name not in STREAM_PARAMETERS
        ),
        query_text,
        min_size=1,
        max_size=2,
    ),
)
def test_the_event_stream_refuses_random_queries_with_an_unknown_parameter_in_the_error_shape(
    fuzz_client: tuple[TestClient, dict[str, str], str], known: dict[str, str], unknown: dict[str, str]
) -> None:
    """Always an unknown parameter, so never a stream (which would not end: see `schema`)."""
    client, headers, _ = fuzz_client
    resp = client.get(STREAM, params={**known, **unknown}, headers=headers)
    assert resp.status_code == 422, resp.text[:300]
    assert_not_a_server_error(resp)
    problems = resp.json()["error"]["details"]["problems"]
    assert {p["field"] for p in problems if p["type"] == "extra_forbidden"} == set(unknown)


# --- literals Python's json would not write, and bodies past the size cap ---------------------

HOSTILE_BODIES = [
    '{"name": "x", "contractType": "simple", "autoCompleteEnabled": NaN}',
    '{"phase": "execute", "expectedVersion": Infinity}',
    '{"phase": "execute", "expectedVersion": -Infinity}',
    '{"phase": "execute", "expectedVersion": 1e309}',
    '{"phase": "execute", "expectedVersion": 18446744073709551616}',
    '{"phase": "execute", "expectedVersion": ' + "9" * 5000 + "}",
    '{"phase": "\\ud800"}',
    '{"\\udfff": 1}',
    '{"phase": "' + "\\ud800" * 1000 + '"}',
    "[" * 100_000 + "]" * 100_000,
    '{"a":' * 10_000 + "1" + "}" * 10_000,
    '{"name": "' + "x" * (MIB + 1) + '", "contractType": "simple"}',
    "[" + ",".join(["1"] * (MIB // 2 + 1)) + "]",
]


@pytest.mark.parametrize("raw", HOSTILE_BODIES, ids=[f"body{i}" for i in range(len(HOSTILE_BODIES))])
@pytest.mark.parametrize(
    ("method", "path", "fields"), ENDPOINTS[:3], ids=[f"{m} {p}" for m, p, _ in ENDPOINTS[:3]]
)
def test_hostile_json_literals_and_huge_bodies_are_refused_in_the_error_shape(
    fuzz_client: tuple[TestClient, dict[str, str], str], method: str, path: str, fields: list[str], raw: str
) -> None:
    client, headers, cid = fuzz_client
    url = BASE + path.replace("{id}", cid)
    resp = client.request(
        method, url, content=raw.encode(), headers={**headers, "Content-Type": "application/json"}
    )
    assert 400 <= resp.status_code < 500, resp.text[:300]
    assert_not_a_server_error(resp)


# --- schemathesis over the published schema ---------------------------------------------------

SCHEMA_APP = create_app(sender=_no_send)
STREAM = BASE + "/events/stream"
schema = schemathesis.openapi.from_asgi("/openapi.json", SCHEMA_APP).exclude(
    path=[
        "/readyz",  # a readiness probe answers 503 by design when Redis or PostgreSQL is down
        # The live monitor's Server-Sent Events: a valid request is answered with a stream that
        # never ends, and a case's call reads the whole answer, so the test would hang. Its
        # refusals are fuzzed below (`test_the_event_stream_refuses_...`), never opening a stream.
        STREAM,
    ]
)
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=10, deterministic=True
)


@pytest.fixture(scope="module")
def fuzz_owner() -> tuple[dict[str, str], str]:
    """A token and a contract of its owner, so generated paths reach a real contract."""
    with unit_of_work() as uow:
        token = create_token(uow.session, f"schemathesis-{uuid.uuid4().hex[:8]}", Role.USER)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(SCHEMA_APP) as client:
        made = client.post(BASE, json={"name": "schemathesis", "contractType": "simple"}, headers=headers)
    assert made.status_code == 201, made.text
    return headers, made.json()["id"]


def _long_poll(query: Any) -> bool:
    """A query that asks a valid long wait (`wait` of a daemon's command feed, up to 25 s)."""
    try:
        return isinstance(query, dict) and 0 < float(query.get("wait", 0)) <= 25
    except (TypeError, ValueError):
        return False


@schema.parametrize()
@settings(max_examples=10, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_every_published_operation_answers_generated_requests_below_500_in_the_error_shape(
    case: Any, fuzz_owner: tuple[dict[str, str], str]
) -> None:
    headers, cid = fuzz_owner
    if isinstance(case.path_parameters, dict) and "id" in case.path_parameters:
        case.path_parameters["id"] = cid
    if _long_poll(case.query):
        case.query["wait"] = "0.1"  # a daemon's long poll may wait 25 s: valid, and no test's to wait out
    resp = case.call(headers={**(case.headers or {}), **headers})
    assert resp.status_code < 500, f"{case.method} {case.formatted_path}: {resp.text[:500]}"
    if resp.status_code >= 400:
        body = resp.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}, body
