"""A run's own PostgreSQL database and Redis key prefix, for tests and benchmarks alike.

Whatever else runs on the machine, a run touches only `<label>_<random>` in PostgreSQL and
keys under `<label>-<random>:` in Redis, and removes both when it is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PG_ADMIN_URL = os.environ.get(
    "TEST_MAKIMA_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_MAKIMA_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass(frozen=True)
class Isolation:
    label: str
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def db_name(self) -> str:
        return f"{self.label}_{self.run_id}"

    @property
    def db_url(self) -> str:
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.db_name}"

    @property
    def key_prefix(self) -> str:
        return f"{self.label.replace('_', '-')}-{self.run_id}:"

    @property
    def metrics_dir(self) -> Path:
        """This run's Prometheus counters: two runs in one checkout must not add to each other's."""
        return Path(tempfile.gettempdir()) / f"{self.label}-{self.run_id}-metrics"

    def environment(self) -> dict[str, str]:
        """Settings that point `app` at this run's database, keyspace, counters and no config file."""
        return {
            "MAKIMA_DATABASE_URL": self.db_url,
            "MAKIMA_BROKER_URL": REDIS_URL,
            "MAKIMA_BROKER_KEY_PREFIX": self.key_prefix,
            "MAKIMA_CONFIG": "/dev/null",  # no config file, wherever the tests run
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }

    def remove_metrics(self) -> None:
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def create_database(self, migrated: bool = True) -> None:
        """Create the database, migrated to head unless the caller wants it empty."""
        _admin(f'CREATE DATABASE "{self.db_name}"')
        if migrated:
            from app.db import migrate

            migrate(self.db_url)

    def drop_database(self) -> None:
        from app.db import dispose_engines

        dispose_engines()
        _admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def purge_keys(self) -> None:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()
