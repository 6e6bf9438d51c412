"""A plain Redis client on the broker's server, for the few things Celery does not count."""

from __future__ import annotations

from functools import lru_cache

import redis

from app.config import get_settings


@lru_cache(maxsize=1)
def broker_redis() -> redis.Redis:
    """The broker's Redis (TCP or the embedded unix socket); keys must carry the key prefix."""
    url = get_settings().effective_broker_url
    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def broker_key(name: str) -> str:
    return f"{get_settings().broker_key_prefix}makima:{name}"
