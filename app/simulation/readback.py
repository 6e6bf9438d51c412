"""After the run: read back from the service what it holds, and judge every item sent.

Each kind is followed up the way a daemon that must lose nothing would do it, for at most the
grace period (`--grace`):

- **reports**: `GET /api/v1/messages/{id}` for each; `pending` well past a worker's time
  (`RESEND_AFTER`) is resent (`POST .../resend`), `unknown` is sent again as it was, with the
  same message id, and both are asked again until they are applied or refused;
- **heartbeats**: each supervisor's stored ids (`GET .../supervisor/heartbeats?limit=1000`)
  against the ids sent; a fenced one counts as stored; one still missing after
  `RESEND_AFTER` is sent again with the same id (stored once);
- **states**: the stored (incarnation, stateVersion) against the last acknowledged save;
- **questions** and **answers**: every question asked is stored, every answer given is stored
  with its value (`GET .../questions`, every page);
- **answer commands**: every acknowledged answer reached its daemon's feed;
- **contracts** and **deliverables**: each contract reads back, each deliverable marked has
  its `deliverable_completed` event.

The pure judging is `app.simulation.reconciliation`; this module only reads and resends.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, Final, TypeVar

from app.simulation.fleet import Fleet
from app.simulation.ledger import Fate, Item, Kind
from app.simulation.reconciliation import (
    Reconciliation,
    RunFacts,
    judge_heartbeats,
    judge_message,
    judge_questions,
    judge_states,
)
from app.simulation.service import ROUTE_MISSING, Answer, Feature
from app.simulation.supervisor import READS, Supervisor

RESEND_AFTER: Final = 10.0  # seconds a report may stay pending (or a heartbeat unseen) before a resend
POLL: Final = 1.0
HEARTBEAT_PAGE: Final = 1000
T = TypeVar("T")


def outstanding(items: Sequence[Item]) -> list[Item]:
    return [i for i in items if i.fate in (Fate.ACCEPTED, Fate.UNANSWERED)]


async def each(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await the calls together (the service's own semaphore bounds how many are in flight)."""
    return list(await asyncio.gather(*calls))


class Readback:
    def __init__(self, fleet: Fleet, url: str) -> None:
        self.fleet = fleet
        self.url = url
        self.service = fleet.service
        self.ledger = fleet.ledger
        self.token = fleet.tokens.supervisor
        self.deadline = fleet.clock() + fleet.options.grace
        self.notes = fleet.notes()

    def time_left(self) -> bool:
        return self.fleet.clock() < self.deadline

    async def get(
        self, path: str, params: dict[str, Any] | None = None, feature: Feature | None = None
    ) -> Answer:
        return await self.service.call(READS, "GET", path, self.token, params=params, feature=feature)

    # --- reports ------------------------------------------------------------------------------

    async def reports(self) -> None:
        resent: Counter[str] = Counter()
        while True:
            items = outstanding(self.ledger.of(Kind.REPORTS))
            if not items:
                break
            answers = await each(self.get(f"/messages/{i.key}") for i in items)
            for item, answer in zip(items, answers, strict=True):
                if not answer.ok or not isinstance(answer.body, dict):
                    continue
                status = judge_message(item, answer.body)
                due = self.fleet.clock() - item.sent_at >= RESEND_AFTER
                if status == "pending":
                    item.accept()
                    if due:
                        resent["pending"] += 1
                        item.sent_at = self.fleet.clock()
                        await self.service.call(
                            Kind.REPORTS, "POST", f"/messages/{item.key}/resend", self.token
                        )
                elif status == "unknown" and (due or item.fate is Fate.UNANSWERED) and item.request:
                    resent["unknown"] += 1
                    item.sent_at = self.fleet.clock()
                    again = await self.service.call(
                        Kind.REPORTS, "POST", item.request["path"], self.token, json=item.request["json"]
                    )
                    if again.ok:
                        item.accept()
                    elif again.status:
                        item.refuse(again.code or "?", again.message)
            if not outstanding(items) or not self.time_left():
                break
            await asyncio.sleep(POLL)
        if resent:
            self.notes[Kind.REPORTS].append(
                f"resent with the same id: {resent['pending']} pending, {resent['unknown']} unknown"
            )

    # --- heartbeats ---------------------------------------------------------------------------

    async def stored_heartbeats(self, contract_id: str) -> dict[str, bool] | None:
        answer = await self.get(f"/contracts/{contract_id}/supervisor/heartbeats", {"limit": HEARTBEAT_PAGE})
        rows = answer.field("heartbeats") if answer.ok else None
        if not isinstance(rows, list):
            return None
        return {str(h.get("id")): bool(h.get("fenced")) for h in rows if isinstance(h, dict)}

    async def heartbeats(self) -> None:
        by_contract: dict[str, list[Item]] = defaultdict(list)
        for item in self.ledger.of(Kind.HEARTBEATS):
            by_contract[item.contract_id or ""].append(item)
        unreadable = 0
        for contract_id, items in by_contract.items():
            if len(items) > HEARTBEAT_PAGE:  # only the newest 1,000 can be read back
                for old in items[: len(items) - HEARTBEAT_PAGE]:
                    self.ledger.forget(Kind.HEARTBEATS, old.key)
                unreadable += len(items) - HEARTBEAT_PAGE
                by_contract[contract_id] = items[-HEARTBEAT_PAGE:]
        fenced: dict[str, int] = {}
        resent = 0
        while True:
            waiting = {c: items for c, items in by_contract.items() if outstanding(items)}
            if not waiting:
                break
            contracts = list(waiting)
            stored = await each(self.stored_heartbeats(c) for c in contracts)
            missing: list[Item] = []
            for contract_id, found in zip(contracts, stored, strict=True):
                if found is None:
                    continue
                check = judge_heartbeats(waiting[contract_id], found)
                fenced[contract_id] = fenced.get(contract_id, 0) + check.fenced
                missing.extend(i for i in waiting[contract_id] if i.key in check.missing)
            due = [i for i in missing if self.fleet.clock() - i.sent_at >= RESEND_AFTER and i.request]
            if due:
                resent += len(due)
                await self.resend_heartbeats(due)
            if not self.time_left():
                break
            await asyncio.sleep(POLL)
        notes = self.notes[Kind.HEARTBEATS]
        notes.append(f"{sum(fenced.values())} stored fenced (an incarnation already replaced)")
        if resent:
            notes.append(f"{resent} resent with the same id")
        if unreadable:
            notes.append(f"{unreadable} older than a supervisor's newest {HEARTBEAT_PAGE} not checked")

    async def resend_heartbeats(self, items: Sequence[Item]) -> None:
        for start in range(0, len(items), HEARTBEAT_PAGE):
            chunk = items[start : start + HEARTBEAT_PAGE]
            for item in chunk:
                item.sent_at = self.fleet.clock()
            bodies = [i.request for i in chunk]
            path = "/supervisors/heartbeats"
            await self.service.call(Kind.HEARTBEATS, "POST", path, self.token, json=bodies)

    # --- states -------------------------------------------------------------------------------

    async def states(self) -> None:
        supervisors = [s for s in self.fleet.supervisors if s.contract_id is not None]
        by_key: dict[str, list[Item]] = defaultdict(list)
        for item in self.ledger.of(Kind.STATES):
            by_key[item.key.split(":", 1)[0]].append(item)
        checked = [s for s in supervisors if by_key.get(s.task_id)]
        if not checked:
            return
        path = "/contracts/{}/supervisor/state"
        answers = await each(
            self.get(path.format(s.cid), {"taskId": s.task_id}, Feature.STATE_READ) for s in checked
        )
        for supervisor, answer in zip(checked, answers, strict=True):
            if answer.code in ROUTE_MISSING:
                self.ledger.unchecked[Kind.STATES] = f"the service has no {Feature.STATE_READ.value}"
                continue
            stored: tuple[int, int] | None = None
            if answer.ok:
                incarnation, version = answer.field("incarnation"), answer.field("stateVersion")
                if isinstance(incarnation, int) and isinstance(version, int):
                    stored = (incarnation, version)
            elif answer.code != "SUPERVISOR_NOT_FOUND":
                continue  # could not read it: its saves stay as they were, and count as lost
            judge_states(by_key[supervisor.task_id], stored)

    # --- questions and answers ----------------------------------------------------------------

    async def stored_questions(self, supervisor: Supervisor) -> dict[str, dict[str, Any]] | None:
        found: dict[str, dict[str, Any]] = {}
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 500}
            if after is not None:
                params["after"] = after
            answer = await self.get(f"/contracts/{supervisor.cid}/questions", params, Feature.QUESTION_LIST)
            if answer.code in ROUTE_MISSING:
                return None
            questions = answer.field("questions") if answer.ok else None
            if not isinstance(questions, list):
                return found
            found.update({str(q.get("id")): q for q in questions if isinstance(q, dict)})
            next_after = answer.field("nextAfter")
            if not isinstance(next_after, str):
                return found
            after = next_after

    async def questions(self) -> None:
        asked: dict[str, list[Item]] = defaultdict(list)
        answered: dict[str, list[Item]] = defaultdict(list)
        for item in self.ledger.of(Kind.QUESTIONS):
            asked[item.contract_id or ""].append(item)
        for item in self.ledger.of(Kind.ANSWERS):
            answered[item.contract_id or ""].append(item)
        checked = [s for s in self.fleet.supervisors if s.contract_id in asked or s.contract_id in answered]
        stored = await each(self.stored_questions(s) for s in checked)
        for supervisor, questions in zip(checked, stored, strict=True):
            if questions is None:
                reason = f"the service has no {Feature.QUESTION_LIST.value}"
                self.ledger.unchecked[Kind.QUESTIONS] = self.ledger.unchecked[Kind.ANSWERS] = reason
                continue
            judge_questions(asked[supervisor.cid], answered[supervisor.cid], questions)

    async def answer_commands(self) -> None:
        while outstanding(self.ledger.of(Kind.ANSWER_COMMANDS)) and self.time_left():
            await asyncio.sleep(POLL)
        for item in outstanding(self.ledger.of(Kind.ANSWER_COMMANDS)):
            item.lose("not on the daemon's command feed")

    # --- contracts and deliverables -------------------------------------------------------------

    async def deliverables_of(self, contract_id: str) -> set[str] | None:
        found: set[str] = set()
        after = 0
        while True:
            answer = await self.get(f"/contracts/{contract_id}/events", {"after": after, "limit": 500})
            events = answer.field("events") if answer.ok else None
            if not isinstance(events, list):
                return None
            for event in events:
                if isinstance(event, dict) and event.get("type") == "deliverable_completed":
                    found.add(str((event.get("payload") or {}).get("deliverableId")))
            last = answer.field("lastEventId")
            if len(events) < 500 or not isinstance(last, int):
                return found
            after = last

    async def contracts(self) -> None:
        created = [i for i in self.ledger.of(Kind.CONTRACTS) if i.contract_id is not None]
        reads = await each(self.get(f"/contracts/{i.contract_id}") for i in created)
        for item, answer in zip(created, reads, strict=True):
            if answer.ok:
                item.apply()
            elif answer.code == "CONTRACT_NOT_FOUND":
                item.lose("contract not found")
        marked: dict[str, list[Item]] = defaultdict(list)
        for item in self.ledger.of(Kind.DELIVERABLES):
            if item.fate is not Fate.REFUSED:
                marked[item.contract_id or ""].append(item)
        contracts = list(marked)
        events = await each(self.deliverables_of(c) for c in contracts)
        for contract_id, delivered in zip(contracts, events, strict=True):
            if delivered is None:
                continue
            for item in marked[contract_id]:
                deliverable = str((item.request or {}).get("deliverableId"))
                if deliverable in delivered:
                    item.apply()
                else:
                    item.lose("no deliverable_completed event")

    # --- all of it ----------------------------------------------------------------------------

    def skipped(self) -> None:
        """Kinds that were never exercised, and why."""
        service, ledger, fleet = self.service, self.ledger, self.fleet
        needs = {
            Kind.STATES: Feature.STATES,
            Kind.RESTORATIONS: Feature.RESTORATION,
            Kind.QUESTIONS: Feature.QUESTIONS,
            Kind.ANSWERS: Feature.ANSWERS,
            Kind.ANSWER_COMMANDS: Feature.COMMANDS,
        }
        never = service.ever_missing - service.ever_present
        for kind, feature in needs.items():
            if not ledger.items[kind] and feature in never:
                ledger.skipped[kind] = f"the service has no {feature.value}"
        unused = {kind for kind in Kind if not ledger.items[kind] and kind not in ledger.skipped}
        if Kind.ANSWERS in unused and Kind.QUESTIONS in ledger.skipped:
            ledger.skipped[Kind.ANSWERS] = "no questions were asked"
        if Kind.ANSWER_COMMANDS in unused and {Kind.ANSWERS, Kind.QUESTIONS} & set(ledger.skipped):
            ledger.skipped[Kind.ANSWER_COMMANDS] = "no questions were answered"
        if Kind.RESTORATIONS in unused and fleet.options.crash_rate <= 0:
            ledger.skipped[Kind.RESTORATIONS] = "crash rate 0"

    async def run(self) -> Reconciliation:
        await asyncio.gather(
            self.reports(),
            self.heartbeats(),
            self.states(),
            self.questions(),
            self.answer_commands(),
            self.contracts(),
        )
        await self.fleet.finish()
        self.skipped()
        for kind, notes in self.notes.items():
            self.ledger.notes[kind].extend(notes)
        options = self.fleet.options
        facts = RunFacts(
            url=self.url,
            owner=self.fleet.tokens.owner,
            supervisors=options.supervisors,
            daemons=len(self.fleet.daemons),
            duration=options.duration,
            crash_rate=options.crash_rate,
            heartbeat_interval=options.heartbeat_interval,
            seed=options.seed,
            elapsed=self.fleet.elapsed(),
        )
        return Reconciliation(
            facts=facts,
            rows=tuple(self.ledger.rows()),
            calls=dict(self.ledger.calls),
            commands=dict(self.fleet.commands),
            mismatches=tuple(self.fleet.mismatches),
        )


async def reconcile(fleet: Fleet, url: str) -> Reconciliation:
    return await Readback(fleet, url).run()


__all__ = ["HEARTBEAT_PAGE", "RESEND_AFTER", "Readback", "reconcile"]
