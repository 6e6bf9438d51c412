"""Whether the database a daemon is about to use exists and holds the schema.

SQLite creates a missing file on connect, so a daemon that imports the API module outside
the project directory (with no `MAKIMA_DATA_DIR`) would otherwise create an empty
`./.makima/makima.db` where it runs, fail on its first query with "no such table", and leave
behind a `.makima/` that makes that directory look like a project to every later command.
The API module asks here first, and says which database it looked for and how to point it
at the service's.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from app.config import ConfigError, Settings, find_project_dir

# A table every migrated database has: the first thing the API module reads (the caller's token).
SCHEMA_MARKER = "principals"

_POINT_AT_THE_SERVICE = (
    "Run the daemon from the project directory, or set MAKIMA_DATA_DIR=/path/to/project/.makima "
    "(MAKIMA_DATABASE_URL and MAKIMA_BROKER_URL for a PostgreSQL and Redis service)"
)


class DatabaseNotReady(ConfigError):
    """The database the settings name does not exist, or holds no schema: nothing was created."""


def _data_dir_origin(settings: Settings) -> str:
    """Where the data directory came from, so the reader sees why it is this one."""
    if "MAKIMA_DATA_DIR" in os.environ:
        return "set by MAKIMA_DATA_DIR"
    project = find_project_dir()
    if project is None:
        return (
            f"the default for the working directory {Path.cwd()}, which has no makima.toml or "
            ".makima/ in it or above"
        )
    return f"the data directory of the project at {project}"


def require_existing_database(settings: Settings) -> None:
    """Refuse, before anything connects, an embedded SQLite database whose file is missing."""
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return
    path = Path(url.database)
    if path.is_file():
        return
    origin = f" ({_data_dir_origin(settings)})" if settings.embedded else ""
    raise DatabaseNotReady(
        f"No makima database at {path}; nothing was created. With no MAKIMA_DATABASE_URL the API "
        f"module opens makima.db in the data directory {settings.data_dir}{origin}. "
        f"{_POINT_AT_THE_SERVICE}; to start a new database there, run 'makima migrate' (or "
        "'makima run') with the same settings."
    )


def missing_schema(engine: Engine, error: SQLAlchemyError) -> DatabaseNotReady | None:
    """The explanation of `error` when the database lacks the schema; None for any other fault."""
    try:
        if inspect(engine).has_table(SCHEMA_MARKER):
            return None
    except SQLAlchemyError:
        return None
    said = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
    return DatabaseNotReady(
        f"The database at {engine.url.render_as_string(hide_password=True)} has no makima schema "
        f"(no table '{SCHEMA_MARKER}'; the database said: {said}). "
        f"{_POINT_AT_THE_SERVICE}, or create the schema with 'makima migrate' with the same settings."
    )


__all__ = ["SCHEMA_MARKER", "DatabaseNotReady", "missing_schema", "require_existing_database"]
