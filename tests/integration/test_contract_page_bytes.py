"""A page of contracts is bounded by size as well as by count (`app.views.CONTRACT_PAGE_BYTES`).

Each entry of `GET /api/v1/contracts` carries its current phase's deliverables, and the largest
legal phaseConfig (one phase of 256 deliverables, ids of 200 and names of 500 four-byte
characters, just under the 1 MiB body limit) makes an entry of about 720 KB: thirty of them
were a 22 MB answer. A page stops before the contract that would pass 4 MiB (one is always
taken), says `truncated`, and `nextCursor` continues from there, so following it still reads
every contract exactly once. Against the real PostgreSQL (the integration conftest).
"""

from __future__ import annotations

import json
import uuid
import warnings
from typing import Any

import pytest

from app.auth import Role, authenticate, create_token
from app.db import unit_of_work
from app.models import utcnow
from app.views import CONTRACT_PAGE_BYTES, ContractFilter, list_contracts

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"
CLEF = "\U0001d11e"  # four bytes of UTF-8: the most bytes a character of an id or name costs


@pytest.fixture
def headers() -> dict[str, str]:
    """A new owner's headers: each test lists only its own contracts."""
    with unit_of_work() as uow:
        token = create_token(uow.session, f"pages-{uuid.uuid4().hex[:8]}", Role.USER)
    return {"Authorization": f"Bearer {token}"}


def largest_phase_config(n: int) -> dict[str, Any]:
    """One phase of 256 deliverables with ids of 200 and names of 500 four-byte characters."""
    deliverables = [{"id": f"{n}-{d}-".ljust(200, CLEF), "name": CLEF * 500} for d in range(256)]
    return {"phases": [{"id": "build", "deliverables": deliverables}]}


def create_largest(client: TestClient, headers: dict[str, str], n: int) -> str:
    body = {"name": f"big {n}", "contractType": "custom", "phaseConfig": largest_phase_config(n)}
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) < 1024 * 1024  # a body the API accepts
    made = client.post(BASE, content=raw, headers={**headers, "Content-Type": "application/json"})
    assert made.status_code == 201, made.text[:500]
    return str(made.json()["id"])


def test_a_page_of_the_largest_contracts_stays_within_the_budget_and_paging_reads_each_once(
    client: TestClient, headers: dict[str, str]
) -> None:
    created = [create_largest(client, headers, n) for n in range(12)]  # about 8.6 MB of entries
    seen: list[str] = []
    pages: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = client.get(BASE, params=params, headers=headers)
        assert page.status_code == 200, page.text[:500]
        assert len(page.content) <= CONTRACT_PAGE_BYTES
        body = page.json()
        pages.append(body)
        assert body["contracts"], "a page is never empty while a contract is due"
        entry = len(json.dumps(body["contracts"][0], ensure_ascii=False).encode())
        assert entry > 700_000  # the deliverables are listed: this is the entry the bound is for
        seen += [c["id"] for c in body["contracts"]]
        cursor = body["nextCursor"]
        if cursor is None:
            break
        assert len(pages) <= len(created), "paging does not end"
    assert seen == list(reversed(created))  # every contract once, newest first
    assert len(pages) >= 3  # twelve of them are over two budgets
    assert all(p["truncated"] for p in pages[:-1]) and not pages[-1]["truncated"]


def test_a_page_the_count_ends_is_not_truncated(client: TestClient, headers: dict[str, str]) -> None:
    created = [
        client.post(BASE, json={"name": f"small {n}", "contractType": "simple"}, headers=headers).json()["id"]
        for n in range(3)
    ]
    first = client.get(BASE, params={"limit": 2}, headers=headers).json()
    assert [c["id"] for c in first["contracts"]] == created[:0:-1]
    assert first["nextCursor"] is not None and first["truncated"] is False
    rest = client.get(BASE, params={"limit": 2, "cursor": first["nextCursor"]}, headers=headers).json()
    assert [c["id"] for c in rest["contracts"]] == created[:1]
    assert rest["nextCursor"] is None and rest["truncated"] is False


def test_one_contract_is_taken_even_when_it_alone_passes_the_budget(
    client: TestClient, headers: dict[str, str]
) -> None:
    """A page can always make progress: its first contract is taken whatever its size."""
    created = [create_largest(client, headers, n) for n in range(2)]
    token = headers["Authorization"].removeprefix("Bearer ")

    def page(cursor: str | None) -> Any:
        with unit_of_work() as uow:
            caller = authenticate(uow.session, token)
            flt = ContractFilter(limit=500, cursor=cursor)
            return list_contracts(uow.session, caller, flt, utcnow(), uow.settings, budget=1024)

    first = page(None)
    assert [str(c.id) for c in first.contracts] == created[1:] and first.truncated
    rest = page(first.next_cursor)
    assert [str(c.id) for c in rest.contracts] == created[:1]
    assert rest.next_cursor is None and not rest.truncated
