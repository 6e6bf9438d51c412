"""A statement prepared in a round trip that failed never poisons its connection.

`app.prepared.driver_rows` sends `PREPARE name AS ...; EXECUTE name(...)` in one round trip
the first time a connection runs a statement. When the `EXECUTE` fails (bad input the database
refuses, a deadlock, a cancel), the `PREPARE` has run and outlives the transaction; the
connection must not then send `PREPARE name` again (PostgreSQL: "prepared statement already
exists") on every later use.
"""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from app.db import driver_autocommit, get_settings
from app.prepared import driver_rows

pytestmark = pytest.mark.integration

SQL = "SELECT %(id)s::uuid AS id"


def test_a_failed_first_execute_leaves_the_next_use_of_the_pool_working() -> None:
    url = get_settings().effective_database_url
    if not url.startswith("postgresql"):
        pytest.skip("prepared statements are PostgreSQL's")
    engine = create_engine(url, pool_size=1, max_overflow=0)  # one connection: the same one is reused
    try:
        with driver_autocommit(engine) as connection, pytest.raises(DBAPIError) as refused:
            driver_rows(connection, SQL, {"id": "not-a-uuid"})
        assert "invalid input syntax for type uuid" in str(refused.value)
        for _ in range(3):
            with driver_autocommit(engine) as connection:
                rows = driver_rows(connection, SQL, {"id": "6a674d20-ce05-4aa6-8a33-b1138c462682"})
            assert str(rows[0][0]) == "6a674d20-ce05-4aa6-8a33-b1138c462682"
    finally:
        engine.dispose()


def test_a_failure_after_the_statement_is_prepared_keeps_the_connection() -> None:
    """Once prepared (known on the connection), a failing EXECUTE sends no PREPARE: nothing is
    uncertain and the connection stays in the pool."""
    url = get_settings().effective_database_url
    if not url.startswith("postgresql"):
        pytest.skip("prepared statements are PostgreSQL's")
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        with driver_autocommit(engine) as connection:
            driver_rows(connection, SQL, {"id": "6a674d20-ce05-4aa6-8a33-b1138c462682"})
            backend = driver_rows(connection, "SELECT pg_backend_pid()", {}, prepare=False)[0][0]
        with driver_autocommit(engine) as connection, pytest.raises(DBAPIError):
            driver_rows(connection, SQL, {"id": "not-a-uuid"})
        with driver_autocommit(engine) as connection:
            assert driver_rows(connection, "SELECT pg_backend_pid()", {}, prepare=False)[0][0] == backend
    finally:
        engine.dispose()
