"""The processes `makima run` starts, read from their command lines (nothing is started).

The workers split the queues so that neither a long batch nor a burst of heartbeats holds a
process a task report waits for; heartbeats run on Celery's solo pool (README: Heartbeats).
"""

from __future__ import annotations

import pytest

from app.child_processes import NAME_WIDTH, Child
from app.config import Settings
from app.queues import Queue
from app.service_commands import WORKER_READY, child_commands
from app.service_runner import RunOptions


@pytest.fixture
def children() -> dict[str, Child]:
    return {c.name: c for c in child_commands(Settings(), RunOptions(), 4242)}


def option(child: Child, flag: str) -> str:
    return child.argv[child.argv.index(flag) + 1]


def test_makima_run_starts_the_api_three_workers_and_beat(children: dict[str, Child]) -> None:
    assert list(children) == ["api", "worker", "heartbeat-worker", "batch-worker", "beat"]


def test_the_workers_together_consume_every_queue_each_once(children: dict[str, Child]) -> None:
    workers = [c for c in children.values() if "worker" in c.argv]
    queues = [q for c in workers for q in option(c, "-Q").split(",")]
    assert sorted(queues) == sorted(q.value for q in Queue)


def test_heartbeats_have_a_solo_pool_worker_of_their_own(children: dict[str, Child]) -> None:
    heartbeats = children["heartbeat-worker"]
    assert option(heartbeats, "-Q") == "heartbeats"
    assert option(heartbeats, "--pool") == "solo"
    assert option(heartbeats, "--hostname") == "makima-run-heartbeats-4242@%h"
    assert heartbeats.ready_pattern is WORKER_READY
    assert option(children["worker"], "-Q").split(",") == ["contracts", "sweeps"]


def test_every_worker_has_a_node_name_of_its_own(children: dict[str, Child]) -> None:
    names = [option(c, "--hostname") for c in children.values() if "worker" in c.argv]
    assert len(set(names)) == len(names) == 3


def test_every_child_name_fits_the_relayed_output_column(children: dict[str, Child]) -> None:
    assert max(len(name) for name in children) < NAME_WIDTH  # a space before the bar
