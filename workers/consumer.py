"""A Celery consumer that keeps what it cannot run instead of logging and dropping it.

Celery acknowledges an undecodable message and rejects an unknown or malformed task
message, both after a log line; here each of them is first written to `dead_letters`.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

from workers.dead_letter import park_raw


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        park_raw(message, f"message body does not decode: {type(exc).__name__}: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        park_raw(message, "not a Celery task message (no task name in its headers)")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        park_raw(message, f"no such task on this worker: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        park_raw(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)
