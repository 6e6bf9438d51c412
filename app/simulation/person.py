"""The simulated person of the owner: answers each question a few seconds after it is asked.

An answer the service accepts is expected back on the daemon's feed as an `answer_question`
command when the service has a feed; without one the supervisor hears of it directly.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from app.simulation.ledger import Kind
from app.simulation.plan import Question, answer_delay, answer_for
from app.simulation.service import ROUTE_MISSING, Feature

if TYPE_CHECKING:
    from app.simulation.fleet import Fleet
    from app.simulation.supervisor import Supervisor


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


__all__ = ["Person"]
