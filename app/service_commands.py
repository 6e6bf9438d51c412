"""The production commands `makima run` starts as its children, and what they share.

The API (uvicorn), a Celery worker for contracts and sweeps, one for heartbeats, one for batch
operations, and Celery beat: the production commands, so the embedded service runs production
code paths (eager mode is never used). The Celery children start through `app.sweep_logging`,
so sweeps that did nothing do not fill the log. Built here without starting anything, so a
test can read them.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from app.child_processes import Child
from app.config import Settings
from app.queues import Queue

if TYPE_CHECKING:
    from app.service_runner import RunOptions

# The main worker takes everything but batch operations and heartbeats. Batch operations get a
# worker of their own so a long batch never holds the process a task-completed message waits
# for. Heartbeats get one too, on Celery's solo pool: a heartbeat list is a short,
# database-bound task, and a prefork worker's main process handing each list (about 150 KB)
# to its pool process cost about 5 µs of CPU per heartbeat (bench/heartbeats.py --cpu); a
# burst of heartbeats never delays a task report or a sweep either. One solo process per core.
WORKER_QUEUES = ",".join(q.value for q in Queue if q not in (Queue.BATCH, Queue.HEARTBEATS))
HEARTBEAT_QUEUES = Queue.HEARTBEATS.value
BATCH_QUEUES = Queue.BATCH.value
# The lines Celery logs once a worker consumes (celery.apps.worker: "<hostname> ready.") and
# once beat's scheduler runs (celery.beat: "beat: Starting...").
WORKER_READY = re.compile(r"@\S+ ready\.\s*$")
BEAT_READY = re.compile(r"beat: Starting\.\.\.")
# The HTTP body limit (`app.http.limits.MAX_BODY_BYTES`), for uvicorn's WebSocket frames; a
# unit test holds the two equal (this module does not import the HTTP package).
WS_MAX_MESSAGE_BYTES = 1024 * 1024
# uvicorn's h11 protocol with a deadline for each request's head (`app.http.head_deadline`).
HTTP_PROTOCOL = "app.http.head_deadline:HeadDeadlineProtocol"


def child_commands(settings: Settings, options: RunOptions, group_pid: int) -> list[Child]:
    """The production commands, pointed at this run's settings (tested without starting them)."""
    celery = [sys.executable, "-m", "app.sweep_logging", "-A", "workers.celery_app"]
    return [
        Child(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.http:app",
                "--host",
                settings.http_host,
                "--port",
                str(settings.http_port),
                # The live monitor sends every event to every subscriber: per-message deflate
                # would compress each one once per connection, a third of the API's CPU per
                # delivery (bench/monitor.py); events are small JSON, sent uncompressed.
                "--ws-per-message-deflate",
                "false",
                # A WebSocket message is at most what an HTTP body may be (1 MiB; uvicorn's own
                # default is 16): the monitor reads a whole frame before it can judge it.
                "--ws-max-size",
                str(WS_MAX_MESSAGE_BYTES),
                # A request's line and headers must arrive within 10 s (uvicorn has no such
                # deadline: a connection trickling its headers was held for ever).
                "--http",
                HTTP_PROTOCOL,
                # An open monitor websocket must not hold a shutdown forever.
                "--timeout-graceful-shutdown",
                str(max(int(options.stop_timeout / 2), 1)),
            ],
        ),
        Child(
            "worker",
            [
                *celery,
                "worker",
                "-Q",
                WORKER_QUEUES,
                "--pool",
                "prefork",
                "--concurrency",
                str(options.worker_concurrency),
                "--hostname",
                f"makima-run-{group_pid}@%h",
                "--loglevel",
                "INFO",
            ],
            WORKER_READY,
        ),
        Child(
            "heartbeat-worker",
            [
                *celery,
                "worker",
                "-Q",
                HEARTBEAT_QUEUES,
                "--pool",
                "solo",
                # Solo runs one task at a time whatever this says; said, so the worker's banner
                # does not print the default (the number of CPUs) as its concurrency.
                "--concurrency",
                "1",
                "--hostname",
                f"makima-run-heartbeats-{group_pid}@%h",
                "--loglevel",
                "INFO",
            ],
            WORKER_READY,
        ),
        Child(
            "batch-worker",
            [
                *celery,
                "worker",
                "-Q",
                BATCH_QUEUES,
                "--pool",
                "prefork",
                "--concurrency",
                "1",
                "--hostname",
                f"makima-run-batch-{group_pid}@%h",
                "--loglevel",
                "INFO",
            ],
            WORKER_READY,
        ),
        Child(
            "beat",
            [
                *celery,
                "beat",
                "--schedule",
                str(settings.data_dir / "celerybeat-schedule"),
                "--loglevel",
                "INFO",
            ],
            BEAT_READY,
        ),
    ]


def child_environment(settings: Settings, embedded_broker: bool) -> dict[str, str]:
    """What the children must agree on, made explicit rather than re-derived from the cwd.

    The data directory is passed absolute and the embedded broker's socket URL is exported,
    so every child talks to the SQLite file and the Redis this process owns even if it
    resolves paths differently. `MAKIMA_DATABASE_URL` is deliberately not set: children
    must still see `settings.embedded` as true.
    """
    env = dict(os.environ)
    env["MAKIMA_DATA_DIR"] = str(settings.data_dir)
    if embedded_broker:
        env["MAKIMA_BROKER_URL"] = settings.effective_broker_url
    env["PYTHONUNBUFFERED"] = "1"
    return env


__all__ = [
    "BATCH_QUEUES",
    "BEAT_READY",
    "HEARTBEAT_QUEUES",
    "HTTP_PROTOCOL",
    "WORKER_QUEUES",
    "WORKER_READY",
    "WS_MAX_MESSAGE_BYTES",
    "child_commands",
    "child_environment",
]
