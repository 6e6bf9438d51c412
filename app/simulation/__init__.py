"""`makima simulate`: a fleet of simulated supervisors against a running service, over HTTP.

    plan.py            what a supervisor does next and when (pure: steps, crashes, questions)
    ledger.py          what was sent and what the service said, per kind (pure)
    reconciliation.py  judging what the service holds against what it acknowledged (pure)
    service.py         the HTTP calls: bounded, patient with 503s, tolerant of missing routes
    options.py         what a run is given: its options and its tokens
    memory.py          a supervisor's memory: what a crash loses, rebuilt from a restoration (pure)
    supervisor.py      a supervisor driving one contract through the plan
    crashes.py         a supervisor's crash and its restoration, checked against what was acknowledged
    daemon.py          a daemon: its supervisors' heartbeats in one list, its command feed
    person.py          the person who answers the questions
    fleet.py           the supervisors on their daemons and the person: built, run, commands routed
    readback.py        after the run: reading back, resending what is still pending
    run.py             `simulate`: the fleet, then the reconciliation

The command itself (`app.cli.simulate`) makes the tokens and prints; nothing here touches the
database or the broker: the simulator is a client like any daemon.
"""

from __future__ import annotations

from app.simulation.ledger import Kind
from app.simulation.options import Options, Tokens
from app.simulation.reconciliation import Reconciliation, exit_code
from app.simulation.run import simulate

__all__ = ["Kind", "Options", "Reconciliation", "Tokens", "exit_code", "simulate"]
