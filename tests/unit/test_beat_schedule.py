"""beat_schedule.py: every entry names a registered task on the `sweeps` queue, at its configured interval."""

from __future__ import annotations

from datetime import timedelta

from app.config import ContractsConfig, Settings
from app.queues import Queue, TaskName, queue_for

# Entries whose interval is `[contracts] stale_detection_interval_seconds` (seed 8.1).
ON_THE_SWEEP_INTERVAL = {
    "detect-stale": TaskName.DETECT_STALE,
    "pause-timed-out-inputs": TaskName.PAUSE_TIMED_OUT_INPUTS,
    "finalize-due-completions": TaskName.FINALIZE_DUE_COMPLETIONS,
    "delete-expired-archives": TaskName.DELETE_EXPIRED_ARCHIVES,
    "relay-outbox": TaskName.RELAY_OUTBOX,
    "resume-stalled-batches": TaskName.RESUME_STALLED_BATCHES,
    "cleanup-worktrees": TaskName.CLEANUP_WORKTREES,
}


def _settings(**contracts: float) -> Settings:
    return Settings(contracts=ContractsConfig(**contracts))  # type: ignore[arg-type]


def _configured_intervals(settings: Settings) -> set[float]:
    """Every duration the configuration holds, in seconds: an entry's interval must be one."""
    found: set[float] = set()
    for section in (
        settings.contracts,
        *(getattr(settings, n) for n in ("heartbeats",) if hasattr(settings, n)),
    ):
        for name, value in section.model_dump().items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                for unit, factor in (("_seconds", 1), ("_minutes", 60), ("_hours", 3600), ("_days", 86400)):
                    if name.endswith(unit):
                        found.add(float(value) * factor)
    return found


def test_every_entry_is_a_registered_sweep_at_a_configured_interval() -> None:
    from beat_schedule import build_schedule
    from workers.celery_app import celery_app

    celery_app.loader.import_default_modules()
    settings = _settings(stale_detection_interval_seconds=17)
    schedule = build_schedule(settings)
    intervals = _configured_intervals(settings)
    assert schedule, "beat has nothing to run"
    for name, entry in schedule.items():
        assert entry["task"] in celery_app.tasks, f"{name}: {entry['task']} is not registered"
        assert queue_for(entry["task"]) is Queue.SWEEPS, name
        assert entry["options"]["queue"] == Queue.SWEEPS.value, name
        interval = entry["schedule"]
        assert isinstance(interval, timedelta) and interval.total_seconds() in intervals, (name, interval)
        assert 0 < entry["options"]["expires"] <= interval.total_seconds(), name
    for name, task in ON_THE_SWEEP_INTERVAL.items():
        assert schedule[name]["task"] == task.value
        assert schedule[name]["schedule"] == timedelta(seconds=17), name


def test_the_intervals_follow_the_configuration() -> None:
    from beat_schedule import build_schedule

    fast = build_schedule(_settings(stale_detection_interval_seconds=2))
    assert fast["detect-stale"]["schedule"] == timedelta(seconds=2)
