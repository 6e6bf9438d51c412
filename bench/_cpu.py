"""CPU seconds per process of a bench's run, labelled by the part each process plays.

On a 2-core machine every process of the pipeline (sender, worker main and pool processes,
PostgreSQL backends, Redis) shares the same cores, so a rate is bounded by the CPU all of
them spend per message: this says where that CPU goes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any


def cpu_seconds(pid: int) -> float | None:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def processes(procs: Iterable[Any], db_name: str, sender: str) -> dict[int, str]:
    """Every process that takes part, labelled: the sender (this process), each worker's main
    and pool processes, this database's PostgreSQL backends, PostgreSQL's shared processes
    (WAL writer, checkpointer...: other databases' work is in them too) and Redis."""
    import psutil

    from app.db import get_engine

    labels = {os.getpid(): sender}
    for w in procs:
        children = psutil.Process(w.proc.pid).children(recursive=True)
        labels[w.proc.pid] = (
            "worker main processes (receive, hand over to the pool)"
            if children
            else "worker processes (solo pool: receive, decode, check, write)"
        )
        for child in children:
            labels[child.pid] = "worker pool processes (decode, check, write)"
    with get_engine().connect() as conn:
        ours = {
            int(pid)
            for (pid,) in conn.exec_driver_sql(
                "SELECT pid FROM pg_stat_activity WHERE datname = %(db)s", {"db": db_name}
            )
        }
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["pid"] in ours:
            labels[proc.info["pid"]] = "PostgreSQL backends of this database"
        elif cmd.startswith("postgres: ") and any(
            k in cmd for k in ("walwriter", "checkpointer", "background writer", "autovacuum")
        ):
            labels[proc.info["pid"]] = "PostgreSQL shared (WAL writer, checkpointer, autovacuum)"
        elif proc.info["name"] == "redis-server":
            labels[proc.info["pid"]] = "Redis"
    return labels


class Meter:
    """CPU of each labelled process summed over `start()`/`stop()` spans, printed by `report()`.
    Processes that appear in a span (a new PostgreSQL backend, a replaced pool process) are
    counted from zero."""

    def __init__(self, relabel: Any) -> None:
        self._relabel = relabel  # () -> dict[int, str], read again at each stop
        self.labels: dict[int, str] = relabel()
        self._before: dict[int, float | None] = {}
        self._start = 0.0
        self._used: dict[str, float] = {}
        self.wall = 0.0

    def start(self) -> None:
        self._before = {pid: cpu_seconds(pid) for pid in self.labels}
        self._start = time.perf_counter()

    def stop(self) -> None:
        self.wall += time.perf_counter() - self._start
        self.labels.update({pid: lbl for pid, lbl in self._relabel().items() if pid not in self.labels})
        for pid, label in self.labels.items():
            after, first = cpu_seconds(pid), self._before.get(pid)
            if after is not None:
                self._used[label] = self._used.get(label, 0.0) + after - (first or 0.0)

    def report(self, count: int, unit: str, title: str) -> None:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"{title}: {count / self.wall:.0f}/s, {self.wall:.1f} s, load {load}")
        for label, seconds in sorted(self._used.items(), key=lambda kv: -kv[1]):
            print(f"  {seconds / count * 1e6:8.1f} µs/{unit}  {label}")
        print(f"  {sum(self._used.values()) / count * 1e6:8.1f} µs/{unit}  in all")
