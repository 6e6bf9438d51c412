"""What a simulated supervisor does next, and when: the fleet simulator's schedule, pure.

Everything random is drawn from a `random.Random` the caller seeds, so `makima simulate
--seed K` repeats its choices (the service's answers still vary with timing). No I/O here:
the fleet (`app.simulation.fleet`) performs what these functions decide.

A supervisor works a `simple` contract the way the plan describes one: it thinks (an LLM
response: history appended, state saved), spawns tasks and completes them, asks a person
questions, and marks the phase's deliverables. `plan-document` meets the plan phase's gate,
so marking it moves the contract to `execute`; it is marked only when no question of the
supervisor is open, because a contract waiting for an answer is not advanced automatically.
`pull-request` is never marked: the contracts stay open in `execute`, so a run can be looked
at (and reconciled) afterwards without its contracts closing under it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

CONTRACT_TYPE: Final = "simple"
FIRST_PHASE: Final = "plan"

# The `simple` type's deliverables a supervisor marks, in order, per phase; marking the key of
# PHASE_MOVES meets the phase's gate and the contract moves to its value.
DELIVERABLES: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {"plan": ("task-breakdown", "plan-document"), "execute": ("execution-notes",)}
)
PHASE_MOVES: Final[Mapping[str, str]] = MappingProxyType({"plan-document": "execute"})

MAX_RUNNING_TASKS: Final = 3
MAX_OPEN_QUESTIONS: Final = 2
MAX_QUESTIONS: Final = 4
STEPS_BEFORE_DELIVERING: Final = 3
CHECKPOINT_EVERY: Final = 5  # every fifth state save marks a checkpoint

QUESTION_TYPES: Final = ("free_text", "single_choice", "multiple_choice", "confirmation")


class Action(StrEnum):
    """One step of a supervisor, between two of which it may crash."""

    THINK = "think"  # an LLM response: history appended, state saved (a save point)
    SPAWN = "spawn"  # a task spawned: `started` reported, state saved (a save point)
    COMPLETE = "complete"  # a running task finished: `completed` reported
    ASK = "ask"  # a question for a person: asked, state saved (a save point)
    DELIVER = "deliver"  # the phase's next deliverable marked (plan-document: a phase change)


@dataclass(frozen=True, slots=True)
class View:
    """What a supervisor knows of itself when it chooses its next step."""

    phase: str
    steps_in_phase: int
    running: int  # tasks whose start the service confirmed, not yet completed
    starting: int  # tasks reported started, not yet confirmed
    open_questions: int
    questions_asked: int
    delivered: frozenset[str]
    may_ask: bool = True  # the service takes questions (skipped while it does not)


def next_deliverable(view: View) -> str | None:
    """The phase's next deliverable this supervisor has not marked, if any."""
    return next((d for d in DELIVERABLES.get(view.phase, ()) if d not in view.delivered), None)


def may_deliver(view: View) -> bool:
    """A deliverable is due after a few steps; one that moves the phase waits for no open question."""
    deliverable = next_deliverable(view)
    if deliverable is None or view.steps_in_phase < STEPS_BEFORE_DELIVERING:
        return False
    return deliverable not in PHASE_MOVES or view.open_questions == 0


def choices(view: View) -> dict[Action, float]:
    """The steps open to this supervisor now, with their weights (thinking is always open)."""
    weights = {Action.THINK: 3.0}
    if view.running + view.starting < MAX_RUNNING_TASKS:
        weights[Action.SPAWN] = 2.0
    if view.running > 0:
        weights[Action.COMPLETE] = 2.0
    if view.may_ask and view.open_questions < MAX_OPEN_QUESTIONS and view.questions_asked < MAX_QUESTIONS:
        weights[Action.ASK] = 1.5 if view.questions_asked == 0 else 0.75
    if may_deliver(view):
        weights[Action.DELIVER] = 1.5
    return weights


def choose_action(view: View, rng: random.Random) -> Action:
    """A weighted draw among `choices(view)`."""
    weights = choices(view)
    actions = list(weights)
    return rng.choices(actions, weights=[weights[a] for a in actions])[0]


def pause(rng: random.Random, step_seconds: float) -> float:
    """Seconds between two steps: `step_seconds` on average, never the same twice in a row."""
    return step_seconds * rng.uniform(0.5, 1.5)


def crash_probability(rate_per_minute: float, seconds: float) -> float:
    """The chance of at least one crash in `seconds` at `rate_per_minute` (a Poisson process)."""
    if rate_per_minute <= 0 or seconds <= 0:
        return 0.0
    return 1.0 - math.exp(-rate_per_minute * seconds / 60.0)


def next_crash_in(rng: random.Random, rate_per_minute: float) -> float:
    """Seconds until the next crash: exponential with mean 60 / rate (never, at rate 0)."""
    if rate_per_minute <= 0:
        return math.inf
    return rng.expovariate(rate_per_minute / 60.0)


def default_daemon_count(supervisors: int) -> int:
    """A few daemons: one per ten supervisors, at least one, at most eight."""
    return max(1, min(8, math.ceil(supervisors / 10)))


def daemon_layout(supervisors: int, daemons: int) -> list[int]:
    """Which daemon (index) runs each supervisor: as even as the numbers allow, in blocks."""
    if supervisors < 1 or daemons < 1:
        raise ValueError("at least one supervisor and one daemon")
    daemons = min(daemons, supervisors)
    base, extra = divmod(supervisors, daemons)
    layout: list[int] = []
    for d in range(daemons):
        layout.extend([d] * (base + (1 if d < extra else 0)))
    return layout


def heartbeat_state(view: View) -> str:
    """The seed's supervisor state a heartbeat reports for this view."""
    if view.open_questions:
        return "waiting_for_user"
    if view.running + view.starting and view.steps_in_phase % 2:
        return "waiting_for_tasks"
    return "working"


def progress(view: View) -> int:
    """0 to 100, by phase and steps taken; never 100 (the contracts stay open)."""
    start = 0 if view.phase == FIRST_PHASE else 50
    return min(start + 5 * view.steps_in_phase, start + 45)


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    type: str
    options: tuple[str, ...]


_TOPICS: Final = ("the database migration", "the API naming", "the retry policy", "the test plan")


def question_for(rng: random.Random, number: int) -> Question:
    """The question types in turn (by `number`), each about a random topic."""
    kind = QUESTION_TYPES[number % len(QUESTION_TYPES)]
    topic = rng.choice(_TOPICS)
    if kind == "free_text":
        return Question(f"What should {topic} look like?", kind, ())
    if kind == "confirmation":
        return Question(f"May I go ahead with {topic}?", kind, ())
    options = ("option A", "option B", "option C")
    return Question(f"Which way for {topic}?", kind, options)


def answer_for(question_type: str, options: Sequence[str], rng: random.Random) -> Any:
    """A person's answer of the right shape: text, one option, some options, or yes/no."""
    if question_type == "single_choice" and options:
        return rng.choice(list(options))
    if question_type == "multiple_choice" and options:
        return sorted(rng.sample(list(options), rng.randint(1, len(options))))
    if question_type == "confirmation":
        return rng.random() < 0.8
    return "Keep it small and reversible; ship behind a flag."


def answer_delay(rng: random.Random) -> float:
    """A person answers a little later: 1 to 4 seconds."""
    return rng.uniform(1.0, 4.0)


__all__ = [
    "CHECKPOINT_EVERY",
    "CONTRACT_TYPE",
    "DELIVERABLES",
    "FIRST_PHASE",
    "MAX_OPEN_QUESTIONS",
    "MAX_QUESTIONS",
    "MAX_RUNNING_TASKS",
    "PHASE_MOVES",
    "QUESTION_TYPES",
    "STEPS_BEFORE_DELIVERING",
    "Action",
    "Question",
    "View",
    "answer_delay",
    "answer_for",
    "choices",
    "choose_action",
    "crash_probability",
    "daemon_layout",
    "default_daemon_count",
    "heartbeat_state",
    "may_deliver",
    "next_crash_in",
    "next_deliverable",
    "pause",
    "progress",
    "question_for",
]
