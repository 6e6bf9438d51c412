"""Quiet sweeps: the lines Celery logs at INFO for beat's sweeps that did nothing, at DEBUG.

Beat sends every sweep every `stale_detection_interval_seconds`, and Celery logs three INFO
lines per run whatever happened: beat's "Scheduler: Sending due task", the worker's "Task
... received" and "Task ... succeeded in ...: 0". On an idle service that is all the log
says, and a real event scrolls away among them. This module demotes exactly those lines to
DEBUG (shown with `--loglevel DEBUG`, dropped otherwise):

- beat's "Sending due task" and the worker's "received" for a `sweeps.*` task (what a sweep
  did is said by its result line, so these two carry nothing);
- the worker's "succeeded" line for a `sweeps.*` task whose result says it did nothing
  (the sweeps return how many items they handled: 0).

A sweep that handled something, every other task, and every warning or failure keep their
level. Celery's own loggers are `celery.beat`, `celery.worker.strategy` and
`celery.app.trace`; a filter on a logger survives Celery's logging setup (which replaces
handlers, not filters) and the fork of the prefork pool, where tasks run.

`python -m app.sweep_logging ARGS` is `celery ARGS` with the filter installed: what
`makima run` starts for its worker and beat children.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

SWEEP_PREFIX: Final = "sweeps."
# What a sweep's result looks like when it did nothing (Celery logs the repr of the result).
NOTHING_DONE: Final = frozenset({"0", "None", "[]", "{}", "()"})

BEAT_LOGGER: Final = "celery.beat"
RECEIVED_LOGGER: Final = "celery.worker.strategy"
TRACE_LOGGER: Final = "celery.app.trace"
BEAT_SENDING: Final = "Scheduler: Sending due task"
# celery.app.trace.LOG_RECEIVED / LOG_SUCCESS, matched by their fixed beginning and end.
RECEIVED_SUFFIX: Final = "] received"
SUCCEEDED_MARK: Final = "] succeeded in "


def _context(record: logging.LogRecord) -> Mapping[str, Any]:
    """Celery's trace and strategy lines pass one dict as their formatting arguments."""
    return record.args if isinstance(record.args, Mapping) else {}


def is_quiet_sweep(record: logging.LogRecord) -> bool:
    """Whether `record` is routine noise of a sweep that had nothing to do."""
    message = str(record.msg)
    if record.name == BEAT_LOGGER and message.startswith(BEAT_SENDING):
        args = record.args if isinstance(record.args, tuple) else ()
        return len(args) >= 2 and str(args[1]).startswith(SWEEP_PREFIX)
    context = _context(record)
    if not str(context.get("name", "")).startswith(SWEEP_PREFIX):
        return False
    if record.name == RECEIVED_LOGGER and message.endswith(RECEIVED_SUFFIX):
        return True
    if record.name == TRACE_LOGGER and SUCCEEDED_MARK in message:
        return str(context.get("return_value", "")).strip() in NOTHING_DONE
    return False


class QuietSweeps(logging.Filter):
    """Demote a quiet sweep's INFO line to DEBUG: shown only if DEBUG is on for its logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not is_quiet_sweep(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def install() -> None:
    """Attach the filter to the three Celery loggers that write the routine lines."""
    quiet = QuietSweeps()
    for name in (BEAT_LOGGER, RECEIVED_LOGGER, TRACE_LOGGER):
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietSweeps) for f in logger.filters):
            logger.addFilter(quiet)


def main() -> None:
    """`celery ARGS` with quiet sweeps (the umbrella command reads sys.argv itself)."""
    install()
    from celery.__main__ import main as celery_main

    celery_main()


if __name__ == "__main__":
    main()


__all__ = ["QuietSweeps", "install", "is_quiet_sweep", "main"]
