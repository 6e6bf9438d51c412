"""Every `/api/v1` endpoint takes the query parameters it declares, each once, and no empty value
that would have meant nothing (`app.http.query_params`, judged by `app.http.deps.strict_query`).

Before, `?foo=1` was answered as if it were absent, `?taskId=A&taskId=B` acted on one of them,
and the event stream's `?contractIds=` streamed every contract. Now each is a 422
INVALID_REQUEST naming the parameter (an unknown one with the parameters the endpoint takes),
after the 401 a stranger gets first, while every parameter the README and the published
schema list, and everything the dashboard page sends, is still taken.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.testclient import TestClient

from app.api import ContractsAPI
from app.auth import Role, authenticate, create_token
from app.config import get_settings
from app.db import unit_of_work
from app.http import create_app
from app.http.errors import AUTHENTICATED_PREFIX
from app.http.query_params import MOST_PROBLEMS
from tests.integration.helpers import no_send

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
README = Path(__file__).resolve().parents[2] / "README.md"
# The refusals this rule adds; a parameter the endpoint takes may still be refused for its value.
STRICT_TYPES: Final = {"extra_forbidden", "repeated", "empty"}


@pytest.fixture(scope="module")
def caller(database: str) -> tuple[str, ContractsAPI]:
    """One user for the module: its token, and the API acting for it."""
    with unit_of_work() as uow:
        token = create_token(uow.session, f"query-{uuid.uuid4().hex[:8]}", Role.USER)
    with unit_of_work() as uow:
        who = authenticate(uow.session, token)
    return token, ContractsAPI(caller=who, sender=no_send)


@pytest.fixture(scope="module")
def headers(caller: tuple[str, ContractsAPI]) -> dict[str, str]:
    return {"Authorization": f"Bearer {caller[0]}"}


@pytest.fixture(scope="module")
def contract_id(caller: tuple[str, ContractsAPI]) -> uuid.UUID:
    return caller[1].create_contract("query parameters", "simple").id


@pytest.fixture
def monitoring_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The event stream answers 503 instead of opening a stream that never ends, once its query
    has been judged: a parameter it takes reaches that answer, a refused one never does."""
    monkeypatch.setattr(get_settings().feature_flags, "monitoring_dashboard", False)
    yield


def refusal(response: Any, field: str, type_: str) -> dict[str, Any]:
    """The one problem of a 422 INVALID_REQUEST, which must name `field` in the query."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "INVALID_REQUEST"
    [problem] = error["details"]["problems"]
    assert (problem["field"], problem["in"], problem["type"]) == (field, "query", type_), problem
    assert f"{field}: {problem['problem']}" in error["message"]
    return dict(problem)


def assert_taken(response: Any, field: str) -> None:
    """`field` was not refused as a parameter the endpoint does not take, nor as repeated or
    empty: the answer may refuse something else (a missing body, a role, the event stream
    switched off), never it on those grounds, and is never a server error."""
    assert response.status_code != 500, response.text
    if response.status_code == 422:
        problems = response.json()["error"]["details"].get("problems", [])
        assert [p for p in problems if p.get("field") == field and p.get("type") in STRICT_TYPES] == [], (
            response.text
        )


# --- an unknown parameter ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "known"),
    [
        (
            BASE,
            ["status", "phase", "stale", "threshold", "waiting", "supervised", "limit", "cursor"],
        ),
        (BASE + "/{cid}/supervisor/restoration", ["taskId", "daemonId", "host", "historyLimit"]),
        ("/api/v1/daemons/gpu-7/commands", ["after", "limit", "wait"]),
        (BASE + "/{cid}/supervisor/heartbeats", ["limit"]),
        (BASE + "/events/stream", ["contractIds", "statuses", "includeStale", "includeHeartbeats", "after"]),
    ],
    ids=["contracts", "restoration", "daemon-commands", "heartbeats", "event-stream"],
)
def test_an_unknown_parameter_is_refused_naming_it_and_the_ones_the_endpoint_takes(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, path: str, known: list[str]
) -> None:
    url = path.format(cid=contract_id)
    taken = known[-1]
    misspelt = taken[0].upper() + taken[1:]
    # Alone, beside a parameter the endpoint takes, and one misspelt only by case.
    for name, query in (("foo", "foo=1"), ("foo", f"{taken}=1&foo=1"), (misspelt, f"{misspelt}=1")):
        problem = refusal(client.get(f"{url}?{query}", headers=headers), name, "extra_forbidden")
        assert problem["allowed"] == known
        assert problem["problem"] == (
            f"is not a query parameter of this request; known parameters: {', '.join(known)}"
        )
        assert problem["given"] == "1"


@pytest.mark.parametrize("path", ["/api/v1/whoami", BASE + "/{cid}", BASE + "/dashboard"])
def test_an_endpoint_that_takes_no_parameter_says_so(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, path: str
) -> None:
    problem = refusal(
        client.get(path.format(cid=contract_id) + "?_=1718000000", headers=headers), "_", "extra_forbidden"
    )
    assert problem["allowed"] == []
    assert problem["problem"] == "is not a query parameter of this request, which takes none"


def test_the_schemas_example_of_an_unknown_parameter_is_the_answer_it_gets(
    client: TestClient, headers: dict[str, str]
) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/api/v1/whoami"]["get"]
    examples = operation["responses"]["422"]["content"]["application/json"]["examples"]
    example = examples["INVALID_REQUEST (unknown parameter)"]["value"]
    response = client.get("/api/v1/whoami?foo=1", headers=headers)
    assert (response.status_code, response.json()) == (422, example)


def test_a_refusal_names_at_most_twenty_parameters(client: TestClient, headers: dict[str, str]) -> None:
    query = "&".join(f"made{i}=up" for i in range(500))
    response = client.get(f"/api/v1/whoami?{query}", headers=headers)
    assert response.status_code == 422, response.text
    problems = response.json()["error"]["details"]["problems"]
    assert (
        [p["field"] for p in problems]
        == [f"made{i}" for i in range(MOST_PROBLEMS)]
        == [f"made{i}" for i in range(20)]
    )


def test_a_write_with_an_unknown_parameter_changes_nothing(
    client: TestClient, headers: dict[str, str], caller: tuple[str, ContractsAPI]
) -> None:
    name = f"refused-{uuid.uuid4().hex[:8]}"
    response = client.post(
        BASE + "?phaseGuard=true", headers=headers, json={"name": name, "contractType": "simple"}
    )
    assert refusal(response, "phaseGuard", "extra_forbidden")["allowed"] == []
    listed = client.get(BASE + "?limit=500", headers=headers).json()["contracts"]
    assert name not in [c["name"] for c in listed]


def test_a_stranger_learns_only_that_a_token_is_needed(client: TestClient) -> None:
    for headers in ({}, {"Authorization": "Bearer mk_not-a-token"}):
        response = client.get(BASE + "?foo=1&limit=1&limit=2", headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "UNAUTHENTICATED"


def _api_routes(app: Any) -> list[tuple[str, str, APIRoute]]:
    """Every HTTP operation under /api/v1 the app serves: (method, path as published, route)."""
    found = []
    for context in iter_route_contexts(app.routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.path.startswith(AUTHENTICATED_PREFIX):
            found += [(method, route.path_format, route) for method in sorted(route.methods or ())]
    return found


def _published_query(schema: dict[str, Any], method: str, path: str) -> list[dict[str, Any]]:
    operation = schema["paths"][path][method.lower()]
    return [p for p in operation.get("parameters", []) if p["in"] == "query"]


def _concrete(path: str, contract_id: uuid.UUID) -> str:
    """A path of the route with every id filled in: the caller's contract, other ids made up."""
    values = {
        "id": str(contract_id),
        "daemonId": "gpu-7",
        "messageId": "m-1",
        "deliverableId": "plan-document",
    }
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), str(uuid.uuid4())), path)


def test_no_endpoint_takes_a_parameter_it_does_not_publish(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID
) -> None:
    """Walks every route, so an endpoint added later is held to the rule without a line of its own;
    what it lists as allowed is exactly what the published schema says it takes."""
    app = create_app(sender=no_send)
    schema = app.openapi()
    routes = _api_routes(app)
    assert len(routes) > 30
    for method, path, _route in routes:
        url = _concrete(path, contract_id) + "?notAParameter=1"
        problem = refusal(client.request(method, url, headers=headers), "notAParameter", "extra_forbidden")
        assert problem["allowed"] == [p["name"] for p in _published_query(schema, method, path)], (
            method,
            path,
        )


# --- a repeated parameter ---------------------------------------------------------------


def test_a_parameter_given_twice_is_refused_not_picked(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID
) -> None:
    restoration = f"{BASE}/{contract_id}/supervisor/restoration?taskId={uuid.uuid4()}&taskId={uuid.uuid4()}"
    problem = refusal(client.get(restoration, headers=headers), "taskId", "repeated")
    assert (problem["count"], problem["limit"]) == (2, 1)
    assert problem["problem"] == "appears 2 times; it takes one value, so send it once"
    # Even when both say the same, and whichever parameter it is.
    assert refusal(client.get(BASE + "?limit=5&limit=5", headers=headers), "limit", "repeated")["count"] == 2
    stream = BASE + "/events/stream?statuses=active&statuses=paused&statuses=failed"
    assert refusal(client.get(stream, headers=headers), "statuses", "repeated")["count"] == 3


# --- an empty value ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("contractIds=", "contractIds"),
        ("contractIds", "contractIds"),
        ("statuses=", "statuses"),
        ("contractIds=,", "contractIds"),
        ("contractIds=%20", "contractIds"),
        ("statuses=,%20,", "statuses"),
    ],
)
def test_the_event_streams_empty_filter_is_refused_not_read_as_every_contract(
    client: TestClient, headers: dict[str, str], query: str, field: str
) -> None:
    problem = refusal(client.get(f"{BASE}/events/stream?{query}", headers=headers), field, "empty")
    assert problem["problem"] in (
        "is empty; give it a value, or leave it out",
        "names nothing; give at least one, or leave it out for all",
    )


@pytest.mark.parametrize(
    ("query", "field"), [("status=", "status"), ("status=,", "status"), ("phase=", "phase")]
)
def test_an_empty_filter_of_the_contract_list_is_refused(
    client: TestClient, headers: dict[str, str], query: str, field: str
) -> None:
    refusal(client.get(f"{BASE}?{query}", headers=headers), field, "empty")


@pytest.mark.parametrize("endpoint", ["state", "history", "restoration"])
def test_an_empty_task_id_is_refused_naming_it(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, endpoint: str
) -> None:
    response = client.get(f"{BASE}/{contract_id}/supervisor/{endpoint}?taskId=", headers=headers)
    assert response.status_code == 422, response.text
    [problem] = response.json()["error"]["details"]["problems"]
    assert (problem["field"], problem["in"], problem["type"]) == ("taskId", "query", "uuid_form")


def test_an_empty_cursor_keeps_its_documented_meaning_the_first_page(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID
) -> None:
    first = client.get(BASE + "?limit=1", headers=headers)
    again = client.get(BASE + "?limit=1&cursor=", headers=headers)
    assert first.status_code == again.status_code == 200, again.text
    assert again.json() == first.json()
    assert again.json()["contracts"]


# --- everything documented and sent is still taken --------------------------------------

_SAMPLES: Final = {
    "status": "active",
    "statuses": "active,paused",
    "phase": "plan",
    "threshold": "2h",
    "daemonId": "gpu-7",
    "host": "host-1",
    "wait": "0",
}


def _sample(parameter: dict[str, Any]) -> str:
    """A value of the published parameter's type."""
    name = parameter["name"]
    if name in _SAMPLES:
        return _SAMPLES[name]
    if name in ("taskId", "contractIds", "batchId", "principalId"):
        return str(uuid.uuid4())
    schema = parameter["schema"]
    shapes = [s for s in schema.get("anyOf", [schema]) if s.get("type") != "null"]
    shape = shapes[0]
    if shape.get("format") == "uuid":
        return str(uuid.uuid4())
    return {"integer": str(shape.get("minimum", 1) or 1), "boolean": "true", "number": "0"}.get(
        shape.get("type", "string"), "x"
    )


def _readme_query_parameters() -> list[tuple[str, str, str]]:
    """(method, path, parameter) for every `query:` cell of the README's endpoint table."""
    found = []
    row = re.compile(r"^\| `(GET|POST|PUT) (/api/v1/[^`]+)` \| query: (.*?) \|")
    for line in README.read_text(encoding="utf-8").splitlines():
        match = row.match(line)
        if match is None:
            continue
        method, path, cell = match.groups()
        cell = re.sub(r"\([^()]*\)", "", cell)  # what the parentheses say of a parameter
        cell = cell.partition(". ")[0]  # a row that goes on to the answer in the same cell
        found += [(method, path, name) for name in re.findall(r"`([A-Za-z]+)`", cell)]
    return found


def test_every_parameter_the_readme_documents_is_published_and_taken(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, monitoring_off: None
) -> None:
    documented = _readme_query_parameters()
    assert ("GET", "/api/v1/contracts/{id}/supervisor/restoration", "historyLimit") in documented
    schema = client.get("/openapi.json").json()
    for method, path, name in documented:
        published = {p["name"]: p for p in _published_query(schema, method, path)}
        assert name in published, (method, path, name)
        url = f"{_concrete(path, contract_id)}?{name}={_sample(published[name])}"
        assert_taken(client.request(method, url, headers=headers), name)


def test_every_parameter_of_every_endpoint_is_taken(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, monitoring_off: None
) -> None:
    app = create_app(sender=no_send)
    schema = app.openapi()
    tried = 0
    for method, path, _route in _api_routes(app):
        for parameter in _published_query(schema, method, path):
            name = parameter["name"]
            url = f"{_concrete(path, contract_id)}?{name}={_sample(parameter)}"
            assert_taken(client.request(method, url, headers=headers), name)
            tried += 1
    assert tried >= 30


def test_every_parameter_at_once_is_taken(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, monitoring_off: None
) -> None:
    """Each endpoint's whole set together (the stream's filter as an EventSource sends it)."""
    app = create_app(sender=no_send)
    schema = app.openapi()
    for method, path, _route in _api_routes(app):
        published = _published_query(schema, method, path)
        if not published:
            continue
        query = "&".join(f"{p['name']}={_sample(p)}" for p in published)
        response = client.request(method, f"{_concrete(path, contract_id)}?{query}", headers=headers)
        for parameter in published:
            assert_taken(response, parameter["name"])


@pytest.mark.parametrize(
    "query",
    [
        # What the dashboard page asks (`app/http/static/dashboard/dashboard.js`).
        "?supervised=true&limit=25&status=created,active,waiting_for_input,paused,blocked,completing",
        "?stale=true&limit=500",
        "?limit=500",
        # The README's walkthrough.
        "?status=created,active&limit=20",
        "?stale=true&threshold=2h",
        "?waiting=true&phase=plan",
    ],
)
def test_what_the_dashboard_and_the_walkthrough_send_is_answered(
    client: TestClient, headers: dict[str, str], query: str
) -> None:
    response = client.get(BASE + query, headers=headers)
    assert response.status_code == 200, response.text


def test_the_dashboards_question_list_is_answered(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID
) -> None:
    response = client.get(f"{BASE}/{contract_id}/questions?open=true", headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("given", ["3_0", " 3", "+3", "3 ", "٣"], ids=repr)
@pytest.mark.parametrize(
    "path",
    [BASE + "/{cid}/supervisor/heartbeats?limit=", "/api/v1/daemons?limit=", BASE + "/{cid}/events?limit="],
)
def test_a_whole_number_is_written_in_digits_or_refused(
    client: TestClient, headers: dict[str, str], contract_id: uuid.UUID, path: str, given: str
) -> None:
    """Python's int() reads `3_0` as 30 and ` 3`, `+3` or an Arabic-Indic digit as 3, so each
    was answered as if the caller had written the number plainly; the schema says digits."""
    url = path.format(cid=contract_id) + quote(given)
    problem = refusal(client.get(url, headers=headers), "limit", "int_parsing")
    assert problem["given"] == given
    assert problem["problem"] == (
        "is not a whole number written in digits "
        "(0-9, an optional leading minus; no sign +, space or underscore)"
    )
    assert client.get(path.format(cid=contract_id) + "3", headers=headers).status_code == 200
