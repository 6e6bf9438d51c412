"""Tokens have a lifecycle: listed, revoked, expired, their last use recorded.

The CLI runs as a real `makima` process on this run's database, as an operator would run it,
so its revocation reaches the HTTP front and the workers only the way it does in production:
through the database, within `PRINCIPAL_CACHE_SECONDS` (each process caches principals).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.api import ContractsAPI
from app.auth import (
    PRINCIPAL_CACHE_SECONDS,
    InvalidPrincipal,
    Role,
    check_principal,
    create_token,
    forget_cached_principals,
    hash_token,
)
from app.db import unit_of_work
from app.http import create_app
from app.models import ApiToken, DeadLetter, Principal, utcnow
from tests.integration.helpers import count_events, message_processed, new_contract
from tests.integration.worker_processes import ROOT, WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration

BASE = "/api/v1/contracts"


def makima(*args: str) -> subprocess.CompletedProcess[str]:
    """The operator's CLI, a separate process on this run's database (env from conftest)."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def new_token(owner: str | None = None, role: str = "user", **kwargs: Any) -> tuple[str, uuid.UUID]:
    """A token and its id (`makima token list` shows the id, `revoke` takes it)."""
    with unit_of_work() as uow:
        token = create_token(uow.session, owner or f"tok-{uuid.uuid4().hex[:8]}", Role(role), **kwargs)
    with unit_of_work() as uow:
        token_id = uow.session.scalars(
            select(ApiToken.id).where(ApiToken.token_hash == hash_token(token))
        ).one()
    return token, token_id


def listed(*extra: str) -> list[dict[str, Any]]:
    result = makima("token", "list", "--format", "json", *extra)
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout))


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(sender=lambda *_: uuid.uuid4().hex)) as c:
        yield c


def get_contracts(client: TestClient, token: str) -> Any:
    return client.get(BASE, headers={"Authorization": f"Bearer {token}"})


# --- item 12b: input checked before the database ------------------------------------------


@pytest.mark.parametrize(
    "args, field",
    [
        (["--owner", "o" * 300, "--role", "user"], "owner"),
        (["--owner", "ok", "--role", "user", "--name", "n" * 201], "name"),
        (["--owner", "bad\x01owner", "--role", "user"], "owner"),
    ],
    ids=["owner-300", "name-201", "owner-control-char"],
)
def test_token_create_refuses_an_owner_or_name_the_columns_cannot_hold_with_an_error_line(
    args: list[str], field: str
) -> None:
    with unit_of_work() as uow:
        principals_before = uow.session.scalar(select(func.count()).select_from(Principal))
    result = makima("token", "create", *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.startswith("error: VALIDATION_FAILED: "), result.stderr
    assert field in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    with unit_of_work() as uow:
        assert uow.session.scalar(select(func.count()).select_from(Principal)) == principals_before


# --- list ---------------------------------------------------------------------------------


def test_token_list_shows_every_token_with_its_owner_and_role_but_never_the_secret() -> None:
    owner = f"list-{uuid.uuid4().hex[:8]}"
    token, token_id = new_token(owner, "supervisor", name="daemon on host-7")
    rows = [r for r in listed("--owner", owner)]
    assert len(rows) == 1
    row = rows[0]
    assert set(row) == {
        "id",
        "principalId",
        "owner",
        "role",
        "name",
        "createdAt",
        "lastUsedAt",
        "expiresAt",
        "revokedAt",
        "state",
    }
    assert (row["id"], row["owner"], row["role"], row["name"]) == (
        str(token_id),
        owner,
        "supervisor",
        "daemon on host-7",
    )
    assert (row["lastUsedAt"], row["expiresAt"], row["revokedAt"], row["state"]) == (None, None, None, "live")

    table = makima("token", "list", "--owner", owner)
    assert table.returncode == 0, table.stderr
    assert str(token_id) in table.stdout and owner in table.stdout and "supervisor" in table.stdout
    for output in (json.dumps(rows), table.stdout, table.stderr):
        assert token not in output and hash_token(token) not in output


# --- revoke -------------------------------------------------------------------------------


def test_token_revoke_is_idempotent_and_says_when_it_was_already_revoked() -> None:
    owner = f"revoke-{uuid.uuid4().hex[:8]}"
    _, token_id = new_token(owner)

    first = makima("token", "revoke", str(token_id))
    assert first.returncode == 0, first.stderr
    assert "revoked" in first.stderr and "already" not in first.stderr
    revoked_at = listed("--owner", owner)[0]["revokedAt"]
    assert revoked_at is not None and listed("--owner", owner)[0]["state"] == "revoked"

    again = makima("token", "revoke", str(token_id))
    assert again.returncode == 0, again.stderr
    assert "already revoked" in again.stderr
    assert listed("--owner", owner)[0]["revokedAt"] == revoked_at  # the first revocation stands


@pytest.mark.parametrize("token_id", [str(uuid.uuid4()), "not-an-id"], ids=["unknown", "malformed"])
def test_revoking_a_token_id_nobody_issued_is_an_error(token_id: str) -> None:
    result = makima("token", "revoke", token_id)
    assert result.returncode != 0
    assert result.stderr.startswith("error: TOKEN_NOT_FOUND: "), result.stderr
    assert "makima token list" in result.stderr and "Traceback" not in result.stderr


# --- expiry -------------------------------------------------------------------------------


def test_token_create_with_expires_sets_the_expiry() -> None:
    owner = f"exp-{uuid.uuid4().hex[:8]}"
    before = utcnow()
    result = makima("token", "create", "--owner", owner, "--role", "user", "--expires", "30d")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("mk_") and "expires" in result.stderr
    expires = listed("--owner", owner)[0]["expiresAt"]
    from datetime import datetime

    delta = datetime.fromisoformat(expires) - before
    assert timedelta(days=30) <= delta < timedelta(days=30, minutes=1)


def test_token_create_refuses_an_expiry_it_cannot_read() -> None:
    result = makima("token", "create", "--owner", "x", "--role", "user", "--expires", "30 weeks")
    assert result.returncode == 2
    assert result.stderr.startswith("error: VALIDATION_FAILED: ") and "30d" in result.stderr


def test_an_expired_token_is_refused_with_401_saying_it_expired_even_while_cached(
    client: TestClient,
) -> None:
    token, _ = new_token(expires_in=timedelta(seconds=1.5))
    assert get_contracts(client, token).status_code == 200  # now cached in this process
    time.sleep(1.6)
    resp = get_contracts(client, token)
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"]["code"] == "UNAUTHENTICATED"
    assert "expired" in resp.json()["error"]["message"]


# --- revocation reaches every process within the cache bound ------------------------------


def test_a_revoked_token_is_refused_over_http_within_the_principal_cache_bound(client: TestClient) -> None:
    token, token_id = new_token()
    assert get_contracts(client, token).status_code == 200  # cached by the HTTP front

    assert makima("token", "revoke", str(token_id)).returncode == 0
    revoked = time.monotonic()
    wait_for(
        lambda: get_contracts(client, token).status_code == 401,
        timeout=PRINCIPAL_CACHE_SECONDS + 1.0,
        interval=0.2,
        what="revocation to reach the HTTP front",
    )
    assert time.monotonic() - revoked <= PRINCIPAL_CACHE_SECONDS + 1.0
    resp = get_contracts(client, token)
    assert resp.status_code == 401 and "revoked" in resp.json()["error"]["message"]


def test_a_principal_is_valid_while_it_has_at_least_one_live_token() -> None:
    _, first = new_token(role="supervisor")
    with unit_of_work() as uow:
        principal_id = uow.session.scalars(select(ApiToken.principal_id).where(ApiToken.id == first)).one()
        uow.session.add(
            ApiToken(
                principal_id=principal_id,
                token_hash=hash_token(f"second-{uuid.uuid4()}"),
                created_at=utcnow(),
            )
        )

    def revoke_where(*criteria: Any) -> None:
        with unit_of_work() as uow:
            uow.session.execute(update(ApiToken).where(*criteria).values(revoked_at=utcnow()))
        forget_cached_principals()

    revoke_where(ApiToken.id == first)
    with unit_of_work() as uow:
        assert check_principal(uow.session, principal_id).principal_id == principal_id  # the second lives

    with unit_of_work() as uow:
        uow.session.execute(
            update(ApiToken)
            .where(ApiToken.principal_id == principal_id, ApiToken.id != first)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    forget_cached_principals()
    with unit_of_work() as uow, pytest.raises(InvalidPrincipal, match="no live token"):
        check_principal(uow.session, principal_id)


# --- last use -----------------------------------------------------------------------------


def test_last_use_is_recorded_at_most_once_a_minute(client: TestClient) -> None:
    token, token_id = new_token()

    def last_used() -> Any:
        with unit_of_work() as uow:
            return uow.session.get(ApiToken, token_id).last_used_at  # type: ignore[union-attr]

    assert last_used() is None
    assert get_contracts(client, token).status_code == 200
    first = last_used()
    assert first is not None

    forget_cached_principals()  # the next call reads the token again, within the minute
    assert get_contracts(client, token).status_code == 200
    assert last_used() == first

    with unit_of_work() as uow:
        uow.session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id)
            .values(last_used_at=utcnow() - timedelta(minutes=2))
        )
    forget_cached_principals()
    assert get_contracts(client, token).status_code == 200
    assert last_used() > first


# --- workers re-check the sender ----------------------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    w = start_worker(tmp_path_factory.mktemp("token-workers"), queues="contracts")
    w.wait_ready()
    yield w
    w.stop()


def test_a_worker_dead_letters_a_message_whose_sender_was_revoked(
    worker: WorkerProcess, tmp_path: Path
) -> None:
    token, token_id = new_token(role="supervisor")
    api = ContractsAPI(token)  # a daemon: authenticated once, keeps sending
    cid = new_contract(api)  # the worker has applied this sender's messages: it is cached there
    warm = api.report_task_started(cid, uuid.uuid4(), "before revocation")
    wait_for(lambda: message_processed(warm), what="message before revocation applied")

    # A front that authenticated this sender just before the revocation (an HTTP request in
    # flight, or a message already queued) still hands the message on; the worker is the
    # last line and must refuse it. (`ContractsAPI(token)` itself would refuse at once now.)
    accepted_earlier = ContractsAPI(caller=api.caller)
    assert makima("token", "revoke", str(token_id)).returncode == 0
    time.sleep(PRINCIPAL_CACHE_SECONDS + 0.5)  # the stated bound, then a little
    message_id = accepted_earlier.report_task_completed(cid, uuid.uuid4(), "after revocation", success=True)

    def parked() -> DeadLetter | None:
        with unit_of_work() as uow:
            rows = uow.session.scalars(select(DeadLetter).where(DeadLetter.raw_body.contains(message_id)))
            return rows.first()

    row = wait_for(parked, timeout=30, what="revoked sender's message parked")
    assert "no live token" in row.error and "revoked or expired" in row.error, row.error
    assert count_events(cid, "task_completed") == 0
    assert not message_processed(message_id)


def test_a_long_lived_api_module_notices_a_revocation_within_the_principal_cache_bound() -> None:
    """A daemon builds `ContractsAPI(token)` once; its later calls re-check the token."""
    from app.api import ContractsAPI
    from app.auth import Unauthenticated

    token, token_id = new_token()
    api = ContractsAPI(token)
    api.list_contracts()
    assert makima("token", "revoke", str(token_id)).returncode == 0

    def refused() -> bool:
        try:
            api.list_contracts()
        except Unauthenticated:
            return True
        return False

    wait_for(
        refused,
        timeout=PRINCIPAL_CACHE_SECONDS + 1.0,
        interval=0.2,
        what="revocation to reach the API module",
    )
