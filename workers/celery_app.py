"""The worker's Celery app: the senders' Celery instance (`app.broker`) with the tasks on it.

The settings every sender and worker must agree on (queues, routing, acks, visibility
timeout) are built in `app.broker`; what only a worker or beat needs is added here: the
consumer that keeps undecodable messages as dead letters, the task modules and the beat
schedule.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from app.broker import get_celery
from app.config import Settings, get_settings


def build_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = get_celery()
    app.conf.update(
        worker_consumer="workers.consumer:DeadLetteringConsumer",
        beat_schedule=_beat_schedule(settings),
        include=["workers.contracts", "workers.sweeps", "workers.batch", "workers.heartbeats"],
    )
    return app


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    from beat_schedule import build_schedule

    return build_schedule(settings)


celery_app = build_app()

__all__ = ["build_app", "celery_app"]
