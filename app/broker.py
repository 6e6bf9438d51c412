"""The broker as senders see it: the Celery client, the one `Sender`, and daemon commands.

Why it lives in `app` and not in `workers`: the API module, the HTTP front, the outbox relay
and the workers all send, and `app` must not import the workers. The Celery settings are the
contract between a sender and the worker that receives, so they are built here once and the
worker app (`workers.celery_app`) is this same Celery instance with its tasks registered.

Why each setting is what it is:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its
  task finished, so a worker killed mid-task leaves it unacknowledged and another worker
  runs it again (every task is idempotent, so running twice is safe).
- `worker_prefetch_multiplier = 1`: a worker holds one message per process beyond the one
  it runs; a long batch cannot hoard messages that another worker could take.
- `visibility_timeout` (broker transport option): how long an unacknowledged message stays
  hidden before Redis hands it out again. It is longer than the longest task plus any
  countdown we schedule (countdowns are capped at half of it, see `send_task`).
- `unacked_restore_interval`/`unacked_restore_throttle`: how soon a dead worker's messages
  come back.
- `worker_cancel_long_running_tasks_on_connection_loss`: after a broker outage the message
  will be redelivered anyway, so the running copy is cancelled rather than finished twice.
- Separate queues routed by the task name's prefix (`app.queues`), so a worker pool per queue
  can be sized and a batch never starves heartbeats.
- JSON only: a message anyone can read in `dead_letters`, and no pickle from the network.
  Heartbeat lists travel as `application/x-makima-json` (`FAST_JSON`): the same JSON text,
  encoded and decoded by orjson. A list of 500 is decoded twice per delivery (Celery's worker
  decodes the body in its main process to tell protocol 1 from 2, then the pool process decodes
  it for the task) and encoded once by the sender; kombu's `json` takes 2-5 ms for each, orjson
  a fifth to a tenth of that. Other tasks keep kombu's `json`, whose typed values (a `UUID` or
  `datetime` argument comes back as one) they may rely on.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import orjson
from celery import Celery
from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue
from kombu.serialization import register as register_serializer

from app.config import Settings, get_settings
from app.queues import Queue, TaskName, queue_for
from app.redis_transport import TRANSPORT as REDIS_TRANSPORT

# Heartbeat lists' serializer (see the module docstring): plain JSON text, orjson both ways.
FAST_JSON: Final = "makima-json"
FAST_JSON_CONTENT_TYPE: Final = "application/x-makima-json"


class _DecodeOnce:
    """orjson's decode, which hands the same text's value to its second reader.

    Celery's worker decodes every task body in the process that receives it (to tell protocol
    1 from 2: `'args' in message.payload`, `celery.worker.strategy`) and again to run the task;
    a solo-pool worker (the heartbeats', see `app.service_commands`) does both, one after the
    other, on the same text: a list of 340 heartbeats is about 0.7 ms each time. The first
    reader only looks, so the second (the task) takes the value it made. Each value is handed
    out twice at most, and only to the same text (compared whole): any other caller gets a
    fresh decode.
    """

    def __init__(self) -> None:
        self._last: tuple[str | bytes, Any] | None = None

    def __call__(self, text: str | bytes) -> Any:
        last, self._last = self._last, None
        if last is not None and last[0] == text:
            return last[1]
        value = orjson.loads(text)
        self._last = (text, value)
        return value


register_serializer(
    FAST_JSON, orjson.dumps, _DecodeOnce(), content_type=FAST_JSON_CONTENT_TYPE, content_encoding="utf-8"
)
# Tasks whose messages use it: their payloads are JSON values only (no UUID or datetime objects).
FAST_JSON_TASKS: Final = frozenset({TaskName.INGEST_HEARTBEATS.value})

TASK_EXCHANGE = Exchange("makima", type="direct")
DAEMON_EXCHANGE = Exchange("makima.daemon", type="direct", durable=True)
# Daemon ids are chosen by clients and are not unique across owners, so every daemon queue is an
# owner's: `daemon.commands.<owner token>.<daemon key>`, and commands that name no daemon (a
# contract whose supervisor never said which daemon runs it) go to the owner's own
# `daemon.commands.<owner token>`. No owner's command is ever on a queue another owner reads.
DAEMON_QUEUE_PREFIX: Final = "daemon.commands"
# A daemon id becomes part of a queue name and a routing key as it is, when it is made of these
# characters; any other id (spaces, slashes, non-ASCII, kombu's binding separator "\x06\x16",
# ...) is named by a digest instead (`daemon_queue_key`).
SAFE_DAEMON_ID: Final = re.compile(r"[A-Za-z0-9._:@-]{1,200}")


class Sender(Protocol):
    """Hands one task message to the broker and returns its task id.

    The one way a sender is injected: the unit of work's outbox, the API module and the HTTP
    front all take one, so tests and benchmarks can capture or fail sends without a broker.
    """

    def __call__(self, task: str, payload: dict[str, Any], countdown: float | None = None, /) -> str: ...


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str]:
    return {"queue": queue_for(name).value}


BROKER_SOCKET_TIMEOUT_SECONDS: Final = 2.0


def build_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("makima", broker=settings.effective_broker_url, backend=settings.result_backend)
    transport: dict[str, Any] = {
        # A broker that accepts the connection and then never answers (hung, paused, a
        # network that drops packets) must fail a send as a refused connection does, not hold
        # the sending thread (an API worker thread) for ever: each attempt gives up after
        # this long, and Celery's few publish retries keep the whole send to seconds.
        "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
        "visibility_timeout": settings.visibility_timeout_seconds,
        "unacked_restore_interval": settings.unacked_restore_interval_seconds,
        "unacked_restore_throttle": 1,
    }
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    if urlsplit(settings.effective_broker_url).scheme in ("redis", "rediss"):
        # kombu's Redis transport, keeping one client per channel (see app.redis_transport).
        app.conf.broker_transport = REDIS_TRANSPORT
    app.conf.update(
        task_serializer="json",
        accept_content=["json", FAST_JSON_CONTENT_TYPE],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=settings.result_backend is None,
        task_default_queue=Queue.CONTRACTS.value,
        task_queues=[KombuQueue(q.value, TASK_EXCHANGE, routing_key=q.value) for q in Queue],
        task_default_exchange=TASK_EXCHANGE.name,
        task_routes=(_route,),
        broker_transport_options=transport,
        # Two more attempts after the first (each a new connection when the last one broke):
        # enough to ride over a broker restart's dropped connections, short enough that a
        # broker that does not answer costs a caller about three socket timeouts, not five.
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        enable_utc=True,
    )
    return app


_celery: Celery | None = None
_celery_lock = threading.Lock()


def get_celery() -> Celery:
    """The process's one Celery instance, built on first use from the settings."""
    global _celery
    with _celery_lock:
        if _celery is None:
            _celery = build_celery()
        return _celery


def send_task(task: str, payload: dict[str, Any], countdown: float | None = None, /) -> str:
    """The default `Sender`: one task message on the queue its name picks.

    A countdown is capped at half the broker's visibility timeout: Redis would otherwise
    hand a message still waiting for its ETA to a second worker. Countdown tasks re-check
    their time and reschedule themselves, so a capped wait only means one more hop.
    """
    if countdown is not None:
        countdown = min(countdown, get_settings().visibility_timeout_seconds / 2)
    task_id = str(uuid.uuid4())
    get_celery().send_task(
        task,
        args=[payload],
        task_id=task_id,
        # No sender reads a result (only the id goes back), and every task of ours ignores its
        # own; without this a configured result backend had each send subscribe to the task's
        # result channel (Celery's `on_task_call`), a Redis round trip and a listener per send.
        ignore_result=True,
        queue=queue_for(task).value,
        countdown=countdown if countdown and countdown > 0 else None,
        serializer=FAST_JSON if task in FAST_JSON_TASKS else None,
    )
    return task_id


def owner_queue_token(owner_id: str) -> str:
    """What an owner id becomes in its daemons' queue names: `o` and the first 32 hex digits of
    its SHA-256 (UTF-8). Always a digest, so it has one fixed shape (no dot, no separator) and
    no owner id, however it is spelled, can name another owner's queues."""
    return "o" + hashlib.sha256(owner_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def daemon_queue_key(daemon_id: str) -> str:
    """What a daemon's id becomes in its queue name and routing key.

    Daemon ids come from clients (a heartbeat's or a report's `daemonId`: 1 to 200 characters,
    anything but NUL). An id of letters, digits and `. _ : @ -` is used as it is; any other id
    becomes `~` and the first 32 hex digits of its SHA-256 (UTF-8), so no client can reach a
    name kombu's Redis bindings cannot hold. The owner token in front (fixed shape, no dot)
    keeps one owner's daemon queues apart from every other owner's.
    """
    if SAFE_DAEMON_ID.fullmatch(daemon_id):
        return daemon_id
    return "~" + hashlib.sha256(daemon_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def daemon_queue(owner_id: str, daemon_id: str | None) -> KombuQueue:
    """The durable queue an owner's daemon reads: `daemon.commands.<owner token>.<key>`, bound
    with `daemon.<owner token>.<key>` on the daemon exchange; `daemon_id` None is the owner's own
    queue for commands that name no daemon, `daemon.commands.<owner token>`."""
    owner = owner_queue_token(owner_id)
    if daemon_id is None:
        return KombuQueue(
            f"{DAEMON_QUEUE_PREFIX}.{owner}", DAEMON_EXCHANGE, routing_key=f"daemon.{owner}", durable=True
        )
    key = daemon_queue_key(daemon_id)
    return KombuQueue(
        f"{DAEMON_QUEUE_PREFIX}.{owner}.{key}",
        DAEMON_EXCHANGE,
        routing_key=f"daemon.{owner}.{key}",
        durable=True,
    )


def publish_daemon_commands(commands: Sequence[tuple[str, dict[str, Any]]]) -> None:
    """Publish commands, each `(owner id, body)` to its daemon's queue (declared on the way,
    durable, JSON).

    The owner of the command's contract and the body's `daemonId` pick the queue
    (`daemon_queue`); a command with no daemon goes to the owner's own queue. Retries the
    connection like every send.
    """
    with get_celery().producer_or_acquire() as producer:
        for owner_id, body in commands:
            queue = daemon_queue(owner_id, body.get("daemonId"))
            producer.publish(
                body,
                exchange=DAEMON_EXCHANGE,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
                retry=True,
            )


__all__ = [
    "BROKER_SOCKET_TIMEOUT_SECONDS",
    "DAEMON_EXCHANGE",
    "DAEMON_QUEUE_PREFIX",
    "FAST_JSON",
    "FAST_JSON_CONTENT_TYPE",
    "FAST_JSON_TASKS",
    "SAFE_DAEMON_ID",
    "Sender",
    "build_celery",
    "daemon_queue",
    "daemon_queue_key",
    "get_celery",
    "owner_queue_token",
    "publish_daemon_commands",
    "send_task",
]
