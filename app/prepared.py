"""Server-side prepared statements for the hot paths on PostgreSQL (psycopg2 has none of its own).

Measured here, PostgreSQL spent more time parsing and planning the guarded phase change's two
statements than executing them: with `PREPARE`d statements the same transaction took two
thirds of the time. psycopg2 sends every statement as text, so the few statements on the hot
paths are prepared by name once per database connection and then run with `EXECUTE`.

The SQL given here uses `%(name)s` placeholders like any psycopg2 statement; it is turned
into `$n` for `PREPARE`, and the `EXECUTE` passes the values in the same order. A prepared
statement lives as long as its connection (it is not undone by ROLLBACK); a connection that
is replaced starts with none. Behind a transaction-pooling proxy (pgbouncer in transaction
mode) named statements do not survive between transactions: set
`database_prepared_statements = false` there.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_INFO_KEY = "makima.prepared"


@lru_cache(maxsize=512)
def _prepared_form(sql: str) -> tuple[str, tuple[str, ...]]:
    """(statement name, the SQL with `$n` placeholders, the parameter names in `$n` order)."""
    order = tuple(dict.fromkeys(_PLACEHOLDER.findall(sql)))
    position = {name: i + 1 for i, name in enumerate(order)}
    body = _PLACEHOLDER.sub(lambda m: f"${position[m.group(1)]}", sql)
    return body, order


def statement_name(sql: str) -> str:
    return "mk_" + hashlib.sha1(sql.encode()).hexdigest()[:16]


def _compose(
    connection: Connection, sql: str | Sequence[str], prepare: bool, before: str, then: str
) -> tuple[str, list[str]]:
    """The one string sent, and the names of the statements it prepares on this connection."""
    statements = [sql] if isinstance(sql, str) else list(sql)
    parts = [before] if before else []
    names: list[str] = []
    if not prepare or connection.dialect.name != "postgresql":
        parts.extend(statements)
    else:
        known: set[str] = connection.info.setdefault(_INFO_KEY, set())
        for one in statements:
            name, prepared, executed = _prepared_parts(one)
            if name not in known and name not in names:
                parts.append(prepared)
            parts.append(executed)
            names.append(name)
    if then:
        parts.append(then)
    return "; ".join(parts), names


@lru_cache(maxsize=512)
def _prepared_parts(sql: str) -> tuple[str, str, str]:
    """(statement name, its `PREPARE`, its `EXECUTE` with `%(name)s` arguments), once per SQL."""
    body, order = _prepared_form(sql)
    name = statement_name(sql)
    args = ", ".join(f"%({n})s" for n in order)
    executed = f"EXECUTE {name}({args})" if order else f"EXECUTE {name}"
    return name, f"PREPARE {name} AS {body.replace('%', '%%')}", executed


def driver_rows(
    connection: Connection,
    sql: str | Sequence[str],
    params: Mapping[str, Any],
    *,
    prepare: bool = True,
    before: str = "",
    then: str = "",
) -> list[tuple[Any, ...]]:
    """Run `sql` (psycopg2 `%(name)s` style): prepared on PostgreSQL when `prepare`, else as
    text; the last statement's rows as plain tuples, read on the driver's own cursor.

    The first run on a connection sends `PREPARE` and `EXECUTE` in one round trip. Several
    statements (a sequence, sharing `params`) go in that one round trip too, each its own
    snapshot under READ COMMITTED, run in order: a row lock and then a read that must see
    everything committed before the lock was granted. `before` and `then` are statements
    without parameters sent first and last (`BEGIN`, `COMMIT`).

    For the hot paths, whose rows are read by position. SQLAlchemy builds a textual
    statement's result description anew on every call (nothing to cache it by), which on the
    contract's row with its gate facts cost more CPU than the database spent on the statement.
    Everything else a `Connection` does for an execute is kept: the `before_cursor_execute`
    listeners run (the statement counts in tests, the deferred `BEGIN`), and a driver error is
    raised as SQLAlchemy's, the connection invalidated when the driver says it is gone, so the
    transient-error retry and the error handlers see what they always saw.
    """
    text, names = _compose(connection, sql, prepare, before, then)
    arguments: Any = dict(params)
    driver = connection.connection.dbapi_connection
    if driver is None:  # pragma: no cover - a checked-out connection always has one
        raise RuntimeError("no driver connection")
    cursor = driver.cursor()
    try:
        for listener in connection.dispatch.before_cursor_execute:
            text, arguments = listener(connection, cursor, text, arguments, None, False)
        try:
            cursor.execute(text, arguments)
            rows = cursor.fetchall() if cursor.description is not None else []
        except connection.dialect.loaded_dbapi.Error as error:
            gone = connection.dialect.is_disconnect(error, driver, cursor)
            # A `PREPARE` sent with a statement that then failed may or may not exist now: it
            # outlives the failed transaction when it ran, and the next `PREPARE` of its name
            # on this connection would fail for ever ("already exists"); not sent again, an
            # `EXECUTE` would fail if it did not run. Which is unknowable without asking, so
            # the connection is dropped (the pool opens another): rare, and always right.
            uncertain = not gone and "PREPARE " in text
            wrapped = DBAPIError.instance(
                text,
                arguments,
                error,
                connection.dialect.loaded_dbapi.Error,
                connection_invalidated=gone,
                dialect=connection.dialect,
            )
            if gone or uncertain:
                connection.invalidate(error)
            raise wrapped from error
    finally:
        if not connection.invalidated:
            cursor.close()
    if names:
        connection.info[_INFO_KEY].update(names)
    return list(rows)


__all__ = ["driver_rows", "statement_name"]
