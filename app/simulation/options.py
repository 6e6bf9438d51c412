"""What a simulation run is given: its options (`makima simulate`'s flags) and its tokens.

Kept apart from the fleet so the command can build them without importing the machinery that
uses them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Options:
    supervisors: int
    duration: float
    crash_rate: float = 0.0
    heartbeat_interval: float = 5.0
    seed: int = 0
    daemons: int = 1
    concurrency: int = 32
    step_seconds: float = 2.0
    grace: float = 60.0
    progress_every: float = 5.0
    feed_interval: float = 1.0


@dataclass(frozen=True, slots=True)
class Tokens:
    supervisor: str  # the daemons' (role supervisor)
    person: str  # the person's (role user): creates contracts, answers questions
    owner: str | None = None


__all__ = ["Options", "Tokens"]
