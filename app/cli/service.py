"""`makima run` and `makima migrate`: the operator's commands for the service itself."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.console import err
from app.cli.errors import load_settings


def run(
    worker_concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes in the main worker's prefork pool (contracts, sweeps); the heartbeat "
            "and batch workers run one process each.",
        ),
    ] = 2,
    stop_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a child has to stop before it is killed.")
    ] = 10.0,
) -> None:
    """Run the API, the workers and beat; with no servers configured, on SQLite + embedded Redis.

    The workers: one for contracts and sweeps (prefork), one for heartbeats (solo pool), one
    for batch operations. Stops everything on Ctrl-C. A process that dies on its own is started
    again; one that dies 3 times within 60 s stops everything, and the run exits non-zero.
    """
    settings = load_settings()
    from app.service_runner import RunOptions
    from app.service_runner import run as run_service

    code = run_service(settings, RunOptions(worker_concurrency=worker_concurrency, stop_timeout=stop_timeout))
    raise typer.Exit(code)


def migrate(
    revision: Annotated[str, typer.Option(help="Alembic revision to upgrade to.")] = "head",
) -> None:
    """Upgrade the database schema (safe to repeat)."""
    from app.config import safe_url
    from app.db import migrate as upgrade
    from app.service_runner import ensure_sqlite_directory

    url = load_settings().effective_database_url
    ensure_sqlite_directory(url)
    upgrade(url, revision)
    err.print(f"Database {safe_url(url)} is at {revision}.", markup=False)


__all__ = ["migrate", "run"]
