"""Integration tests run against the real PostgreSQL and Redis on this machine.

Each run makes its own database (`makima_test_<random>`) and its own Redis keyspace (a key
prefix), so it passes whatever else runs on the machine, and removes both at the end. The
environment is set before any `app` module reads its settings.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

RUN_ID = uuid.uuid4().hex[:10]
PG_ADMIN_URL = os.environ.get(
    "MAKIMA_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MAKIMA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DB_NAME = f"makima_test_{RUN_ID}"
DB_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"
KEY_PREFIX = f"makima-test-{RUN_ID}:"

os.environ.update(
    {
        "MAKIMA_DATABASE_URL": DB_URL,
        "MAKIMA_BROKER_URL": REDIS_URL,
        "MAKIMA_BROKER_KEY_PREFIX": KEY_PREFIX,
        "MAKIMA_VISIBILITY_TIMEOUT_SECONDS": "6",
        "MAKIMA_UNACKED_RESTORE_INTERVAL_SECONDS": "1",
        "MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES": "0.02",
        "MAKIMA_CONTRACTS__STALE_DETECTION_INTERVAL_SECONDS": "2",
        "MAKIMA_CONFIG": "/nonexistent/makima.toml",
    }
)


def _admin_exec(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def database() -> Iterator[str]:
    """A fresh PostgreSQL database at the head migration, dropped after the run."""
    from app.db import dispose_engines, migrate

    _admin_exec(f'CREATE DATABASE "{DB_NAME}"')
    try:
        migrate(DB_URL)
        yield DB_URL
    finally:
        dispose_engines()
        _admin_exec(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session", autouse=True)
def redis_keyspace() -> Iterator[str]:
    """This run's Redis key prefix; every key under it is deleted at the end."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield KEY_PREFIX
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
