"""The Celery app: broker, queues, routing and the settings that lose nothing.

Why each setting is what it is:
- `task_acks_late` + `task_reject_on_worker_lost`: a message is acknowledged only after its
  task finished, so a worker killed mid-task leaves it unacknowledged and another worker
  runs it again (every task is idempotent, so running twice is safe).
- `worker_prefetch_multiplier = 1`: a worker holds one message per process beyond the one
  it runs; a long batch cannot hoard messages that another worker could take.
- `visibility_timeout` (broker transport option): how long an unacknowledged message stays
  hidden before Redis hands it out again. It is longer than the longest task plus any
  countdown we schedule (completion grace), otherwise a healthy task would run twice.
- `unacked_restore_interval`/`unacked_restore_throttle`: how soon a dead worker's messages
  come back.
- `worker_cancel_long_running_tasks_on_connection_loss`: after a broker outage the message
  will be redelivered anyway, so the running copy is cancelled rather than finished twice.
- Separate queues (`contracts`, `heartbeats`, `batch`, `sweeps`) routed by task-name prefix,
  so a worker pool per queue can be sized and a batch never starves heartbeats.
- JSON only: a message anyone can read in `dead_letters`, and no pickle from the network.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Exchange
from kombu.entity import Queue as KombuQueue

from app.config import Settings, get_settings
from workers.queues import Queue, queue_for


def _route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str]:
    return {"queue": queue_for(name).value}


def build_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("makima", broker=settings.effective_broker_url, backend=settings.result_backend)
    transport: dict[str, Any] = {
        "visibility_timeout": settings.visibility_timeout_seconds,
        "unacked_restore_interval": settings.unacked_restore_interval_seconds,
        "unacked_restore_throttle": 1,
    }
    if settings.broker_key_prefix:
        transport["global_keyprefix"] = settings.broker_key_prefix
    exchange = Exchange("makima", type="direct")
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=settings.result_backend is None,
        task_default_queue=Queue.CONTRACTS.value,
        task_queues=[KombuQueue(q.value, exchange, routing_key=q.value) for q in Queue],
        task_default_exchange=exchange.name,
        task_routes=(_route,),
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_consumer="workers.consumer:DeadLetteringConsumer",
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
        timezone="UTC",
        enable_utc=True,
        beat_schedule=_beat_schedule(settings),
        include=["workers.contracts", "workers.sweeps"],
    )
    return app


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    from beat_schedule import build_schedule

    return build_schedule(settings)


celery_app = build_app()

__all__ = ["build_app", "celery_app"]
