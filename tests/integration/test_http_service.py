"""The service around the API: probes, the root, offline docs, and the published schema.

These are what an operator and a client developer meet first: a load balancer's probes must
tell a dead process from a missing dependency, the documentation must work on a machine with
no internet access, and every answer in the schema must say what it looks like.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from app.config import get_settings
from app.http import create_app

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

SUCCESS = re.compile(r"^2\d\d$")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(sender=lambda *_: "")) as c:
        yield c


# --- probes -----------------------------------------------------------------------------


def test_liveness_answers_without_a_token_or_the_database(client: TestClient) -> None:
    dead_db = create_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    with TestClient(create_app(engine=dead_db, broker_url="redis://127.0.0.1:1/0")) as lonely:
        assert lonely.get("/healthz").json() == {"status": "ok"}
    assert client.get("/healthz").status_code == 200


def test_readiness_is_200_when_the_database_and_the_broker_answer(client: TestClient) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "status": "ready",
        "checks": {"database": {"ok": True, "error": None}, "broker": {"ok": True, "error": None}},
    }


def test_readiness_is_503_naming_an_unreachable_broker() -> None:
    with TestClient(create_app(broker_url="redis://127.0.0.1:1/0", probe_timeout=2.0)) as c:
        resp = c.get("/readyz")
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == {"ok": True, "error": None}
    assert body["checks"]["broker"]["ok"] is False and "ConnectionError" in body["checks"]["broker"]["error"]


def test_readiness_is_503_naming_a_database_that_does_not_exist() -> None:
    url = make_url(get_settings().effective_database_url).set(database="makima_no_such_database")
    engine = create_engine(url)
    try:
        with TestClient(create_app(engine=engine)) as c:
            resp = c.get("/readyz")
    finally:
        engine.dispose()
    assert resp.status_code == 503, resp.text
    checks = resp.json()["checks"]
    assert checks["broker"] == {"ok": True, "error": None}
    assert checks["database"]["ok"] is False and "makima_no_such_database" in checks["database"]["error"]


# --- the root and the documentation -----------------------------------------------------


def test_the_root_links_to_the_docs_the_schema_and_the_probes(client: TestClient) -> None:
    index = client.get("/").json()
    assert {k: index[k] for k in ("docs", "redoc", "openapi", "health", "ready")} == {
        "docs": "/docs",
        "redoc": "/redoc",
        "openapi": "/openapi.json",
        "health": "/healthz",
        "ready": "/readyz",
    }
    for link in ("docs", "redoc", "openapi", "health", "ready"):
        assert client.get(index[link]).status_code == 200, link


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_load_every_asset_from_this_server(client: TestClient, page: str) -> None:
    resp = client.get(page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    links = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", resp.text)
    assert links, "the page loads no assets"
    for link in links:
        assert link.startswith("/") and not link.startswith("//"), f"{page} loads {link} from elsewhere"
        asset = client.get(link)
        assert asset.status_code == 200 and asset.content, link
    assert "http://" not in resp.text and "https://" not in resp.text


# --- the published schema ---------------------------------------------------------------


def _operations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield f"{method.upper()} {path}", op


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    found: dict[str, Any] = schema
    for part in ref.removeprefix("#/").split("/"):
        found = found[part]
    return found


def test_every_response_of_every_operation_has_a_schema_and_no_success_is_a_bare_object(
    client: TestClient,
) -> None:
    schema = client.get("/openapi.json").json()
    checked = 0
    for name, op in _operations(schema):
        assert op.get("description") or op.get("summary"), f"{name} has no description"
        for code, response in op["responses"].items():
            stream = response.get("content", {}).get("text/event-stream")
            if SUCCESS.match(code) and stream is not None:  # the live monitor's Server-Sent Events
                assert set(response["content"]) == {"text/event-stream"}, f"{name} {code}"
                assert response["description"] and stream.get("example"), f"{name} {code} is not shown"
                checked += 1
                continue
            media = response.get("content", {}).get("application/json")
            assert media and "schema" in media, f"{name} {code} has no schema"
            target = _resolve(schema, media["schema"])
            if SUCCESS.match(code):
                assert "$ref" in media["schema"], f"{name} {code} is not a named model"
                assert target.get("properties"), f"{name} {code} is a bare object"
            else:
                assert media["schema"]["$ref"].rsplit("/", 1)[-1] in ("ErrorBody", "ServiceReadiness"), (
                    f"{name} {code} is not in the error shape"
                )
                assert "example" in media or "examples" in media, f"{name} {code} has no example"
            checked += 1
    assert checked > 50


def test_error_examples_are_valid_error_bodies_with_known_codes(client: TestClient) -> None:
    from app.schemas import ErrorBody

    schema = client.get("/openapi.json").json()
    for _name, op in _operations(schema):
        for code, response in op["responses"].items():
            if SUCCESS.match(code):
                continue
            media = response["content"]["application/json"]
            if not media["schema"]["$ref"].endswith("ErrorBody"):
                continue
            for example in media["examples"].values():
                ErrorBody.model_validate(example["value"])  # the codes are the ErrorCode enum


def test_the_event_stream_is_published_with_its_parameters_header_answer_and_errors(
    client: TestClient,
) -> None:
    op = client.get("/openapi.json").json()["paths"]["/api/v1/contracts/events/stream"]["get"]
    params = {(p["in"], p["name"]) for p in op["parameters"]}
    assert params == {
        ("query", "contractIds"),
        ("query", "statuses"),
        ("query", "includeStale"),
        ("query", "includeHeartbeats"),
        ("query", "after"),
        ("header", "Last-Event-ID"),
    }
    assert all(p.get("description") for p in op["parameters"])
    ok = op["responses"]["200"]
    assert list(ok["content"]) == ["text/event-stream"]
    assert "event: resume" in ok["content"]["text/event-stream"]["example"]
    errors = {code: list(r["content"]) for code, r in op["responses"].items() if code != "200"}
    assert errors == {code: ["application/json"] for code in ("401", "422", "500", "503")}
    assert op["security"]


def test_the_schema_speaks_to_users_not_to_the_code_base(client: TestClient) -> None:
    text = client.get("/openapi.json").text
    for internal in ("seed", "app.", "ContractsAPI", "request_completion_check", "Celery"):
        assert internal not in text, internal


def test_the_contract_schema_carries_the_current_phases_progress(client: TestClient) -> None:
    components = client.get("/openapi.json").json()["components"]["schemas"]
    contract = components["Contract"]["properties"]
    assert {"deliverables", "tasks", "phase", "status", "version"} <= set(contract)
    assert set(components["DeliverableState"]["properties"]) == {
        "id",
        "name",
        "required",
        "completed",
        "completedAt",
    }
    assert set(components["TaskCounts"]["properties"]) == {"total", "running", "done", "failed"}
    codes = components["ErrorCode"]["enum"]
    assert {"FORBIDDEN", "CONTRACT_NOT_FOUND", "INVALID_REQUEST", "INTERNAL_ERROR"} <= set(codes)
