"""Engines, sessions and the unit of work shared by the API, the HTTP front and the workers.

A unit of work is one transaction. Follow-up tasks are written to the `task_outbox` table in
that transaction and handed to the broker only after COMMIT succeeds: a message never names
a row that does not exist (enqueue after commit), rolled-back work sends nothing, and a
crash or broker failure between COMMIT and the send leaves an outbox row that the
`sweeps.relay_outbox` job sends later, so no decided follow-up is lost.

Connections are not pinged on every checkout (that was a round trip per transaction on the
hot paths). A connection idle for longer than `IDLE_PING_SECONDS` is pinged before use, which
covers a database that restarted while the process slept; a connection that breaks under
load fails its transaction with a transient error that workers retry and the HTTP front
answers 503 with Retry-After; `pool_recycle` bounds a connection's age.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import Settings, get_settings
from app.live_events import events_committed
from app.models import utcnow
from app.outbox import close_sent_rows, sent_rows
from app.pending_writes import PendingWrites, hold_contract_changes, hold_outbox_row, write_pending

if TYPE_CHECKING:
    from app.broker import Sender

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A message to send once the transaction that decided it has committed."""

    task: str
    payload: dict[str, Any]
    countdown: float | None = None


_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout and BEGIN IMMEDIATE: SQLite's stand-in for SELECT ... FOR UPDATE.

    Taking the write lock at BEGIN makes read-check-write transactions serial, the same
    guarantee the row lock gives on PostgreSQL, instead of failing at the first write.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


IDLE_PING_SECONDS = 30.0
RECYCLE_SECONDS = 1800


def _ping_when_idle(engine: Engine) -> None:
    """Pre-ping only connections that sat idle: a busy pool pays no extra round trip."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            # The ping must leave no transaction open: psycopg2 begins one with any statement
            # outside autocommit, and `driver_autocommit` (the hot paths) cannot switch a
            # connection to autocommit inside one ("set_session cannot be used inside a
            # transaction"), so every hot path failed on a connection idle this long.
            was = dbapi_conn.autocommit
            dbapi_conn.autocommit = True
            try:
                cursor = dbapi_conn.cursor()
                cursor.execute("SELECT 1")
                cursor.close()
            finally:
                dbapi_conn.autocommit = was
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("idle connection is gone") from exc


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().effective_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite":
                if parsed.database:
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30})
                _configure_sqlite(engine)
            else:
                engine = create_engine(url, pool_size=10, max_overflow=20, pool_recycle=RECYCLE_SECONDS)
                _ping_when_idle(engine)
                _begin_with_first_statement(engine)
            _engines[url] = engine
        return engine


@contextmanager
def driver_autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled PostgreSQL connection whose driver commits each statement, for one caller.

    For the hot paths that manage their transaction in their own SQL: one statement that is
    a transaction by itself, or `BEGIN` sent with the first statement and `COMMIT` with the
    last (psycopg2 would spend a round trip of its own on each). Whoever sends `BEGIN` here
    must send `COMMIT` or `ROLLBACK`. The driver's own switch, not SQLAlchemy's
    `isolation_level="AUTOCOMMIT"`, whose reset costs psycopg2 a round trip each way.
    """
    with engine.connect() as connection:
        driver = connection.connection.dbapi_connection
        if driver is None:  # pragma: no cover - a checked-out connection always has one
            raise RuntimeError("no driver connection")
        if driver.isolation_level is not None:
            # A connection once used with SQLAlchemy's AUTOCOMMIT comes back with READ COMMITTED
            # set by name; psycopg2 then spends a `SET default_transaction_isolation` round trip
            # on every switch out of autocommit. The server's default is the same level, so the
            # driver is told "default", which it keeps to itself.
            driver.isolation_level = None
        driver.autocommit = True
        try:
            yield connection
        finally:
            if not connection.invalidated:
                driver.autocommit = False


def dispose_engines() -> None:
    close_sent_rows()
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def dialect_insert_for(dialect: str, model: type[DeclarativeBase] | Table) -> Any:
    """An `INSERT` that can take `ON CONFLICT ...`, in the named dialect.

    PostgreSQL and SQLite spell upserts the same way but SQLAlchemy builds them from each
    dialect's own `insert`; this is the one place that picks, so callers stay dialect-free.
    """
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model)


def dialect_insert(session: Session, model: type[DeclarativeBase]) -> Any:
    """`dialect_insert_for` the session's own dialect."""
    return dialect_insert_for(session.get_bind().dialect.name, model)


def upsert_ignoring(session: Session, model: type[DeclarativeBase], conflict: list[str]) -> Any:
    """`INSERT ... ON CONFLICT (conflict) DO NOTHING`; add `.values(...)` and execute it.

    Its rowcount says whether a row went in.
    """
    return dialect_insert(session, model).on_conflict_do_nothing(index_elements=conflict)


@dataclass
class UnitOfWork:
    """One transaction, the settings it runs under, and the follow-ups it decided."""

    session: Session
    settings: Settings = field(default_factory=get_settings)
    outbox: list[Dispatch] = field(default_factory=list)

    def dispatch_after_commit(
        self, task: str, payload: dict[str, Any], countdown: float | None = None
    ) -> None:
        """Record a follow-up in this transaction; it is sent once the transaction commits."""
        now = utcnow()
        not_before = now + timedelta(seconds=countdown) if countdown else None
        hold_outbox_row(self.session, task, payload, not_before, now)
        self.outbox.append(Dispatch(task, payload, countdown))


_factories: dict[int, sessionmaker[Session]] = {}


def _session_factory(engine: Engine) -> sessionmaker[Session]:
    factory = _factories.get(id(engine))
    if factory is None or factory.kw["bind"] is not engine:
        factory = _factories[id(engine)] = sessionmaker(bind=engine, expire_on_commit=False)
        event.listen(factory, "before_flush", hold_contract_changes)
    return factory


@contextmanager
def unit_of_work(
    sender: Sender | None = None, engine: Engine | None = None, settings: Settings | None = None
) -> Iterator[UnitOfWork]:
    """One transaction: commit on success, roll back on error, dispatch only after commit.

    Follow-ups are rows of `task_outbox` committed with the change. After COMMIT they are
    handed to the sender and retired in batches off this path (`app.outbox.SentRows`); if
    the send fails, or there is no sender, they stay and `sweeps.relay_outbox` sends them
    later. The caller's change is committed either way, so a broker hiccup never turns a
    success into an error.
    """
    bind = engine or get_engine()
    with _session_factory(bind)() as session:
        uow = UnitOfWork(session, settings or get_settings())
        session.info["prepared_statements"] = uow.settings.database_prepared_statements
        with session.begin():
            yield uow
            written = write_pending(session)
        after_commit(bind, written, uow.outbox, sender)


@contextmanager
def hot_unit_of_work(
    sender: Sender | None = None, engine: Engine | None = None, settings: Settings | None = None
) -> Iterator[UnitOfWork]:
    """`unit_of_work` for a hot path on PostgreSQL: its `BEGIN` goes with its first statement.

    psycopg2 sends `BEGIN` as a round trip of its own; here the session runs on a connection
    in driver autocommit (`driver_autocommit`) and `BEGIN; ` is put in front of the first
    statement the transaction sends, `COMMIT` (or `ROLLBACK`) sent at the end. For code that
    neither commits nor rolls back inside its unit of work (a savepoint is fine): the report
    tasks of the workers. Elsewhere (SQLite) it is `unit_of_work`.
    """
    bind = engine or get_engine()
    if bind.dialect.name != "postgresql":
        with unit_of_work(sender, bind, settings) as uow:
            yield uow
        return
    with driver_autocommit(bind) as connection:
        # This connection's own dict, held here: a connection that breaks is invalidated,
        # and asking it for its info again would raise instead of the error that broke it.
        info = connection.info
        info[_BEGIN_PENDING] = True
        try:
            with _session_factory(bind)(bind=connection) as session:
                uow = UnitOfWork(session, settings or get_settings())
                session.info["prepared_statements"] = uow.settings.database_prepared_statements
                with session.begin():
                    yield uow
                    written = write_pending(session)
            if not info[_BEGIN_PENDING]:
                connection.exec_driver_sql("COMMIT")
        except BaseException:
            if not info[_BEGIN_PENDING] and not connection.invalidated:
                roll_back(connection)
            raise
        finally:
            info.pop(_BEGIN_PENDING, None)
    after_commit(bind, written, uow.outbox, sender)


_BEGIN_PENDING = "makima.begin_pending"


def _begin_with_first_statement(engine: Engine) -> None:
    """For `hot_unit_of_work`: the transaction's `BEGIN` sent in front of its first statement."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _prefix(
        conn: Connection, cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
    ) -> tuple[str, Any]:
        if conn.info.get(_BEGIN_PENDING):
            conn.info[_BEGIN_PENDING] = False
            if executemany:
                cursor.execute("BEGIN")
            else:
                statement = f"BEGIN; {statement}"
        return statement, parameters


def roll_back(connection: Connection) -> None:
    """End a failed transaction a connection opened itself; a connection that cannot is dropped."""
    if connection.invalidated:  # broken: the server ended the transaction with the session
        return
    try:
        connection.exec_driver_sql("ROLLBACK")
    except Exception:
        if not connection.invalidated:
            connection.invalidate()


def after_commit(
    engine: Engine, written: PendingWrites, outbox: list[Dispatch], sender: Sender | None
) -> None:
    """What follows a COMMIT: wake the live readers, count for /metrics, send the follow-ups.

    The unit of work calls it, and so does the guarded phase change's Core path
    (`app.contracts.change_phase_now`), which commits on a connection of its own.
    """
    if written.events:  # committed: wake the live readers, count for /metrics (app.live_events)
        events_committed(written.event_ids, written.events)
    if outbox:
        _send_outbox(engine, outbox, written.outbox_ids, sender)


def _send_outbox(engine: Engine, outbox: list[Dispatch], row_ids: list[int], sender: Sender | None) -> None:
    """Send the follow-ups; retire their rows only if every send went through.

    After a failed send all of them stay for the relay, which resends the ones that did go
    through too: tasks are idempotent, a lost follow-up would not be.
    """
    if sender is None:
        return
    try:
        for message in outbox:
            sender(message.task, message.payload, message.countdown)
    except (KombuOperationalError, redis.RedisError, OSError) as exc:
        # The broker is down or unreachable: expected, and the outbox holds them. One line,
        # not a traceback per command through an outage.
        log.warning(
            "follow-ups %s not sent (broker unavailable: %s); the outbox relay will send them",
            [m.task for m in outbox],
            exc,
        )
        return
    except Exception:
        log.exception("follow-ups %s not sent; the outbox relay will send them", [m.task for m in outbox])
        return
    sent_rows(engine).add(row_ids)


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` with Alembic; safe to run on every start."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def alembic_config(url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", (url or get_settings().effective_database_url).replace("%", "%%"))
    return cfg


__all__ = [
    "Dispatch",
    "UnitOfWork",
    "after_commit",
    "alembic_config",
    "dialect_insert",
    "dialect_insert_for",
    "dispose_engines",
    "downgrade",
    "driver_autocommit",
    "get_engine",
    "hot_unit_of_work",
    "migrate",
    "roll_back",
    "unit_of_work",
    "upsert_ignoring",
]
