"""The schema the HTTP front serves from: Alembic builds exactly the models, and can undo it.

Runs on its own fresh PostgreSQL database (not the session's), because it downgrades to an
empty schema and back.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.db import downgrade, migrate
from app.models import Base
from tests.integration.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration


def _admin(sql: str) -> None:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()


@pytest.fixture
def scratch_database() -> Iterator[str]:
    name = f"makima_migrate_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _schema_differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_upgrade_cleanly_and_match_the_models(scratch_database: str) -> None:
    model_tables = set(Base.metadata.tables)

    migrate(scratch_database)
    assert _tables(scratch_database) == model_tables | {"alembic_version"}

    downgrade(scratch_database)
    assert _tables(scratch_database) <= {"alembic_version"}

    migrate(scratch_database)
    assert _tables(scratch_database) == model_tables | {"alembic_version"}
    assert _schema_differences(scratch_database) == []
