"""The live monitor's fan-out alone: API CPU per delivery, with no database and no producer.

A uvicorn process runs the real app (`create_app`: the monitor endpoint, its middleware, the
hub's dispatch and the subscribers' sends) with two things replaced in that process only: the
hub makes its events up (`--rate` a second, `--burst` at a time, as if read from the table)
instead of reading `contract_events`, and the WebSocket caller is taken as authenticated. The
subscribers are `bench/monitor.py`'s clients (2 processes). Printed: the API process's CPU per
delivery (its CPU over the run / deliveries), the clients' CPU, and the latency from each
event's dispatch (its id is the dispatch time in µs) to its receipt. What `bench/monitor.py`
measures end to end, less the database, the wake-ups and the producer's own work.

    python bench/monitor_fanout.py [--subscribers 1000] [--rate 20] [--seconds 15] [--burst 1]
                                   [--root OTHER_CHECKOUT]   # the same measurement of other code
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def serve(port: int, rate: float, burst: int) -> None:
    """The API process: the app with a hub whose events are made up (see the module docstring)."""
    import asyncio
    import uuid
    from datetime import UTC, datetime

    import uvicorn

    import app.http.monitor as http_monitor
    import app.http.monitor_ws as http_monitor_ws
    from app.auth import Caller, Role
    from app.live_events import START, LiveEvent, Position, Snapshot
    from app.monitor import Hub

    owner, contract = "fan-out", uuid.uuid4()
    go = Path(f"/tmp/makima-fanout-{port}")

    class MadeUpEvents(Hub):
        def _snapshot(self) -> Snapshot:
            return Snapshot(0, 0, frozenset(), 0)  # every made-up event is new

        async def _run(self) -> None:
            self.position = START
            self._ready.set()
            loop = asyncio.get_running_loop()
            due = loop.time()
            while True:  # on a fixed schedule, whatever each dispatch takes
                due += burst / rate
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not go.exists():
                    continue
                now = time.time()
                self._dispatch(
                    [
                        LiveEvent(
                            Position(1, int(now * 1e6) + i),
                            contract,
                            owner,
                            "active",
                            "status_changed",
                            {"contractId": str(contract), "oldStatus": "active", "newStatus": "paused"},
                            datetime.now(UTC),
                        )
                        for i in range(burst)
                    ]
                )

    async def anyone(websocket: object) -> tuple[Caller, str]:
        return Caller(uuid.uuid4(), owner, Role.USER), "made-up"

    async def never_lapses(engine: object, token: str) -> object:
        await asyncio.Event().wait()  # the made-up token is never looked up again
        raise AssertionError("unreachable")

    http_monitor.Hub = MadeUpEvents  # type: ignore[misc]
    http_monitor_ws.authenticate_socket = anyone  # type: ignore[assignment]
    http_monitor_ws.token_lapsed = never_lapses  # type: ignore[assignment]
    from app.http.application import create_app

    uvicorn.run(
        create_app(sender=lambda *args: "not-sent"),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ws_per_message_deflate=False,  # as `makima run` starts it
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20, help="events a second")
    parser.add_argument("--burst", type=int, default=1, help="events dispatched together")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--root", default=str(HERE), help="the checkout whose app the API process runs")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.path.insert(0, args.root)
        serve(args.serve, args.rate, args.burst)
        return
    import psutil

    sys.path.insert(0, str(HERE))
    from bench.monitor import free_port, percentile, subscriber_process

    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--rate",
            str(args.rate),
            "--burst",
            str(args.burst),
            "--root",
            args.root,
        ],
        env={**os.environ, "PYTHONPATH": args.root},
    )
    go = Path(f"/tmp/makima-fanout-{port}")
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        ctx = multiprocessing.get_context("spawn")
        url = f"ws://127.0.0.1:{port}/api/v1/contracts/monitor"
        pipes, children = [], []
        for share in (args.subscribers // 2, args.subscribers - args.subscribers // 2):
            mine, theirs = ctx.Pipe()
            child = ctx.Process(target=subscriber_process, args=(url, "any", share, theirs))
            child.start()
            pipes.append(mine)
            children.append(child)
        for pipe in pipes:
            kind, value = pipe.recv()
            if kind != "ready":
                raise RuntimeError(f"a subscriber process failed: {value}")
        load = os.getloadavg()[0]
        process = psutil.Process(api.pid)
        cpu0 = sum(process.cpu_times()[:2])
        go.touch()
        time.sleep(args.seconds)
        go.unlink()
        time.sleep(2)  # the last deliveries arrive
        cpu = sum(process.cpu_times()[:2]) - cpu0
        latencies: list[float] = []
        clients = 0.0
        for pipe in pipes:
            pipe.send("stop")
            _, raw, _closes, client_cpu = pipe.recv()
            clients += client_cpu
            ids, times = array("q"), array("d")
            ids.frombytes(raw[0])
            times.frombytes(raw[1])
            latencies += [(at - event_id / 1e6) * 1000 for event_id, at in zip(ids, times, strict=True)]
        for child in children:
            child.join(30)
    finally:
        go.unlink(missing_ok=True)
        api.terminate()
        api.wait(15)
    latencies.sort()
    n = len(latencies)
    print(
        f"fan-out ({args.root}): {args.subscribers} subscribers,"
        f" {args.rate:g} events/s in bursts of {args.burst},"
        f" load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n"
        f"  {n} deliveries; API CPU {cpu:.1f} s = {cpu / max(n, 1) * 1e6:.1f} µs a delivery;"
        f" clients' CPU {clients:.1f} s; from dispatch to receipt p50 {statistics.median(latencies):.1f} ms,"
        f" p99 {percentile(latencies, 0.99):.1f} ms, max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    main()
