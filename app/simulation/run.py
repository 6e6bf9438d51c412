"""`simulate`: one fleet against one running service, then the reconciliation."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from app.simulation.fleet import Fleet
from app.simulation.ledger import Ledger
from app.simulation.options import Options, Tokens
from app.simulation.readback import reconcile
from app.simulation.reconciliation import Reconciliation
from app.simulation.service import Service

REQUEST_TIMEOUT = 30.0


async def simulate(options: Options, tokens: Tokens, url: str, say: Callable[[str], None]) -> Reconciliation:
    """Drive `options.supervisors` simulated supervisors against the service at `url` for
    `options.duration` seconds, then reconcile what was sent with what the service holds."""
    limits = httpx.Limits(max_connections=options.concurrency, max_keepalive_connections=options.concurrency)
    async with httpx.AsyncClient(
        base_url=url.rstrip("/"), timeout=REQUEST_TIMEOUT, limits=limits, trust_env=False
    ) as client:
        service = Service(client, Ledger(), concurrency=options.concurrency, say=say)
        fleet = Fleet(options, tokens, service, say)
        try:
            await fleet.run()
            say(f"Sending stopped after {fleet.elapsed():.0f} s; reconciling with the service.")
            return await reconcile(fleet, url)
        finally:
            await fleet.finish()


__all__ = ["REQUEST_TIMEOUT", "simulate"]
