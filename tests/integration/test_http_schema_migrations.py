"""The schema the HTTP front serves from: Alembic builds exactly the models, and can undo it.

Runs on its own fresh PostgreSQL database (not the session's), because it downgrades to an
empty schema and back.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from app.db import downgrade, migrate
from app.models import SERVER_ONLY_COLUMNS, SERVER_ONLY_INDEXES, Base
from tests.isolation import Isolation

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_database() -> Iterator[str]:
    scratch = Isolation("makima_migrate")
    scratch.create_database(migrated=False)
    try:
        yield scratch.db_url
    finally:
        scratch.drop_database()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _not_server_only(obj: object, name: str | None, type_: str, reflected: bool, _other: object) -> bool:
    """Leave out what PostgreSQL keeps and the models do not map (`app.models.SERVER_ONLY_*`)."""
    if type_ == "column":
        return (getattr(getattr(obj, "table", None), "name", None), name) not in SERVER_ONLY_COLUMNS
    return not (type_ == "index" and name in SERVER_ONLY_INDEXES)


def _schema_differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_object": _not_server_only,
                },
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
