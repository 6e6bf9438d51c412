"""Engines, sessions and the unit of work shared by the API, the HTTP front and the workers.

A unit of work is one transaction. Follow-up tasks are written to the `task_outbox` table in
that transaction and handed to the broker only after COMMIT succeeds: a message never names
a row that does not exist (DESIGN: enqueue after commit), rolled-back work sends nothing,
and a crash or broker failure between COMMIT and the send leaves an unsent outbox row that
the `sweeps.relay_outbox` job sends later, so no decided follow-up is lost.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import Settings, get_settings
from app.models import OutboxMessage, utcnow

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
                engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def upsert_ignoring(session: Session, model: type[DeclarativeBase], conflict: list[str]) -> Any:
    """`INSERT ... ON CONFLICT (conflict) DO NOTHING` in the session's dialect.

    PostgreSQL and SQLite spell it the same way but SQLAlchemy builds it from each dialect's
    own `insert`; this is the one place that picks, so callers stay dialect-free. Returns the
    statement; add `.values(...)` and execute it (its rowcount says whether a row went in).
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(model).on_conflict_do_nothing(index_elements=conflict)


@dataclass
class UnitOfWork:
    """One transaction, the settings it runs under, and the follow-ups it decided."""

    session: Session
    settings: Settings = field(default_factory=get_settings)
    outbox: list[tuple[Dispatch, OutboxMessage]] = field(default_factory=list)

    def dispatch_after_commit(
        self, task: str, payload: dict[str, Any], countdown: float | None = None
    ) -> None:
        """Record a follow-up in this transaction; it is sent once the transaction commits."""
        now = utcnow()
        row = OutboxMessage(
            task=task,
            payload=payload,
            not_before=now + timedelta(seconds=countdown) if countdown else None,
            created_at=now,
        )
        self.session.add(row)
        self.outbox.append((Dispatch(task, payload, countdown), row))


@contextmanager
def unit_of_work(
    sender: Sender | None = None, engine: Engine | None = None, settings: Settings | None = None
) -> Iterator[UnitOfWork]:
    """One transaction: commit on success, roll back on error, dispatch only after commit.

    Follow-ups are rows of `task_outbox` committed with the change. After COMMIT they are
    handed to the sender and marked sent; if that fails, or there is no sender, they
    stay unsent and `sweeps.relay_outbox` sends them later. The caller's change is committed
    either way, so a broker hiccup never turns a success into an error.
    """
    bind = engine or get_engine()
    factory = sessionmaker(bind=bind, expire_on_commit=False)
    with factory() as session:
        uow = UnitOfWork(session, settings or get_settings())
        with session.begin():
            yield uow
        if uow.outbox:
            _send_outbox(bind, uow.outbox, sender)


def _send_outbox(engine: Engine, outbox: list[tuple[Dispatch, OutboxMessage]], sender: Sender | None) -> None:
    if sender is None:
        return
    try:
        for message, _ in outbox:
            sender(message.task, message.payload, message.countdown)
    except Exception:
        log.exception("follow-ups %s not sent; the outbox relay will send them", [m.task for m, _ in outbox])
        return
    mark_sent(engine, [row.id for _, row in outbox])


def mark_sent(engine: Engine, ids: list[int]) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(update(OutboxMessage).where(OutboxMessage.id.in_(ids)).values(sent_at=utcnow()))
    except Exception:
        # Sent but not marked: the relay sends them again, which idempotent tasks absorb.
        log.exception("could not mark outbox rows %s as sent", ids)


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
    "alembic_config",
    "dispose_engines",
    "downgrade",
    "get_engine",
    "mark_sent",
    "migrate",
    "unit_of_work",
    "upsert_ignoring",
]
