"""The API module opens only a database that is the service's (README "From a Python daemon").

- With no MAKIMA_DATABASE_URL it opens the embedded `<data_dir>/makima.db`. Where that file
  does not exist (a daemon started outside the project directory, without MAKIMA_DATA_DIR)
  it refuses with `DatabaseNotReady`, naming the file, the data directory and why it is that
  one, and what to do; it creates nothing (no stray `.makima/`, which would make the
  directory look like a project to every later command).
- A database that exists but holds no schema is refused the same way, not with the driver's
  "no such table".
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from app.api import ContractsAPI
from app.config import ConfigError, Settings
from app.database_ready import DatabaseNotReady, require_existing_database

DAEMON = """
from app.api import ContractsAPI
ContractsAPI("mk_not-a-real-token")
"""


def clean_environment() -> dict[str, str]:
    """This process's environment without any MAKIMA_* variable, as a newcomer's shell has it."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("MAKIMA_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_a_daemon_outside_the_project_is_told_which_database_is_missing_and_creates_none(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, "-c", DAEMON],
        cwd=tmp_path,
        env=clean_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("app.database_ready.DatabaseNotReady: No makima database at "), run.stderr
    assert str(tmp_path.resolve() / ".makima" / "makima.db") in last
    assert "nothing was created" in last
    assert "which has no makima.toml or .makima/ in it or above" in last
    for advice in ("project directory", "MAKIMA_DATA_DIR=", "makima migrate"):
        assert advice in last, last
    assert "OperationalError" not in run.stderr
    assert list(tmp_path.iterdir()) == [], "the refused daemon left files behind"


def test_a_data_dir_named_by_makima_data_dir_is_said_to_come_from_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.upper().startswith("MAKIMA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAKIMA_CONFIG", os.devnull)
    monkeypatch.setenv("MAKIMA_DATA_DIR", str(tmp_path / "elsewhere"))

    with pytest.raises(DatabaseNotReady, match="set by MAKIMA_DATA_DIR") as refused:
        require_existing_database(Settings())

    assert str(tmp_path / "elsewhere" / "makima.db") in str(refused.value)
    assert isinstance(refused.value, ConfigError), "the CLI prints it as a configuration error"
    assert not (tmp_path / "elsewhere").exists()


def test_an_existing_database_is_accepted(tmp_path: Path) -> None:
    sqlite3.connect(tmp_path / "makima.db").close()

    require_existing_database(Settings(database_url=None, data_dir=tmp_path))


def test_a_configured_server_database_is_not_judged_by_a_file(tmp_path: Path) -> None:
    require_existing_database(Settings(database_url="postgresql://db.invalid/makima", data_dir=tmp_path))


def test_a_database_without_the_schema_is_named_instead_of_a_missing_table(tmp_path: Path) -> None:
    empty = tmp_path / "makima.db"
    sqlite3.connect(empty).close()
    engine = create_engine(f"sqlite:///{empty}")

    with pytest.raises(DatabaseNotReady) as refused:
        ContractsAPI("mk_not-a-real-token", engine=engine)

    message = str(refused.value)
    assert message.startswith(
        f"The database at sqlite:///{empty} has no makima schema (no table 'principals'"
    )
    assert "no such table: principals" in message
    assert "makima migrate" in message
    assert refused.value.__cause__ is None
