"""A simulated supervisor's crash, and its restoration from the service.

A crash (at `--crash-rate` per supervisor per minute, between two steps only) makes a
supervisor forget its memory: it asks the service for its restoration (a new incarnation), the
observer checks the restoration against what the service had acknowledged (`Acknowledged`,
never forgotten), and the supervisor goes on from it. A fence, a restart command or a refused
save restores the same way, without counting as a crash.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from app.simulation.ledger import Kind
from app.simulation.memory import Memory, restored_memory
from app.simulation.reconciliation import compare_restoration, expected_fallback
from app.simulation.service import ROUTE_MISSING, Feature

if TYPE_CHECKING:
    from app.simulation.supervisor import Supervisor

RESTORE_ATTEMPTS: Final = 3


async def crash(supervisor: Supervisor) -> None:
    """Forget everything local, then restore from the service."""
    if not supervisor.fleet.service.available(Feature.RESTORATION):
        supervisor.fleet.crashes_skipped += 1
        return
    if await restore(supervisor, "crash"):
        supervisor.crashes += 1
        supervisor.fleet.crash_count += 1


async def restore(supervisor: Supervisor, reason: str) -> bool:
    """Restore from the service; False when it has no restoration yet (nothing forgotten)."""
    fleet = supervisor.fleet
    supervisor.up = False
    forgotten, supervisor.memory = supervisor.memory, Memory()
    supervisor.inbox.clear()
    supervisor.restore_reason = None
    await asyncio.sleep(supervisor.rng.uniform(0.2, 1.0))  # the daemon starts the supervisor again
    for attempt in range(RESTORE_ATTEMPTS):
        key = f"{supervisor.task_id}:{fleet.restoration_count}"
        fleet.restoration_count += 1
        item = fleet.ledger.item(Kind.RESTORATIONS, key, supervisor.cid)
        item.request, item.sent_at = {"reason": reason}, fleet.clock()
        answer = await fleet.service.call(
            Kind.RESTORATIONS,
            "GET",
            f"/contracts/{supervisor.cid}/supervisor/restoration",
            fleet.tokens.supervisor,
            params={
                "taskId": supervisor.task_id,
                "daemonId": supervisor.daemon.id,
                "host": supervisor.daemon.host,
            },
            feature=Feature.RESTORATION,
        )
        if answer.code in ROUTE_MISSING:
            fleet.ledger.forget(Kind.RESTORATIONS, key)
            fleet.crashes_skipped += 1
            supervisor.memory = forgotten  # the service cannot restore: the crash is called off
            supervisor.up = True
            return False
        if answer.ok and isinstance(answer.body, dict):
            problems = compare_restoration(supervisor.ack, answer.body)
            if expected_fallback(supervisor.ack, answer.body):
                fleet.fallbacks += 1
            if problems:
                item.lose("did not match what was acknowledged")
                fleet.mismatches.extend(
                    f"supervisor {supervisor.index} ({supervisor.cid}): {p}" for p in problems
                )
            else:
                item.apply()
            supervisor.memory = restored_memory(answer.body, supervisor.memory.incarnation)
            break
        item.refuse(answer.code or "NO_ANSWER", answer.message)
        if attempt == RESTORE_ATTEMPTS - 1:
            supervisor.memory = forgotten
            fleet.restorations_abandoned += 1
        else:
            await asyncio.sleep(1.0)
    supervisor.up = True
    return True


__all__ = ["RESTORE_ATTEMPTS", "crash", "restore"]
