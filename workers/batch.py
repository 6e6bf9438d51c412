"""Batch operations on the `batch` queue: one delivery works a slice, then re-enqueues the batch.

The task is idempotent (the batch's cursor and items are committed with each chunk), so a
redelivery after a worker was killed resumes where the last chunk committed.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from app import batch, batch_runner
from app.broker import send_task
from app.config import get_settings
from app.db import get_engine
from app.messages import decode
from app.queues import TaskName
from workers.base import AccountableTask
from workers.celery_app import celery_app


class BatchRef(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)

    batch_id: uuid.UUID


@celery_app.task(name=TaskName.RUN_BATCH, base=AccountableTask)
def run_batch(message: Any) -> bool:
    ref = decode(BatchRef, message)
    settings = get_settings()
    runner = batch_runner.Runner(engine=get_engine(), sender=send_task, settings=settings)
    finished = batch_runner.run_batch(runner, ref.batch_id, slice_seconds=batch.slice_seconds(settings))
    if not finished:
        send_task(TaskName.RUN_BATCH, {"batchId": str(ref.batch_id)})
    return finished
