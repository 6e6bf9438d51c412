"""`makima simulate`: a fleet of simulated supervisors against a running service, over HTTP.

    plan.py            what a supervisor does next and when (pure: steps, crashes, questions)
    ledger.py          what was sent and what the service said, per kind (pure)
    reconciliation.py  judging what the service holds against what it acknowledged (pure)
    service.py         the HTTP calls: bounded, patient with 503s, tolerant of missing routes
    fleet.py           the supervisors, their daemons and the person who answers them
    readback.py        after the run: reading back, resending what is still pending
    run.py             `simulate`: the fleet, then the reconciliation

The command itself (`app.cli.simulate`) makes the tokens and prints; nothing here touches the
database or the broker: the simulator is a client like any daemon.
"""

from __future__ import annotations

from app.simulation.fleet import Options, Tokens
from app.simulation.ledger import Kind
from app.simulation.reconciliation import Reconciliation, exit_code
from app.simulation.run import simulate

__all__ = ["Kind", "Options", "Reconciliation", "Tokens", "exit_code", "simulate"]
