"""Throwaway PostgreSQL databases and Redis key prefixes for benchmarks.

Call `isolate()` before importing `app`: it points the settings at a fresh database and key
prefix, which `cleanup()` removes again.
"""

from __future__ import annotations

import os
import uuid

PG_ADMIN_URL = os.environ.get(
    "MAKIMA_BENCH_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MAKIMA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def isolate(**extra_env: str) -> tuple[str, str]:
    run = uuid.uuid4().hex[:8]
    db_name = f"makima_bench_{run}"
    db_url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    prefix = f"makima-bench-{run}:"
    os.environ.update(
        {
            "MAKIMA_DATABASE_URL": db_url,
            "MAKIMA_BROKER_URL": REDIS_URL,
            "MAKIMA_BROKER_KEY_PREFIX": prefix,
            "MAKIMA_CONFIG": "/nonexistent/makima.toml",
            **extra_env,
        }
    )
    _admin(f'CREATE DATABASE "{db_name}"')
    from app.db import migrate

    migrate(db_url)
    return db_name, prefix


def cleanup(db_name: str, prefix: str) -> None:
    import redis

    from app.db import dispose_engines

    dispose_engines()
    _admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)


def _admin(sql: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(sql))
    engine.dispose()
