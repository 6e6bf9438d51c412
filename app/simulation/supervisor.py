"""A simulated supervisor: it drives one contract through the plan, over HTTP.

It drives one `simple` contract (created with the person's token, then its supervisor task
reported started, which makes it `active`), and steps through the plan
(`app.simulation.plan`): it thinks (history appended, state saved), spawns and completes tasks
(reports with message ids), asks questions, marks deliverables (plan-document moves it to
`execute`, and the state is saved in the new phase once the contract is seen there). Its
daemon (`app.simulation.daemon`) sends its heartbeats and brings it its commands; a crash or
a fence makes it restore (`app.simulation.crashes`).

Crashes happen between two steps only: a step is what a daemon does between two save points,
and the observer must know what was acknowledged when the memory goes.
"""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from app.simulation.crashes import crash, restore
from app.simulation.ledger import Kind
from app.simulation.memory import Memory, question_id_of
from app.simulation.plan import (
    CHECKPOINT_EVERY,
    CONTRACT_TYPE,
    PHASE_MOVES,
    Action,
    View,
    choose_action,
    heartbeat_state,
    next_crash_in,
    next_deliverable,
    pause,
    progress,
    question_for,
)
from app.simulation.reconciliation import Acknowledged
from app.simulation.service import ROUTE_MISSING, Feature

if TYPE_CHECKING:
    from app.simulation.daemon import Daemon
    from app.simulation.fleet import Fleet

READS: Final = "reads"  # call statistics of the checks that follow items up
START_CONFIRM_SECONDS: Final = 30.0
PHASE_SETTLE_SECONDS: Final = 60.0
MAX_LISTED_TASKS: Final = 200


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


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
                await crash(self)
                self.next_crash_at = fleet.clock() + next_crash_in(self.rng, fleet.options.crash_rate)
                continue
            if self.restore_reason is not None:
                await restore(self, self.restore_reason)
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


__all__ = ["MAX_LISTED_TASKS", "PHASE_SETTLE_SECONDS", "READS", "START_CONFIRM_SECONDS", "Supervisor"]
