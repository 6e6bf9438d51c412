"""Prometheus metrics (seed 8.3): counters counted where the work happens, gauges read at scrape.

Two kinds, and where each number comes from:

- **Counters, prometheus-client multiprocess mode**: `phase_transitions_total{from,to}`,
  `completion_detections_total`, `supervisor_restarts_total`, `contract_events_total{type}`
  (every event recorded, the ingestion count) and `supervisor_heartbeats_total`. They are
  incremented in whichever process did the work (a Celery worker child, an API process),
  right after its transaction committed (`count_committed_events`, called by
  `app.db.unit_of_work`, so a rolled-back change counts nothing and no domain module knows
  about Prometheus; the heartbeat ingestion, whose statements write their events themselves,
  counts them by type with `count_events`). Each process writes its own memory-mapped file
  in the metrics directory (`PROMETHEUS_MULTIPROC_DIR`, else `<data_dir>/metrics`); a scrape of any API
  process on the host sums every file. One directory per host: each host's API is scraped.
  Wipe the directory when the whole service restarts (counters then start again from zero,
  which Prometheus reads as a reset).
- **Gauges and counters read from the database at scrape time** (exact whichever process
  did the work, on any host): `contracts_by_status{status}`, `contracts_stale_count`,
  `batch_operations_total{operation}` (the batch work keeps it in `metric_counters`),
  `dead_letters{state}` (waiting/replayed), `reports_by_outcome{status}`
  (pending/applied/refused) and `task_outbox_backlog`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, func, inspect, select

from app.config import get_settings

log = logging.getLogger(__name__)


def metrics_dir() -> Path:
    """Where this host's processes keep their counters (created on first use)."""
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    path = Path(named) if named else get_settings().data_dir / "metrics"
    path.mkdir(parents=True, exist_ok=True)
    return path


# Multiprocess mode must be chosen before the first metric is built: prometheus-client reads
# PROMETHEUS_MULTIPROC_DIR when it is imported, so the directory is set (and the value class
# switched, in case something imported prometheus-client first) before any metric exists.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir())

from prometheus_client import (  # noqa: E402
    CollectorRegistry,
    Counter,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric  # noqa: E402
from prometheus_client.registry import Collector  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]

_REGISTRY: Final = CollectorRegistry()  # the counters are built here, not in the global registry

PHASE_TRANSITIONS: Final = Counter(
    "phase_transitions", "Phase changes, by from and to phase.", ["from", "to"], registry=_REGISTRY
)
COMPLETION_DETECTIONS: Final = Counter(
    "completion_detections", "Contracts whose completion was detected.", registry=_REGISTRY
)
SUPERVISOR_HEARTBEATS: Final = Counter(
    "supervisor_heartbeats", "Supervisor heartbeats received.", registry=_REGISTRY
)
SUPERVISOR_RESTARTS: Final = Counter(
    "supervisor_restarts", "Supervisor restarts requested or performed.", registry=_REGISTRY
)
CONTRACT_EVENTS: Final = Counter(
    "contract_events", "Contract events recorded (committed), by type.", ["type"], registry=_REGISTRY
)

_RESTART_TYPES: Final = frozenset({"supervisor_restart_requested", "supervisor_restarted"})

# Bounded by the label sets that exist: event types, and phase pairs of the configured phases.
_children: dict[tuple[int, tuple[str, ...]], Counter] = {}


def _child(counter: Counter, labels: tuple[str, ...]) -> Counter:
    key = (id(counter), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = counter.labels(*labels)
    return child


def count_committed_events(events: Iterable[dict[str, Any]]) -> None:
    """Count a committed transaction's events; never raises (metrics must not fail a commit).

    Called after every commit on the hot paths: the labelled counters are looked up once per
    label set (`_child`), not through `labels()` each time.
    """
    try:
        for event in events:
            kind = str(event.get("type", ""))
            _child(CONTRACT_EVENTS, (kind,)).inc()
            payload = event.get("payload") or {}
            if kind == "phase_changed":
                _child(PHASE_TRANSITIONS, (str(payload.get("oldPhase")), str(payload.get("newPhase")))).inc()
            elif kind == "completion_detected":
                COMPLETION_DETECTIONS.inc()
            elif kind in _RESTART_TYPES:
                SUPERVISOR_RESTARTS.inc()
    except Exception:
        log.exception("metrics: committed events not counted")


def count_events(counts: Mapping[str, int]) -> None:
    """Count events a committed transaction wrote by its own statements: `counts` by type.

    For writers whose events never pass through the unit of work's held rows, so that
    `count_committed_events` cannot see them: the heartbeat ingestion's statements write its
    `supervisor_state_changed` events and answer only how many. Only `contract_events_total`
    moves; the counters read from an event's payload (phase transitions) need the rows.
    Never raises.
    """
    try:
        for kind, n in counts.items():
            if n > 0:
                _child(CONTRACT_EVENTS, (kind,)).inc(n)
    except Exception:
        log.exception("metrics: committed events not counted")


def count_heartbeats(n: int = 1) -> None:
    """For the heartbeat ingestion: call after the batch committed, with how many it stored."""
    try:
        SUPERVISOR_HEARTBEATS.inc(n)
    except Exception:
        log.exception("metrics: heartbeats not counted")


class DatabaseCollector(Collector):
    """The gauges computed from the rows at scrape time (a handful of indexed aggregates)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        from app.domain.lifecycle import Status
        from app.models import Contract, DeadLetter, MessageOutcome, OutboxMessage, utcnow

        settings = get_settings()
        by_status = GaugeMetricFamily("contracts_by_status", "Contracts by status.", labels=["status"])
        with self.engine.connect() as conn:
            counts = {
                status: n
                for status, n in conn.execute(select(Contract.status, func.count()).group_by(Contract.status))
            }
            for status in Status:
                by_status.add_metric([status.value], counts.get(status.value, 0))
            yield by_status
            # The one stale rule (the list filter, the dashboard and the sweep use it too).
            from app.sweeps import stale_criteria, stale_threshold

            stale = conn.execute(
                select(func.count())
                .select_from(Contract)
                .where(stale_criteria(utcnow(), stale_threshold(settings)))
            ).scalar_one()
            yield GaugeMetricFamily(
                "contracts_stale_count",
                "Contracts stale by the one rule: active or created, silent past the stale threshold.",
                value=stale,
            )
            tables = set(inspect(conn).get_table_names())
            batches = CounterMetricFamily(
                "batch_operations", "Batch operations, by operation.", labels=["operation"]
            )
            if "metric_counters" in tables:
                from sqlalchemy import text

                for label, value in conn.execute(
                    text("SELECT label, value FROM metric_counters WHERE metric = 'batch_operations_total'")
                ).all():
                    batches.add_metric([str(label)], int(value))
            yield batches
            letters = GaugeMetricFamily("dead_letters", "Dead-lettered messages, by state.", labels=["state"])
            replayed = func.count(DeadLetter.replayed_at)
            total, done = conn.execute(select(func.count(), replayed)).one()
            letters.add_metric(["waiting"], total - done)
            letters.add_metric(["replayed"], done)
            yield letters
            outcomes = GaugeMetricFamily(
                "reports_by_outcome", "Reports accepted from senders, by outcome.", labels=["status"]
            )
            for status_name, count in conn.execute(
                select(MessageOutcome.status, func.count()).group_by(MessageOutcome.status)
            ).all():
                outcomes.add_metric([str(status_name)], count)
            yield outcomes
            backlog = conn.execute(select(func.count()).select_from(OutboxMessage)).scalar_one()
            yield GaugeMetricFamily(
                "task_outbox_backlog",
                "Follow-up tasks committed but not yet handed to the broker.",
                value=backlog,
            )


def render(engine: Engine) -> bytes:
    """The text exposition: every process's counters on this host plus the database's gauges."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir()))  # type: ignore[no-untyped-call]
    registry.register(DatabaseCollector(engine))
    return generate_latest(registry)


__all__ = [
    "COMPLETION_DETECTIONS",
    "PHASE_TRANSITIONS",
    "SUPERVISOR_HEARTBEATS",
    "SUPERVISOR_RESTARTS",
    "DatabaseCollector",
    "count_committed_events",
    "count_events",
    "count_heartbeats",
    "metrics_dir",
    "render",
]
