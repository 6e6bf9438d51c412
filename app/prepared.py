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

from sqlalchemy import Connection, CursorResult

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


def execute_sql(
    connection: Connection,
    sql: str | Sequence[str],
    params: Mapping[str, Any],
    *,
    prepare: bool = True,
    before: str = "",
    then: str = "",
) -> CursorResult[Any]:
    """Run `sql` (psycopg2 `%(name)s` style): prepared on PostgreSQL when `prepare`, else as text.

    The first run on a connection sends `PREPARE` and `EXECUTE` in one round trip. Several
    statements (a sequence, sharing `params`) go in that one round trip too, each its own
    snapshot under READ COMMITTED, run in order: a row lock and then a read that must see
    everything committed before the lock was granted. `before` and `then` are statements
    without parameters sent first and last (`BEGIN`, `COMMIT`); the result is always the last
    statement's.
    """
    statements = [sql] if isinstance(sql, str) else list(sql)
    parts = [before] if before else []
    names: list[str] = []
    if not prepare or connection.dialect.name != "postgresql":
        parts.extend(statements)
    else:
        known: set[str] = connection.info.setdefault(_INFO_KEY, set())
        for one in statements:
            body, order = _prepared_form(one)
            name = statement_name(one)
            args = ", ".join(f"%({n})s" for n in order)
            if name not in known and name not in names:
                parts.append(f"PREPARE {name} AS {body.replace('%', '%%')}")
            parts.append(f"EXECUTE {name}({args})" if order else f"EXECUTE {name}")
            names.append(name)
    if then:
        parts.append(then)
    result = connection.exec_driver_sql("; ".join(parts), dict(params))
    if names:
        connection.info[_INFO_KEY].update(names)
    return result


__all__ = ["execute_sql", "statement_name"]
