"""The simulated fleet: supervisors on a few daemons, and the person who answers them.

Everything goes over HTTP to a running service, as any daemon would send it:

- each **supervisor** drives one `simple` contract (created with the person's token, then its
  supervisor task reported started, which makes it `active`), and steps through the plan
  (`app.simulation.plan`): it thinks (history appended, state saved), spawns and completes
  tasks (reports with message ids), asks questions, marks deliverables (plan-document moves
  it to `execute`, and the state is saved in the new phase once the contract is seen there);
- each **daemon** sends its supervisors' heartbeats as one list every heartbeat interval and
  reads its command feed (`answer_question` reaches the supervisor it is for; a
  `supervisor_fenced` for its current incarnation, or a `restart_supervisor`, makes it restore);
- the **person** answers each question a few seconds after it is asked;
- a **crash** (at `--crash-rate` per supervisor per minute) makes a supervisor forget its
  memory: it asks the service for its restoration (a new incarnation), the observer checks the
  restoration against what the service had acknowledged, and the supervisor goes on from it.

The supervisor's memory (`Memory`) is what a crash loses; the observer's records (the ledger
and `Acknowledged`) are never forgotten. Crashes happen between two steps only: a step is
what a daemon does between two save points, and the observer must know what was
acknowledged when the memory goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from app.simulation.ledger import Fate, Item, Kind, progress_line
from app.simulation.plan import (
    CHECKPOINT_EVERY,
    CONTRACT_TYPE,
    DELIVERABLES,
    FIRST_PHASE,
    PHASE_MOVES,
    STEPS_BEFORE_DELIVERING,
    Action,
    Question,
    View,
    answer_delay,
    answer_for,
    choose_action,
    daemon_layout,
    heartbeat_state,
    next_crash_in,
    next_deliverable,
    pause,
    progress,
    question_for,
)
from app.simulation.reconciliation import (
    Acknowledged,
    compare_restoration,
    expected_fallback,
    pending_question_ids,
    restored_history_length,
    restored_state,
    restored_version,
)
from app.simulation.service import ROUTE_MISSING, Feature, Service

READS: Final = "reads"  # call statistics of the checks that follow items up
START_CONFIRM_SECONDS: Final = 30.0
PHASE_SETTLE_SECONDS: Final = 60.0
RESTORE_ATTEMPTS: Final = 3
MAX_LISTED_TASKS: Final = 200


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


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(slots=True)
class Memory:
    """What a supervisor holds locally; a crash loses all of it."""

    incarnation: int = 1
    state_version: int = 0  # the last one the service acknowledged
    history: list[dict[str, Any]] = field(default_factory=list)  # messages from `history_base` on
    history_base: int = 0
    history_acked: int = 0  # how many messages the service holds
    phase: str = FIRST_PHASE
    moving_to: str | None = None  # a phase the contract should reach, not yet seen
    steps_in_phase: int = 0
    delivered: set[str] = field(default_factory=set)
    spawned: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)  # started (confirmed), not completed
    starting: dict[str, str] = field(default_factory=dict)  # task id → its start's message id
    task_names: dict[str, str] = field(default_factory=dict)
    open_questions: set[str] = field(default_factory=set)
    answered: set[str] = field(default_factory=set)
    questions_asked: int = 0
    saves: int = 0
    activity: str = "starting"
    full_save: bool = False

    @property
    def history_length(self) -> int:
        return self.history_base + len(self.history)

    def say(self, role: str, content: str) -> None:
        self.history.append({"role": role, "content": content})


class Supervisor:
    """One simulated supervisor and the contract it drives."""

    def __init__(self, fleet: Fleet, index: int, daemon: Daemon) -> None:
        self.fleet = fleet
        self.index = index
        self.daemon = daemon
        self.rng = random.Random(f"{fleet.options.seed}:{index}")
        self.task_id = str(uuid.uuid4())
        self.contract_id: str | None = None
        self.memory = Memory()
        self.ack = Acknowledged()
        self.up = False  # sends heartbeats
        self.restore_reason: str | None = None
        self.inbox: list[dict[str, Any]] = []
        self.crashes = 0
        self.next_crash_at = math.inf

    # --- what the plan sees -------------------------------------------------------------------

    def view(self) -> View:
        m = self.memory
        return View(
            phase=m.phase,
            steps_in_phase=m.steps_in_phase,
            running=len(m.running),
            starting=len(m.starting),
            open_questions=len(m.open_questions),
            questions_asked=m.questions_asked,
            delivered=frozenset(m.delivered),
            may_ask=self.fleet.service.available(Feature.QUESTIONS),
        )

    @property
    def cid(self) -> str:
        assert self.contract_id is not None
        return self.contract_id

    # --- life ---------------------------------------------------------------------------------

    async def live(self) -> None:
        fleet = self.fleet
        await asyncio.sleep(self.rng.uniform(0, min(5.0, fleet.options.duration / 4)))
        if not await self.start():
            return
        self.next_crash_at = fleet.clock() + next_crash_in(self.rng, fleet.options.crash_rate)
        while not fleet.stopping:
            wait = min(pause(self.rng, fleet.options.step_seconds), fleet.deadline - fleet.clock())
            if wait > 0:
                await asyncio.sleep(wait)
            if fleet.stopping or fleet.clock() >= fleet.deadline:
                break
            if fleet.clock() >= self.next_crash_at:
                await self.crash()
                self.next_crash_at = fleet.clock() + next_crash_in(self.rng, fleet.options.crash_rate)
                continue
            if self.restore_reason is not None:
                await self.restore(self.restore_reason)
                continue
            await self.refresh()
            await self.perform(choose_action(self.view(), self.rng))

    async def start(self) -> bool:
        """A contract of type simple, its supervisor task started, the first state saved."""
        fleet = self.fleet
        item = fleet.ledger.item(Kind.CONTRACTS, f"supervisor-{self.index}")
        body = {"name": f"simulated {fleet.run_id} #{self.index}", "contractType": CONTRACT_TYPE}
        item.request, item.sent_at = body, fleet.clock()
        answer = await fleet.service.call(
            Kind.CONTRACTS, "POST", "/contracts", fleet.tokens.person, json=body
        )
        if not answer.ok or not isinstance(answer.field("id"), str):
            if answer.status:
                item.refuse(answer.code or f"HTTP_{answer.status}", answer.message)
            return False
        self.contract_id = item.contract_id = str(answer.field("id"))
        item.accept()
        fleet.by_contract[self.cid] = self
        message_id = str(uuid.uuid4())
        started: dict[str, Any] = {"taskName": "supervisor", "isSupervisor": True, "messageId": message_id}
        if not await self.report(f"/contracts/{self.cid}/tasks/{self.task_id}/started", started):
            return False
        # The supervisor's start makes the contract active; wait for it (a worker applies it).
        deadline = fleet.clock() + START_CONFIRM_SECONDS
        while fleet.clock() < deadline:
            if await self.message_status(message_id) in ("applied", "refused"):
                break
            await asyncio.sleep(0.5)
        self.memory.say("system", "You supervise a simple contract: plan, then execute.")
        self.memory.activity = "reading the contract"
        self.up = True
        await self.save(checkpoint="started")
        return True

    async def perform(self, action: Action) -> None:
        m = self.memory
        m.steps_in_phase += 1
        if action is Action.THINK:
            await self.think()
        elif action is Action.SPAWN:
            await self.spawn()
        elif action is Action.COMPLETE:
            await self.complete()
        elif action is Action.ASK:
            await self.ask()
        else:
            await self.deliver()

    async def think(self) -> None:
        m = self.memory
        m.activity = f"working on the {m.phase} phase, step {m.steps_in_phase}"
        m.say("assistant", f"Step {m.steps_in_phase} of {m.phase}: {m.activity}.")
        if self.rng.random() < 0.5:
            m.say("user", "Tool result: ok.")
        await self.save()

    async def spawn(self) -> None:
        m = self.memory
        task_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        name = f"task {len(m.spawned) + 1} of {m.phase}"
        body = {"taskName": name, "messageId": message_id}
        if await self.report(f"/contracts/{self.cid}/tasks/{task_id}/started", body):
            m.starting[task_id] = message_id
            m.task_names[task_id] = name
            m.spawned.append(task_id)
            m.activity = f"spawned {name}"
            m.say("assistant", f"Spawned {name} ({task_id}).")
            await self.save()

    async def complete(self) -> None:
        m = self.memory
        if not m.running:
            return
        task_id = self.rng.choice(sorted(m.running))
        body = {
            "taskName": m.task_names.get(task_id, "task"),
            "success": self.rng.random() < 0.9,
            "messageId": str(uuid.uuid4()),
        }
        if await self.report(f"/contracts/{self.cid}/tasks/{task_id}/completed", body):
            m.running.discard(task_id)
            m.say("user", f"Task {task_id} finished (success: {body['success']}).")

    async def ask(self) -> None:
        fleet, m = self.fleet, self.memory
        question_id = str(uuid.uuid4())
        question = question_for(self.rng, self.index + m.questions_asked)
        body = {
            "questionId": question_id,
            "taskId": self.task_id,
            "question": question.question,
            "type": question.type,
            "options": list(question.options),
            "daemonId": self.daemon.id,
        }
        item = fleet.ledger.item(Kind.QUESTIONS, question_id, self.cid)
        item.request, item.sent_at = body, fleet.clock()
        answer = await fleet.service.call(
            Kind.QUESTIONS,
            "POST",
            f"/contracts/{self.cid}/questions",
            fleet.tokens.supervisor,
            json=body,
            feature=Feature.QUESTIONS,
        )
        if answer.code in ROUTE_MISSING:
            fleet.ledger.forget(Kind.QUESTIONS, question_id)
            return
        m.questions_asked += 1
        if answer.ok:
            item.accept()
            m.open_questions.add(question_id)
            self.ack.open_questions.add(question_id)
            m.activity = "waiting for a person's answer"
            m.say("assistant", f"Asked a person: {question.question}")
            await self.save()
            fleet.person.will_answer(self, question_id, question)
        elif answer.status:
            item.refuse(answer.code or "?", answer.message)
        else:
            self.ack.uncertain_questions.add(question_id)

    async def deliver(self) -> None:
        fleet, m = self.fleet, self.memory
        deliverable = next_deliverable(self.view())
        if deliverable is None:
            return
        key = f"{self.cid}:{deliverable}"
        item = fleet.ledger.item(Kind.DELIVERABLES, key, self.cid)
        item.request, item.sent_at = {"deliverableId": deliverable, "phase": m.phase}, fleet.clock()
        answer = await fleet.service.call(
            Kind.DELIVERABLES,
            "POST",
            f"/contracts/{self.cid}/deliverables/{deliverable}/complete",
            fleet.tokens.supervisor,
        )
        target = PHASE_MOVES.get(deliverable)
        if target is not None and not (answer.status and not answer.ok):
            self.ack.phase_moving = target  # the contract may move to it now
        if answer.ok:
            item.accept()
            m.delivered.add(deliverable)
            m.say("assistant", f"Marked {deliverable} complete.")
            if target is not None:
                m.moving_to = target
                await self.settle_phase(PHASE_SETTLE_SECONDS)
        elif answer.status:
            item.refuse(answer.code or "?", answer.message)
            m.delivered.add(deliverable)  # do not insist; the refusal is counted

    async def settle_phase(self, patience: float) -> None:
        """Wait (up to `patience` s) for the contract to reach the phase a deliverable moved it
        to, then save the state in it: the phase-change save point. Until then the state keeps
        the old phase, which is the contract's."""
        fleet, m = self.fleet, self.memory
        deadline = fleet.clock() + patience
        while m.moving_to is not None:
            answer = await fleet.service.call(READS, "GET", f"/contracts/{self.cid}", fleet.tokens.supervisor)
            if answer.ok and answer.field("phase") == m.moving_to:
                m.phase, m.moving_to, m.steps_in_phase = m.moving_to, None, 0
                m.delivered = set()
                m.activity = f"entered the {m.phase} phase"
                m.say("assistant", f"The contract moved to {m.phase}.")
                await self.save(checkpoint=f"phase {m.phase}")
                return
            if fleet.clock() >= deadline:
                return
            await asyncio.sleep(1.0)

    async def refresh(self) -> None:
        """Between steps: answers from the daemon's feed, task starts confirmed, a phase seen."""
        m = self.memory
        while self.inbox:
            self.take_answer(self.inbox.pop(0))
        for task_id, message_id in list(m.starting.items()):
            status = await self.message_status(message_id)
            if status == "applied":
                del m.starting[task_id]
                m.running.add(task_id)
            elif status == "refused":
                del m.starting[task_id]
        if m.moving_to is not None:
            await self.settle_phase(0)
        if m.full_save:
            m.full_save = False
            await self.save()

    def take_answer(self, payload: dict[str, Any]) -> None:
        m = self.memory
        question_id = question_id_of(payload)
        if question_id is None or question_id in m.answered:
            return
        m.open_questions.discard(question_id)
        m.answered.add(question_id)
        m.say("user", f"Answer to {question_id}: {payload.get('answer')!r}")

    # --- talking to the service -----------------------------------------------------------------

    async def report(self, path: str, body: dict[str, Any]) -> bool:
        """A task report (202 with its message id); kept in the ledger under that id."""
        fleet = self.fleet
        item = fleet.ledger.item(Kind.REPORTS, str(body["messageId"]), self.cid)
        item.request, item.sent_at = {"path": path, "json": body}, fleet.clock()
        answer = await fleet.service.call(Kind.REPORTS, "POST", path, fleet.tokens.supervisor, json=body)
        if answer.ok:
            item.accept()
            return True
        if answer.status:
            item.refuse(answer.code or "?", answer.message)
        return False

    async def message_status(self, message_id: str) -> str:
        answer = await self.fleet.service.call(
            READS, "GET", f"/messages/{message_id}", self.fleet.tokens.supervisor
        )
        return str(answer.field("status", "unknown")) if answer.ok else "unknown"

    def state_body(self, checkpoint: str | None) -> dict[str, Any]:
        m, view = self.memory, self.view()
        start = m.history_acked
        return {
            "taskId": self.task_id,
            "incarnation": m.incarnation,
            "stateVersion": m.state_version + 1,
            "state": heartbeat_state(view),
            "phase": m.phase,
            "currentActivity": m.activity,
            "progress": progress(view),
            "error": None,
            "spawnedTaskIds": m.spawned[-MAX_LISTED_TASKS:],
            "waitingOnTaskIds": sorted(m.running)[:MAX_LISTED_TASKS],
            "historyFrom": start,
            "historyAppend": m.history[max(0, start - m.history_base) :],
            "checkpoint": {"id": str(uuid.uuid4()), "note": checkpoint} if checkpoint else None,
            "daemonId": self.daemon.id,
            "host": self.daemon.host,
        }

    async def save(self, checkpoint: str | None = None) -> None:
        """A state save at a save point: the next version, the history not yet acknowledged."""
        fleet, m = self.fleet, self.memory
        if not fleet.service.available(Feature.STATES):
            return
        m.saves += 1
        if checkpoint is None and m.saves % CHECKPOINT_EVERY == 0:
            checkpoint = f"save {m.saves}"
        body = self.state_body(checkpoint)
        version, length = int(body["stateVersion"]), m.history_length
        key = f"{self.task_id}:{m.incarnation}:{version}"
        item = fleet.ledger.item(Kind.STATES, key, self.cid)
        item.request, item.sent_at = body, fleet.clock()
        answer = await fleet.service.call(
            Kind.STATES,
            "POST",
            f"/contracts/{self.cid}/supervisor/state",
            fleet.tokens.supervisor,
            json=body,
            feature=Feature.STATES,
        )
        if answer.code in ROUTE_MISSING:
            fleet.ledger.forget(Kind.STATES, key)
            return
        details = answer.details
        landed_before = answer.code == "STALE_STATE" and (
            details.get("storedIncarnation"),
            details.get("storedStateVersion"),
        ) == (m.incarnation, version)
        if answer.ok or landed_before:
            item.accept()
            m.state_version = version
            held = answer.field("historyLength")
            m.history_acked = held if isinstance(held, int) else length
            self.ack.state = (m.incarnation, version)
            self.ack.history_length = m.history_acked
            if body["phase"] == self.ack.phase_moving:
                self.ack.phase_moving = None
        elif answer.status:
            item.refuse(answer.code or "?", answer.message)
            if answer.code in ("SUPERVISOR_FENCED", "STALE_STATE", "HISTORY_GAP"):
                self.restore_reason = answer.code.lower()
        else:
            # No answer: it may have landed. The next save goes on from the next version.
            self.ack.uncertain_versions.add(version)
            self.ack.uncertain_history.add(length)
            m.state_version = version

    # --- crashes and restoration ----------------------------------------------------------------

    async def crash(self) -> None:
        """Forget everything local, then restore from the service."""
        if not self.fleet.service.available(Feature.RESTORATION):
            self.fleet.crashes_skipped += 1
            return
        if await self.restore("crash"):
            self.crashes += 1
            self.fleet.crash_count += 1

    async def restore(self, reason: str) -> bool:
        """Restore from the service; False when it has no restoration yet (nothing forgotten)."""
        fleet = self.fleet
        self.up = False
        forgotten, self.memory = self.memory, Memory()
        self.inbox.clear()
        self.restore_reason = None
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))  # the daemon starts the supervisor again
        for attempt in range(RESTORE_ATTEMPTS):
            key = f"{self.task_id}:{fleet.restoration_count}"
            fleet.restoration_count += 1
            item = fleet.ledger.item(Kind.RESTORATIONS, key, self.cid)
            item.request, item.sent_at = {"reason": reason}, fleet.clock()
            answer = await fleet.service.call(
                Kind.RESTORATIONS,
                "GET",
                f"/contracts/{self.cid}/supervisor/restoration",
                fleet.tokens.supervisor,
                params={"taskId": self.task_id, "daemonId": self.daemon.id, "host": self.daemon.host},
                feature=Feature.RESTORATION,
            )
            if answer.code in ROUTE_MISSING:
                fleet.ledger.forget(Kind.RESTORATIONS, key)
                fleet.crashes_skipped += 1
                self.memory = forgotten  # the service cannot restore: the crash is called off
                self.up = True
                return False
            if answer.ok and isinstance(answer.body, dict):
                problems = compare_restoration(self.ack, answer.body)
                if expected_fallback(self.ack, answer.body):
                    fleet.fallbacks += 1
                if problems:
                    item.lose("did not match what was acknowledged")
                    fleet.mismatches.extend(f"supervisor {self.index} ({self.cid}): {p}" for p in problems)
                else:
                    item.apply()
                self.adopt(answer.body)
                break
            item.refuse(answer.code or "NO_ANSWER", answer.message)
            if attempt == RESTORE_ATTEMPTS - 1:
                self.memory = forgotten
                fleet.restorations_abandoned += 1
            else:
                await asyncio.sleep(1.0)
        self.up = True
        return True

    def adopt(self, restoration: dict[str, Any]) -> None:
        """Rebuild the memory from a restoration: the daemon's new incarnation, the stored
        state and history, the questions still open, the tasks still running."""
        m = Memory()
        incarnation = restoration.get("incarnation")
        m.incarnation = incarnation if isinstance(incarnation, int) else self.memory.incarnation
        state = restored_state(restoration) or {}
        m.state_version = restored_version(restoration) or 0
        length = restored_history_length(restoration)
        history = [h for h in restoration.get("history") or [] if isinstance(h, dict)]
        m.history, m.history_base, m.history_acked = history, max(0, length - len(history)), length
        contract = restoration.get("contract") if isinstance(restoration.get("contract"), dict) else {}
        assert isinstance(contract, dict)
        m.phase = str(contract.get("phase") or state.get("phase") or FIRST_PHASE)
        if state.get("phase") and state.get("phase") != m.phase:
            m.full_save = True  # the state's phase is behind the contract's: save it now
        m.delivered = {
            str(d.get("id"))
            for d in contract.get("deliverables") or []
            if isinstance(d, dict) and d.get("completed")
        } & set(DELIVERABLES.get(m.phase, ()))
        m.spawned = [str(t) for t in state.get("spawnedTaskIds") or []]
        finished = {
            str(t.get("taskId", t.get("id")))
            for t in restoration.get("waitingTasks") or []
            if isinstance(t, dict) and t.get("status") in ("done", "failed", "completed")
        }
        m.running = {str(t) for t in state.get("waitingOnTaskIds") or []} - finished
        m.open_questions = pending_question_ids(restoration)
        m.answered = {
            qid
            for qid in (question_id_of(q) for q in restoration.get("answeredQuestions") or [])
            if qid is not None
        }
        m.questions_asked = len(m.open_questions) + len(m.answered)
        m.steps_in_phase = STEPS_BEFORE_DELIVERING
        m.activity = "restored"
        m.say("system", f"Restored (incarnation {m.incarnation}); continue from the last state.")
        self.memory = m

    # --- heartbeats -------------------------------------------------------------------------------

    def heartbeat(self) -> dict[str, Any] | None:
        if not self.up or self.contract_id is None:
            return None
        m, view = self.memory, self.view()
        return {
            "id": str(uuid.uuid4()),
            "taskId": self.task_id,
            "contractId": self.contract_id,
            "state": heartbeat_state(view),
            "phase": m.phase,
            "currentActivity": m.activity,
            "progress": progress(view),
            "pendingTaskIds": sorted(m.running | set(m.starting))[:MAX_LISTED_TASKS],
            "timestamp": now_iso(),
            "incarnation": m.incarnation,
            "daemonId": self.daemon.id,
            "host": self.daemon.host,
        }


def question_id_of(payload: Any) -> str | None:
    """A question's id in a command payload or a question view, however it is spelt."""
    if not isinstance(payload, dict):
        return None
    for key in ("questionId", "id"):
        if isinstance(payload.get(key), str):
            return str(payload[key])
    nested = payload.get("question")
    return question_id_of(nested) if isinstance(nested, dict) else None


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


class Person:
    """The simulated person of the owner: answers each question a little after it is asked."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.rng = random.Random(f"{fleet.options.seed}:person")
        self.pending: set[asyncio.Task[None]] = set()

    def will_answer(self, supervisor: Supervisor, question_id: str, question: Question) -> None:
        task = asyncio.create_task(self.answer(supervisor, question_id, question))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def answer(self, supervisor: Supervisor, question_id: str, question: Question) -> None:
        fleet = self.fleet
        await asyncio.sleep(answer_delay(self.rng))
        body = {"answer": answer_for(question.type, question.options, self.rng)}
        item = fleet.ledger.item(Kind.ANSWERS, question_id, supervisor.cid)
        item.request, item.sent_at = body, fleet.clock()
        supervisor.ack.uncertain_questions.add(question_id)
        answer = await fleet.service.call(
            Kind.ANSWERS,
            "POST",
            f"/contracts/{supervisor.cid}/questions/{question_id}/answer",
            fleet.tokens.person,
            json=body,
            feature=Feature.ANSWERS,
        )
        if answer.code in ROUTE_MISSING:
            fleet.ledger.forget(Kind.ANSWERS, question_id)
            supervisor.ack.uncertain_questions.discard(question_id)
            return
        if answer.ok:
            item.accept()
            ack = supervisor.ack
            ack.open_questions.discard(question_id)
            ack.answered.add(question_id)
            ack.uncertain_questions.discard(question_id)
            if answer.field("commandId") is not None and fleet.service.available(Feature.COMMANDS):
                fleet.expect_answer_command(question_id, supervisor.cid)
            else:
                # No feed to bring it: the daemon hears of the answer another way.
                supervisor.inbox.append({"questionId": question_id, "answer": body["answer"]})
        elif answer.status:
            item.refuse(answer.code or "?", answer.message)
            supervisor.ack.uncertain_questions.discard(question_id)

    async def wait(self) -> None:
        while self.pending:
            await asyncio.gather(*list(self.pending), return_exceptions=True)


class Fleet:
    """The whole simulation: build it, `run()` it, then reconcile (`app.simulation.readback`)."""

    def __init__(
        self,
        options: Options,
        tokens: Tokens,
        service: Service,
        say: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.tokens = tokens
        self.service = service
        self.ledger = service.ledger
        self.say = say
        self.clock = clock
        self.run_id = uuid.uuid4().hex[:6]
        self.daemons = [Daemon(self, d) for d in range(min(options.daemons, options.supervisors))]
        self.supervisors: list[Supervisor] = []
        for index, d in enumerate(daemon_layout(options.supervisors, len(self.daemons))):
            supervisor = Supervisor(self, index, self.daemons[d])
            self.daemons[d].supervisors.append(supervisor)
            self.supervisors.append(supervisor)
        self.by_contract: dict[str, Supervisor] = {}
        self.person = Person(self)
        self.started_at = clock()
        self.deadline = self.started_at + options.duration
        self.stopping = False
        self.feeds_done = asyncio.Event()
        self.commands: Counter[str] = Counter()
        self.answers_on_feed: set[str] = set()
        self.mismatches: list[str] = []
        self.crash_count = 0
        self.crashes_skipped = 0
        self.restoration_count = 0
        self.restorations_abandoned = 0
        self.fallbacks = 0
        self.background: list[asyncio.Task[None]] = []

    def elapsed(self) -> float:
        return self.clock() - self.started_at

    # --- the daemon feed ----------------------------------------------------------------------

    def on_command(self, command: dict[str, Any]) -> None:
        name = str(command.get("command"))
        self.commands[name] += 1
        payload = command.get("payload") if isinstance(command.get("payload"), dict) else {}
        assert isinstance(payload, dict)
        supervisor = self.by_contract.get(str(command.get("contractId")))
        if name == "answer_question":
            question_id = question_id_of(payload)
            if question_id is not None:
                self.answers_on_feed.add(question_id)
                item = self.ledger.items[Kind.ANSWER_COMMANDS].get(question_id)
                if item is not None:
                    item.apply()
            if supervisor is not None:
                supervisor.inbox.append(payload)
        elif supervisor is None:
            return
        elif name == "supervisor_fenced":
            fenced = payload.get("fencedIncarnation")
            if supervisor.up and fenced == supervisor.memory.incarnation:
                supervisor.restore_reason = "fenced"
        elif name == "restart_supervisor":
            supervisor.restore_reason = "restart"
        elif name == "sync_supervisor_state":
            supervisor.memory.full_save = True

    def expect_answer_command(self, question_id: str, contract_id: str) -> None:
        item = self.ledger.item(Kind.ANSWER_COMMANDS, question_id, contract_id)
        item.sent_at = self.clock()
        if question_id in self.answers_on_feed:
            item.apply()
        else:
            item.accept()

    # --- the run ----------------------------------------------------------------------------------

    async def report_progress(self) -> None:
        while not self.feeds_done.is_set():
            try:
                await asyncio.wait_for(self.feeds_done.wait(), self.options.progress_every)
            except TimeoutError:
                self.say(progress_line(self.elapsed(), self.ledger))

    async def run(self) -> None:
        """Every supervisor and daemon until the duration is over, then the person's last
        answers. The feeds and the progress lines go on until `finish()`."""
        self.started_at = self.clock()
        self.deadline = self.started_at + self.options.duration
        self.background = [asyncio.create_task(d.read_feed()) for d in self.daemons] + [
            asyncio.create_task(self.report_progress())
        ]
        lives = [asyncio.create_task(s.live()) for s in self.supervisors]
        beats = [asyncio.create_task(d.beat()) for d in self.daemons]
        await asyncio.sleep(self.options.duration)
        self.stopping = True
        await asyncio.gather(*lives, *beats)
        await self.person.wait()

    async def finish(self) -> None:
        self.feeds_done.set()
        await asyncio.gather(*self.background, return_exceptions=True)

    def notes(self) -> dict[Kind, list[str]]:
        notes: dict[Kind, list[str]] = {kind: [] for kind in Kind}
        restorations = notes[Kind.RESTORATIONS]
        restorations.append(f"{self.crash_count} crash{'' if self.crash_count == 1 else 'es'}")
        if self.crashes_skipped:
            restorations.append(f"{self.crashes_skipped} crashes called off (no restoration endpoint)")
        if self.fallbacks:
            restorations.append(
                f"{self.fallbacks} fell back to a checkpoint or a fresh start as the protocol says: the "
                "contract had moved to the next phase before its supervisor saved a state in it"
            )
        if self.restorations_abandoned:
            restorations.append(f"{self.restorations_abandoned} gave up after {RESTORE_ATTEMPTS} tries")
        unanswered = sum(1 for i in self.ledger.of(Kind.CONTRACTS) if i.fate is Fate.UNANSWERED)
        if unanswered:
            notes[Kind.CONTRACTS].append(f"{unanswered} creations got no answer")
        return notes


__all__ = ["Daemon", "Fleet", "Memory", "Options", "Person", "Supervisor", "Tokens", "question_id_of"]
