"""Unit tests touch no files of the project: the metrics' multiprocess directory, which
importing `app.metrics` creates (`<data dir>/metrics`, so `.makima/metrics` in a checkout),
is a temporary one of this run's, removed at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

_METRICS = tempfile.mkdtemp(prefix="makima-unit-metrics-")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", _METRICS)


@pytest.fixture(scope="session", autouse=True)
def _no_metrics_left_behind() -> Iterator[None]:
    yield
    shutil.rmtree(_METRICS, ignore_errors=True)
