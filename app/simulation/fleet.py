"""The simulated fleet: supervisors on a few daemons, and the person who answers them.

Everything goes over HTTP to a running service, as any daemon would send it. The fleet builds
the cast, runs it for the duration, and routes each daemon's commands to the supervisor they
are for; each member lives in its own module:

- `app.simulation.supervisor`: a **supervisor** drives one contract through the plan;
- `app.simulation.daemon`: a **daemon** sends its supervisors' heartbeats and reads its
  command feed;
- `app.simulation.person`: the **person** answers each question a few seconds after it is
  asked;
- `app.simulation.crashes`: a **crash** makes a supervisor forget its memory
  (`app.simulation.memory`) and restore from the service, checked by the observer against
  what the service had acknowledged;
- `app.simulation.options`: what a run is given (`Options`, `Tokens`).

The supervisor's memory is what a crash loses; the observer's records (the ledger and
`Acknowledged`) are never forgotten. The names those modules own are importable from here too,
as they were before the fleet was split into them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from app.simulation.crashes import RESTORE_ATTEMPTS
from app.simulation.daemon import Daemon
from app.simulation.ledger import Fate, Kind, progress_line
from app.simulation.memory import Memory, question_id_of
from app.simulation.options import Options, Tokens
from app.simulation.person import Person
from app.simulation.plan import daemon_layout
from app.simulation.service import Service
from app.simulation.supervisor import READS, Supervisor


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


__all__ = [
    "READS",
    "Daemon",
    "Fleet",
    "Memory",
    "Options",
    "Person",
    "Supervisor",
    "Tokens",
    "question_id_of",
]
