"""The queues, one per kind of work, so a long batch never starves heartbeats."""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    CONTRACTS = "contracts"  # task completed, deliverables, auto-advance, completion flow
    HEARTBEATS = "heartbeats"  # supervisor heartbeats, batched
    BATCH = "batch"  # user batch operations: long, low priority
    SWEEPS = "sweeps"  # beat-scheduled maintenance


def queue_for(task_name: str) -> Queue:
    """Tasks are named `<queue-ish prefix>.<verb>`; the prefix picks the queue."""
    prefix = task_name.split(".", 1)[0]
    return {
        "contracts": Queue.CONTRACTS,
        "heartbeats": Queue.HEARTBEATS,
        "batch": Queue.BATCH,
        "sweeps": Queue.SWEEPS,
    }.get(prefix, Queue.CONTRACTS)
