"""Heartbeats on their way in: a per-process buffer (the API module) and a group commit (HTTP).

One broker message per heartbeat would cap the fleet at the broker's per-message ceiling, so
heartbeats leave a process in lists (`heartbeats.ingest` messages):

- **`HeartbeatBuffer`**, one per process and sender: the API module's `send_heartbeat` checks
  the heartbeat (field errors and an invisible contract are raised at once), appends it and
  returns; the buffer sends a list every `batch_size` heartbeats (in the caller's thread) or
  after `flush_ms` (a background thread), and at exit and on `flush()`. It is bounded
  (`max_buffered`): while the broker refuses sends, the newest are kept, the oldest dropped
  and counted (a heartbeat is superseded by the next one anyway), and the caller sees the
  broker's error on the send it triggered.
- **`http_flush`**, the send of the HTTP front's group commit (`app.group_commit`, one per
  app): concurrent requests are coalesced into one message. A group waits at most
  `coalesce_ms` for company (or until it holds `batch_size` heartbeats); its flush checks the
  visibility and status of every contract in the group and the holders of its task ids with
  one query and sends one message. Every request is answered only after the message holding
  its heartbeats is in the broker (or with the broker's error).

Both refuse what the worker would refuse for reasons they can see: a contract the caller
cannot see, a closed one (`closed_contract_refusal`: completed, failed or archived, refused as
a state save on it is), and a task id that is another contract's supervisor (`held_by_another`,
the worker's rule) or another contract's ordinary task (a `contract_tasks` row: a task id
belongs to one contract, as `tasks/started` holds), so such a heartbeat is answered as refused
instead of becoming a dead letter the sender never learns of.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import Engine, literal, select, union_all

from app.auth import Caller
from app.broker import Sender
from app.config import Settings
from app.db import driver_autocommit, get_engine, unit_of_work
from app.domain.errors import ContractError, ContractNotFound, FeatureDisabled, ValidationFailed
from app.domain.heartbeat_plan import closed_contract_refusal, held_by_another
from app.domain.heartbeat_wire import refuse_if_far_ahead, wire_heartbeat
from app.domain.heartbeats import InvalidHeartbeat
from app.domain.incarnations import starts_supervisor
from app.domain.lifecycle import CLOSED_STATUSES
from app.foreign_tasks import foreign_ordinary_task, foreign_supervisor, foreign_task_refusal
from app.heartbeat_messages import MAX_PER_MESSAGE, message_of
from app.models import Contract, ContractTask, Supervisor, SupervisorStateRow
from app.prepared import driver_rows
from app.queues import TaskName

log = logging.getLogger(__name__)

FLAG: Final = "supervisor_heartbeat"
# How long a (contract, task) pair found visible to a principal and open, the task not another
# contract's, is trusted without asking again. Owners never change and neither does the
# contract holding a task id, so this only bounds how long a deleted or closed contract's
# heartbeats still leave here (the worker re-checks every heartbeat anyway, and changes
# nothing for them).
VISIBLE_SECONDS: Final = 300.0
MAX_VISIBLE_ENTRIES: Final = 100_000


def require_enabled(settings: Settings) -> None:
    if not settings.feature_flags.supervisor_heartbeat:
        raise FeatureDisabled(FLAG)


def invalid(exc: InvalidHeartbeat) -> ValidationFailed:
    return ValidationFailed(
        f"The heartbeat is not valid: {exc.field}: {exc.problem}.",
        details={"field": exc.field, "problem": exc.problem},
    )


# One round trip per group: the contracts' owners and statuses (no task id), then the group's
# task ids held by another contract than the one a heartbeat names them on (`held_by_another`:
# the supervisors row's contract_id, or the contract_tasks row's for an ordinary task), with
# that contract's owner and which kind of task it holds, so a refusal can be explained to the
# owner of both without asking again. Ids and answers as text; the ids are sent as array
# literals (a text[] parameter does not cast to uuid[] in EXECUTE; the ids passed the wire
# form's check, so they hold no brace or comma).
_FACTS: Final = """
SELECT NULL::text, c.id::text, c.owner_id, c.status FROM contracts c WHERE c.id = ANY(%(ids)s::uuid[])
UNION ALL
SELECT s.task_id::text, s.contract_id::text, o.owner_id, 'supervisor'
FROM unnest(%(tasks)s::uuid[], %(claims)s::uuid[]) AS t(task_id, contract_id)
JOIN supervisors s ON s.task_id = t.task_id AND s.contract_id <> t.contract_id
LEFT JOIN contracts o ON o.id = s.contract_id
UNION ALL
SELECT ct.id::text, ct.contract_id::text, o.owner_id, 'task'
FROM unnest(%(tasks)s::uuid[], %(claims)s::uuid[]) AS t(task_id, contract_id)
JOIN contract_tasks ct ON ct.id = t.task_id AND ct.contract_id <> t.contract_id
LEFT JOIN contracts o ON o.id = ct.contract_id
UNION ALL
SELECT ss.task_id::text, ss.contract_id::text, o.owner_id, 'supervisor'
FROM unnest(%(tasks)s::uuid[], %(claims)s::uuid[]) AS t(task_id, contract_id)
JOIN supervisor_states ss ON ss.task_id = t.task_id AND ss.contract_id <> t.contract_id
LEFT JOIN contracts o ON o.id = ss.contract_id
"""

# The holder of a task id: (its contract, that contract's owner, whether it holds it as a
# supervisor rather than as an ordinary task), for the explanation its owner reads.
Holder = tuple[str, str | None, bool]


@dataclass(slots=True)
class GroupFacts:
    """What the fronts judge a group of heartbeats by, read in one query (`facts_of`).

    `owners`: the owner of each contract that exists; `closed`: the status of each of them
    that is closed (completed, failed, archived: no heartbeat is taken on it, as no state
    save is). `holders`: task id → `Holder` for the task ids some heartbeat names on another
    contract (its supervisor or its ordinary task: either way the id is that contract's);
    `claim` adds the group's own first claims on task ids nobody holds yet.
    """

    owners: dict[str, str]
    holders: dict[str, Holder]
    closed: dict[str, str] = field(default_factory=dict)

    def closed_refusal(self, contract_id: str) -> ValidationFailed | None:
        """The refusal of a heartbeat on `contract_id` when it is closed (else None): a state
        save's refusal of a closed contract, naming contractId."""
        status = self.closed.get(contract_id)
        return None if status is None else closed_contract_refusal(status)

    def claim(
        self, task_id: str, contract_id: str, owner: str, incarnation: Any = None
    ) -> ValidationFailed | None:
        """The refusal of `task_id` on `contract_id` (visible, owned by `owner`) when another
        contract holds it; otherwise None, and this contract holds it for the rest of the group
        when the heartbeat (naming `incarnation`) may start its supervisor (the first such
        heartbeat naming a new task id in a list claims it, at the worker too; one naming an
        incarnation never issued is fenced there and claims nothing: `starts_supervisor`).
        Explained only to the owner of both contracts (`app.foreign_tasks`)."""
        holder = self.holders.get(task_id)
        if holder is None:
            if starts_supervisor(incarnation):
                self.holders[task_id] = (contract_id, owner, True)
            return None
        other, other_owner, supervisor = holder
        if not held_by_another(other, contract_id):
            return None
        explained = foreign_supervisor(task_id) if supervisor else foreign_ordinary_task(task_id)
        return foreign_task_refusal(task_id, explained, other_owner == owner)

    def refusal(self, caller: Caller, item: dict[str, Any]) -> tuple[str, ContractError] | None:
        """Why the fronts refuse this heartbeat (the field to name, the error), or None: its
        contract invisible to `caller` or missing, then closed, then its task another
        contract's (`claim`, which also records this heartbeat's claim). One order for the HTTP
        group commit and the API module alike."""
        contract_id = item["contractId"]
        owner = self.owners.get(contract_id)
        if owner is None or not caller.may_access(owner):
            return "contractId", ContractNotFound(contract_id)
        closed = self.closed_refusal(contract_id)
        if closed is not None:
            return "contractId", closed
        refused = self.claim(item["taskId"], contract_id, owner, item.get("incarnation"))
        return None if refused is None else ("taskId", refused)


def facts_of(
    engine: Engine | None,
    settings: Settings,
    claims: set[tuple[str, str]],
    contracts: set[str] | None = None,
) -> GroupFacts:
    """The facts of a group's (task id, contract id) pairs, in one query (see `_FACTS`): the
    owner and status of each contract of `contracts` (default: the claims' own), and the
    holders of the claims' task ids.

    The ids are canonical UUID text (the wire form's). On PostgreSQL one prepared statement on
    the driver's cursor, ids and answers as text: the HTTP front asks this once per coalesced
    group of up to a few hundred heartbeats, and turning each id into a `UUID` and back cost
    more than the query.
    """
    if contracts is None:
        contracts = {cid for _, cid in claims}
    if not contracts:
        return GroupFacts({}, {})
    bind = engine or get_engine()
    if bind.dialect.name == "postgresql":
        tasks = [task for task, _ in claims]
        claimed = [cid for _, cid in claims]
        with driver_autocommit(bind) as connection:
            rows = driver_rows(
                connection,
                _FACTS,
                {
                    "ids": "{" + ",".join(contracts) + "}",
                    "tasks": "{" + ",".join(tasks) + "}",
                    "claims": "{" + ",".join(claimed) + "}",
                },
                prepare=settings.database_prepared_statements,
            )
        facts = GroupFacts({}, {})
        for task, cid, owner, status in rows:
            if task is None:
                facts.owners[cid] = owner
                if status in CLOSED_STATUSES:
                    facts.closed[cid] = status
            else:
                facts.holders[task] = (cid, owner, status == "supervisor")
        return facts
    # SQLite (the embedded default): in-process, so two statements cost no round trip; every
    # holder of the group's task ids (supervisors, then ordinary tasks) is read and `claim`
    # applies the rule.
    with unit_of_work(engine=engine, settings=settings) as uow:
        session = uow.session
        found = session.execute(
            select(Contract.id, Contract.owner_id, Contract.status).where(
                Contract.id.in_(sorted({uuid.UUID(cid) for cid in contracts}))
            )
        ).all()
        facts = GroupFacts(
            {str(cid): owner for cid, owner, _ in found},
            {},
            {str(cid): status for cid, _, status in found if status in CLOSED_STATUSES},
        )
        task_ids = sorted({uuid.UUID(task) for task, _ in claims})
        if not task_ids:
            return facts
        saved = SupervisorStateRow
        held = session.execute(
            union_all(
                select(Supervisor.task_id, Supervisor.contract_id, Contract.owner_id, literal(True))
                .outerjoin(Contract, Contract.id == Supervisor.contract_id)
                .where(Supervisor.task_id.in_(task_ids)),
                select(ContractTask.id, ContractTask.contract_id, Contract.owner_id, literal(False))
                .outerjoin(Contract, Contract.id == ContractTask.contract_id)
                .where(ContractTask.id.in_(task_ids)),
                # A supervisor known by its saved state alone holds its task id too.
                select(saved.task_id, saved.contract_id, Contract.owner_id, literal(True))
                .outerjoin(Contract, Contract.id == saved.contract_id)
                .where(saved.task_id.in_(task_ids)),
            )
        )
        found_holders: dict[str, list[Holder]] = {}
        for task_id, cid, owner, supervisor in held:
            found_holders.setdefault(str(task_id), []).append((str(cid), owner, bool(supervisor)))
        # As PostgreSQL's query: only the holders on another contract than a claim's own.
        for task, cid in claims:
            for holder in found_holders.get(task, ()):
                if holder[0] != cid:
                    facts.holders[task] = holder
        return facts


# --- the API module's per-process buffer ----------------------------------------------------


class HeartbeatBuffer:
    """Heartbeats waiting to leave this process, sent as lists; see the module docstring."""

    def __init__(self, send: Sender, batch_size: int, flush_ms: float, max_buffered: int) -> None:
        self._send = send
        self.batch_size = min(batch_size, MAX_PER_MESSAGE)
        self.flush_seconds = flush_ms / 1000
        self.max_buffered = max(max_buffered, self.batch_size)
        self._items: list[tuple[uuid.UUID, dict[str, Any]]] = []
        self._oldest: float | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.sent = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, principal_id: uuid.UUID, item: dict[str, Any]) -> None:
        with self._lock:
            self._items.append((principal_id, item))
            if self._oldest is None:
                self._oldest = time.monotonic()
            full = len(self._items) >= self.batch_size
            self._start_timer()
        if full:
            self.flush()

    def flush(self) -> int:
        """Send everything buffered now (in lists of `batch_size`); returns how many were sent."""
        with self._send_lock:
            with self._lock:
                items, self._items, self._oldest = self._items, [], None
            sent = 0
            try:
                while sent < len(items):
                    chunk = items[sent : sent + self.batch_size]
                    groups: dict[uuid.UUID, list[dict[str, Any]]] = {}
                    for principal, item in chunk:
                        groups.setdefault(principal, []).append(item)
                    self._send(TaskName.INGEST_HEARTBEATS.value, message_of(groups), None)
                    sent += len(chunk)
            except Exception:
                self._keep(items[sent:])
                raise
            finally:
                self.sent += sent
            return sent

    def _keep(self, unsent: list[tuple[uuid.UUID, dict[str, Any]]]) -> None:
        """Put unsent heartbeats back, newest kept within the bound, oldest dropped and counted."""
        with self._lock:
            merged = unsent + self._items
            overflow = len(merged) - self.max_buffered
            if overflow > 0:
                self.dropped += overflow
                log.warning("heartbeat buffer full: %d oldest heartbeats dropped", overflow)
                merged = merged[overflow:]
            self._items = merged
            if merged and self._oldest is None:
                self._oldest = time.monotonic()

    def _start_timer(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="heartbeat-buffer", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            oldest = self._oldest
            if oldest is None:
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
                continue
            due = oldest + self.flush_seconds - time.monotonic()
            if due > 0:
                time.sleep(due)
                continue
            try:
                self.flush()
            except Exception:
                log.warning("heartbeats not sent; kept for the next flush", exc_info=True)
                time.sleep(self.flush_seconds)

    def close(self) -> None:
        """Flush what is left and stop the timer (at exit)."""
        self._closed = True
        self._wake.set()
        try:
            self.flush()
        except Exception:
            log.warning("heartbeats still buffered at exit could not be sent", exc_info=True)


_buffers: dict[int, HeartbeatBuffer] = {}
_buffers_lock = threading.Lock()


def buffer_for(send: Sender, settings: Settings) -> HeartbeatBuffer:
    """This process's buffer for `send` (one per sender, shared by every ContractsAPI)."""
    buffer = _buffers.get(id(send))  # the usual case: no lock (a dict read is atomic)
    if buffer is not None:
        return buffer
    with _buffers_lock:
        buffer = _buffers.get(id(send))
        if buffer is None:
            cfg = settings.heartbeats
            buffer = _buffers[id(send)] = HeartbeatBuffer(
                send, cfg.batch_size, cfg.flush_ms, cfg.max_buffered
            )
        return buffer


@atexit.register
def flush_all() -> None:
    """Flush every buffer of this process (registered at exit)."""
    with _buffers_lock:
        buffers = list(_buffers.values())
    for buffer in buffers:
        buffer.close()


K = TypeVar("K", bound=Hashable)


class _Recent(Generic[K]):
    """Keys found good within the last `VISIBLE_SECONDS` (bounded: when full, it starts again)."""

    def __init__(self) -> None:
        self._seen: dict[K, float] = {}
        self._lock = threading.Lock()

    def fresh(self, key: K) -> bool:
        at = self._seen.get(key)
        return at is not None and time.monotonic() - at < VISIBLE_SECONDS

    def add(self, keys: Iterable[K]) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) >= MAX_VISIBLE_ENTRIES:
                self._seen.clear()
            self._seen.update((key, now) for key in keys)


# The API module's: (principal, contract id, task id) found visible and open, the task not
# another contract's, so a steady sender pays one query per supervisor every `VISIBLE_SECONDS`
# and none between.
_visible: _Recent[tuple[uuid.UUID, str, str]] = _Recent()


def send_heartbeat(
    caller: Caller, engine: Engine | None, settings: Settings, send: Sender, raw: Mapping[str, Any]
) -> uuid.UUID:
    """Check one heartbeat as sent, buffer it, return its id."""
    require_enabled(settings)
    try:
        item = wire_heartbeat(raw)
    except InvalidHeartbeat as exc:
        raise invalid(exc) from None
    send_wire(caller, engine, settings, send, item)
    return uuid.UUID(item["id"])


def send_wire(
    caller: Caller, engine: Engine | None, settings: Settings, send: Sender, item: dict[str, Any]
) -> None:
    """Buffer one checked heartbeat in wire form (the API module's `send_heartbeat`), once its
    contract is known visible to the caller and open, and its task id not another contract's
    (cached, see `_VisibleCache`: a contract that closes after its answer was cached is refused
    here once the entry expires, within `VISIBLE_SECONDS`, and by the worker meanwhile; a
    refusal is not cached, so it is asked again)."""
    try:
        refuse_if_far_ahead(item, datetime.now(UTC))
    except InvalidHeartbeat as exc:
        raise invalid(exc) from None
    contract_id, task_id = item["contractId"], item["taskId"]
    key = (caller.principal_id, contract_id, task_id)
    if not _visible.fresh(key):
        refused = facts_of(engine, settings, {(task_id, contract_id)}).refusal(caller, item)
        if refused is not None:
            raise refused[1]
        _visible.add((key,))
    buffer_for(send, settings).add(caller.principal_id, item)


# --- the HTTP front's group commit ----------------------------------------------------------


@dataclass
class ItemResult:
    index: int
    id: str | None  # the heartbeat's id, canonical UUID text
    code: str | None = None
    field: str | None = None
    message: str | None = None

    @property
    def accepted(self) -> bool:
        return self.code is None

    def refuse(self, code: str, field: str, message: str) -> None:
        """Turn this heartbeat's result into a refusal (the group's check, after parsing)."""
        self.code, self.field, self.message = code, field, message


@dataclass
class Submission:
    """One request's heartbeats: the parsed ones with their positions, and every result."""

    caller: Caller
    parsed: list[tuple[int, dict[str, Any]]]  # (position, the heartbeat in wire form)
    results: list[ItemResult]


def http_flush(engine: Engine | None, settings: Settings, send: Sender) -> Callable[[list[Submission]], None]:
    """The group commit's send: one query for the group's facts (`facts_of`), then one message.

    Every contract of the group is asked for each time (its owner and status: a contract closed
    a moment ago refuses the next heartbeat on it). The holders of its task ids are asked for
    only for pairs (task id, contract id) not found free within `VISIBLE_SECONDS` by two
    lookups: the contract holding a task id never changes, so a supervisor beating every 30 s
    costs two lookups of its task id every 5 minutes and none between. Two, because the first
    heartbeat of a new task id can lose the race for it to another contract's, whose first
    heartbeat the worker had not stored yet when this lookup ran; the second lookup, a beat
    later, sees the winner. A pair is remembered from its lookup, never refreshed by the
    heartbeats it lets through, so a refusal the worker makes reaches the front within
    `VISIBLE_SECONDS`. (What this cannot see, another contract taking that task id as an
    ordinary task meanwhile, the worker refuses, as it refuses whatever got past a front.)
    """
    held_here: _Recent[tuple[str, str]] = _Recent()
    seen_free: _Recent[tuple[str, str]] = _Recent()

    def flush(entries: list[Submission]) -> None:
        pairs = {(item["taskId"], item["contractId"]) for e in entries for _, item in e.parsed}
        asked = {pair for pair in pairs if not held_here.fresh(pair)}
        facts = facts_of(engine, settings, asked, {cid for _, cid in pairs})
        groups: dict[uuid.UUID, list[dict[str, Any]]] = {}
        total = 0
        for entry in entries:
            for index, item in entry.parsed:
                refused = facts.refusal(entry.caller, item)
                if refused is not None:
                    field, error = refused
                    entry.results[index].refuse(error.code, field, error.message)
                    continue
                groups.setdefault(entry.caller.principal_id, []).append(item)
                total += 1
        if not total:
            return
        if total <= MAX_PER_MESSAGE:
            send(TaskName.INGEST_HEARTBEATS.value, message_of(groups), None)
        else:
            for principal, items in groups.items():
                for start in range(0, len(items), MAX_PER_MESSAGE):
                    send(
                        TaskName.INGEST_HEARTBEATS.value,
                        message_of({principal: items[start : start + MAX_PER_MESSAGE]}),
                        None,
                    )
        free = {(item["taskId"], item["contractId"]) for items in groups.values() for item in items} & asked
        held_here.add(pair for pair in free if seen_free.fresh(pair))
        seen_free.add(free)

    return flush


def parse_submission(caller: Caller, items: Sequence[Any]) -> Submission:
    """Parse each heartbeat of a request; an invalid one gets its own result, the rest go on."""
    parsed: list[tuple[int, dict[str, Any]]] = []
    results: list[ItemResult] = []
    now = datetime.now(UTC)
    for index, raw in enumerate(items):
        try:
            item = wire_heartbeat(raw)
            refuse_if_far_ahead(item, now)
        except InvalidHeartbeat as exc:
            results.append(
                ItemResult(
                    index,
                    None,
                    ValidationFailed.code,
                    exc.field,
                    f"The heartbeat is not valid: {exc.field}: {exc.problem}.",
                )
            )
            continue
        parsed.append((index, item))
        results.append(ItemResult(index, item["id"]))
    return Submission(caller, parsed, results)


__all__ = [
    "FLAG",
    "GroupFacts",
    "HeartbeatBuffer",
    "ItemResult",
    "Submission",
    "buffer_for",
    "facts_of",
    "flush_all",
    "http_flush",
    "parse_submission",
    "require_enabled",
    "send_heartbeat",
    "send_wire",
]
