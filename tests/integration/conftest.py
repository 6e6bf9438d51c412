"""Integration tests run against the real PostgreSQL and Redis on this machine.

Each run makes its own database (`makima_test_<random>`) and its own Redis keyspace (a key
prefix), so it passes whatever else runs on the machine, and removes both at the end. The
environment is set before any `app` module reads its settings.
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.isolation import PG_ADMIN_URL, REDIS_URL, Isolation

if TYPE_CHECKING:
    from starlette.testclient import TestClient

RUN = Isolation("makima_test")
DB_NAME = RUN.db_name
DB_URL = RUN.db_url
KEY_PREFIX = RUN.key_prefix

__all__ = ["DB_NAME", "DB_URL", "KEY_PREFIX", "PG_ADMIN_URL", "REDIS_URL"]

os.environ.update(
    {
        **RUN.environment(),
        "MAKIMA_VISIBILITY_TIMEOUT_SECONDS": "6",
        "MAKIMA_UNACKED_RESTORE_INTERVAL_SECONDS": "1",
        "MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES": "0.02",
        "MAKIMA_CONTRACTS__STALE_DETECTION_INTERVAL_SECONDS": "2",
    }
)


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """A fresh PostgreSQL database at the head migration, dropped after the run."""
    RUN.create_database()
    try:
        yield DB_URL
    finally:
        RUN.drop_database()


@pytest.fixture(scope="session", autouse=True)
def redis_keyspace() -> Iterator[str]:
    """This run's Redis key prefix; every key under it is deleted at the end."""
    yield KEY_PREFIX
    RUN.purge_keys()
    RUN.remove_metrics()


@pytest.fixture
def make_caller(database: str):
    """Create a principal with a token; returns (token, Caller)."""
    from app.auth import Role, authenticate, create_token
    from app.db import unit_of_work

    def make(owner: str | None = None, role: str = "user"):
        owner = owner or f"owner-{uuid.uuid4().hex[:8]}"
        with unit_of_work() as uow:
            token = create_token(uow.session, owner, Role(role))
        with unit_of_work() as uow:
            caller = authenticate(uow.session, token)
        return token, caller

    return make


@pytest.fixture(scope="module")
def client(database: str) -> Iterator[TestClient]:
    """A test client over the whole HTTP app, one per test module, for tests that look at the
    answers and the database rather than at follow-ups: the sender is `helpers.no_send`, and a
    server error comes back as a 500 for the test to see instead of being raised.

    Imported here, not at the top, so `app` reads its settings only after the environment above
    is set; a module that needs another app (its own engine or sender) defines its own `client`.
    """
    from app.http import create_app
    from tests.integration.helpers import no_send

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
        from starlette.testclient import TestClient

    with TestClient(create_app(sender=no_send), raise_server_exceptions=False) as c:
        yield c
