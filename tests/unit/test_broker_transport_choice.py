"""Which kombu transport the broker URL gets: ours for redis:// and rediss://, kombu's otherwise."""

from __future__ import annotations

import pytest

from app.broker import build_celery
from app.config import Settings
from app.redis_transport import TRANSPORT


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://cache.example:6380/1"])
def test_a_redis_broker_uses_the_transport_that_keeps_its_clients(url: str) -> None:
    assert build_celery(Settings(broker_url=url)).conf.broker_transport == TRANSPORT


@pytest.mark.parametrize(
    "url", ["redis+socket:///tmp/makima/redis.sock", "amqp://guest:guest@127.0.0.1:5672//"]
)
def test_other_brokers_keep_the_transport_their_scheme_names(url: str) -> None:
    assert build_celery(Settings(broker_url=url)).conf.broker_transport is None
