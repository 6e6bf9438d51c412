"""A simulated agent daemon: its supervisors' heartbeats in one list, and its command feed.

It sends its supervisors' heartbeats as one list every heartbeat interval and reads its
command feed: `answer_question` reaches the supervisor it is for; a `supervisor_fenced` for
its current incarnation, or a `restart_supervisor`, makes it restore (`Fleet.on_command`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import TYPE_CHECKING, Any

from app.simulation.ledger import Item, Kind
from app.simulation.service import Feature
from app.simulation.supervisor import READS

if TYPE_CHECKING:
    from app.simulation.fleet import Fleet
    from app.simulation.supervisor import Supervisor


class Daemon:
    """A simulated agent daemon: its supervisors' heartbeats in one list, its command feed."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.id = f"sim-{fleet.run_id}-d{index + 1}"
        self.host = f"sim-host-{index + 1}"
        self.supervisors: list[Supervisor] = []
        self.after = 0
        self.rng = random.Random(f"{fleet.options.seed}:daemon:{index}")

    async def send_heartbeats(self, bodies: list[dict[str, Any]]) -> None:
        fleet = self.fleet
        items: list[Item] = []
        for body in bodies:
            item = fleet.ledger.item(Kind.HEARTBEATS, str(body["id"]), str(body["contractId"]))
            item.request, item.sent_at = body, fleet.clock()
            items.append(item)
        answer = await fleet.service.call(
            Kind.HEARTBEATS, "POST", "/supervisors/heartbeats", fleet.tokens.supervisor, json=bodies
        )
        if answer.ok:
            results = answer.field("results", [])
            for index, item in enumerate(items):
                result = results[index] if isinstance(results, list) and index < len(results) else {}
                if isinstance(result, dict) and result.get("status") == "refused":
                    item.refuse(str(result.get("code") or "REFUSED"), result.get("message"))
                else:
                    item.accept()
        elif answer.status:
            for item in items:
                item.refuse(answer.code or "?", answer.message)

    async def beat(self) -> None:
        """Every heartbeat interval until the run's end, one list for all its supervisors."""
        fleet = self.fleet
        await asyncio.sleep(self.rng.uniform(0, fleet.options.heartbeat_interval))
        while not fleet.stopping and fleet.clock() < fleet.deadline:
            bodies = [b for b in (s.heartbeat() for s in self.supervisors) if b is not None]
            if bodies:
                await self.send_heartbeats(bodies)
            await asyncio.sleep(fleet.options.heartbeat_interval)

    async def read_feed(self) -> None:
        """The daemon's command feed, until the fleet is done with it."""
        fleet = self.fleet
        while not fleet.feeds_done.is_set():
            if fleet.service.available(Feature.COMMANDS):
                answer = await fleet.service.call(
                    READS,
                    "GET",
                    f"/daemons/{self.id}/commands",
                    fleet.tokens.supervisor,
                    params={"after": self.after, "limit": 200},
                    feature=Feature.COMMANDS,
                )
                commands = answer.field("commands", []) if answer.ok else []
                for command in commands if isinstance(commands, list) else []:
                    if isinstance(command, dict):
                        fleet.on_command(command)
                next_after = answer.field("nextAfter")
                if isinstance(next_after, int):
                    self.after = max(self.after, next_after)
                if commands:
                    continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fleet.feeds_done.wait(), fleet.options.feed_interval)


__all__ = ["Daemon"]
