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


def test_a_broker_that_never_answers_fails_a_send_within_seconds(tmp_path: Any) -> None:
    """A paused redis-server (it accepts connections and never answers, as a hung or
    partitioned broker does) fails a send after the socket timeout and Celery's few retries,
    as a refused connection does, instead of holding the sender (an API thread) for ever."""
    import os
    import shutil
    import signal
    import socket
    import subprocess
    import time

    from celery.exceptions import CeleryError
    from kombu.exceptions import OperationalError

    from app.broker import BROKER_SOCKET_TIMEOUT_SECONDS, build_celery
    from app.config import Settings

    server = shutil.which("redis-server")
    if server is None:  # pragma: no cover - the machine's Redis 7 provides it
        pytest.skip("no redis-server binary")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while redis.Redis(port=port).ping() is not True:  # pragma: no cover - starts at once
            assert time.monotonic() < deadline
        app = build_celery(Settings(broker_url=f"redis://127.0.0.1:{port}/0"))
        app.send_task("contracts.evaluate_progress", args=[{"contractId": "probe"}], queue=PROBE_QUEUE)
        os.kill(proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises((OperationalError, redis.TimeoutError, redis.ConnectionError, CeleryError)):
            app.send_task("contracts.evaluate_progress", args=[{"contractId": "probe"}], queue=PROBE_QUEUE)
        waited = time.monotonic() - started
        print(f"a send to a paused broker failed after {waited:.1f} s")
        assert waited < 8 * BROKER_SOCKET_TIMEOUT_SECONDS, waited
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)


def test_heartbeat_lists_travel_as_orjson_text_and_other_tasks_as_kombu_json(redis_keyspace: str) -> None:
    """Heartbeat lists are the one payload of JSON values only that is large and frequent: they
    go as `application/x-makima-json` (orjson both ways); every other task keeps kombu's JSON."""
    import base64
    import json

    from kombu.serialization import loads

    from app.broker import FAST_JSON_CONTENT_TYPE, send_task
    from app.heartbeat_messages import message_of
    from app.queues import Queue, TaskName

    payload = message_of({"p-1": [{"taskId": "t", "contractId": "c", "currentActivity": "écrit"}]})
    send_task(TaskName.INGEST_HEARTBEATS.value, payload)
    send_task(TaskName.EVALUATE_PROGRESS.value, {"contractId": "probe"})

    plain = redis.Redis.from_url(REDIS_URL)
    try:
        envelopes = {}
        for queue in (Queue.HEARTBEATS, Queue.CONTRACTS):
            key = f"{redis_keyspace}{queue.value}"
            (raw,) = plain.lrange(key, 0, -1)
            plain.delete(key)
            envelopes[queue] = json.loads(raw)
    finally:
        plain.close()

    beat = envelopes[Queue.HEARTBEATS]
    assert beat["content-type"] == FAST_JSON_CONTENT_TYPE
    body = base64.b64decode(beat["body"])
    # Plain JSON text any reader can decode (a dead letter stays readable), and the worker's
    # accept list takes it.
    assert json.loads(body)[0] == [payload]
    args = loads(body, beat["content-type"], beat["content-encoding"], accept=[FAST_JSON_CONTENT_TYPE])[0]
    assert args == [payload]
    assert envelopes[Queue.CONTRACTS]["content-type"] == "application/json"


def test_sends_with_a_result_backend_configured_ask_for_no_result(
    redis_keyspace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No sender reads a task's result, so a send does not subscribe to it even where a result
    backend is configured (for Flower, say): the message says `ignore_result` and the backend's
    result consumer is never started."""
    import json

    import app.broker as broker
    from app.config import get_settings
    from app.queues import Queue, TaskName

    settings = get_settings().model_copy(update={"result_backend": REDIS_URL})
    with_backend = broker.build_celery(settings)
    monkeypatch.setattr(broker, "_celery", with_backend)
    broker.send_task(TaskName.EVALUATE_PROGRESS.value, {"contractId": "probe"})

    plain = redis.Redis.from_url(REDIS_URL)
    try:
        key = f"{redis_keyspace}{Queue.CONTRACTS.value}"
        (raw,) = plain.lrange(key, 0, -1)
        plain.delete(key)
    finally:
        plain.close()
    assert json.loads(raw)["headers"]["ignore_result"] is True
    assert with_backend.backend.result_consumer._pubsub is None
