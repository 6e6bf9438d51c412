"""Engines, sessions and the unit of work shared by the API, the HTTP front and the workers.

A unit of work is one transaction. Work that must reach the broker (follow-up tasks, daemon
commands) is collected on it and handed to its dispatcher only after COMMIT succeeds: a
crash between the two leaves a committed row and no message, never a message about a row
that does not exist (DESIGN: enqueue after commit). Rolled-back work dispatches nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import get_settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class Dispatch:
    """A message to send once the transaction that decided it has committed."""

    task: str
    payload: dict[str, Any]
    countdown: float | None = None


class Dispatcher(Protocol):
    def __call__(self, messages: list[Dispatch]) -> None: ...


def _no_dispatch(messages: list[Dispatch]) -> None:
    if messages:
        raise RuntimeError(f"no dispatcher configured for {[m.task for m in messages]}")


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


@dataclass
class UnitOfWork:
    session: Session
    outbox: list[Dispatch] = field(default_factory=list)

    def dispatch_after_commit(
        self, task: str, payload: dict[str, Any], countdown: float | None = None
    ) -> None:
        self.outbox.append(Dispatch(task, payload, countdown))

    @property
    def is_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"


@contextmanager
def unit_of_work(dispatcher: Dispatcher | None = None, engine: Engine | None = None) -> Iterator[UnitOfWork]:
    """One transaction: commit on success, roll back on error, dispatch only after commit."""
    factory = sessionmaker(bind=engine or get_engine(), expire_on_commit=False)
    with factory() as session:
        uow = UnitOfWork(session)
        with session.begin():
            yield uow
        if uow.outbox:
            (dispatcher or _no_dispatch)(list(uow.outbox))


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
    "Dispatcher",
    "UnitOfWork",
    "alembic_config",
    "dispose_engines",
    "downgrade",
    "get_engine",
    "migrate",
    "unit_of_work",
]
