"""Judging what the service holds against what it acknowledged: the arithmetic, pure.

`app.simulation.readback` reads the service and hands what it read to these functions; they
decide each item's fate, check a restoration against what its supervisor had been told, and
lay out the final table (or JSON). Lost is the one number that matters: the simulator exits 0
only when it is 0 for every kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.simulation.ledger import CallStats, Fate, Item, Kind, Row, percentile

# --- reports: what `GET /api/v1/messages/{id}` said ------------------------------------------


def judge_message(item: Item, answer: Mapping[str, Any]) -> str:
    """Set a report's fate from its message status; returns the status (`pending`, `unknown`
    leave it outstanding: the caller resends it with the same id)."""
    status = str(answer.get("status", "unknown"))
    if status == "applied":
        item.apply()
    elif status == "refused":
        error = answer.get("error") or {}
        item.refuse(str(error.get("code") or "REFUSED"), error.get("message"))
    return status


# --- heartbeats: ids sent against ids stored ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeartbeatCheck:
    stored: int
    fenced: int
    missing: tuple[str, ...]


def judge_heartbeats(items: Sequence[Item], stored: Mapping[str, bool]) -> HeartbeatCheck:
    """`stored` maps each stored heartbeat id to whether it was fenced. A fenced heartbeat was
    stored (and refused its effect because its incarnation had been replaced): applied, not
    lost. Refused heartbeats keep their fate; the rest still missing are returned."""
    found = fenced = 0
    missing: list[str] = []
    for item in items:
        if item.fate is Fate.REFUSED:
            continue
        if item.key in stored:
            item.apply()
            found += 1
            fenced += stored[item.key]
        else:
            missing.append(item.key)
    return HeartbeatCheck(found, fenced, tuple(missing))


# --- states: the last acknowledged version against the stored one ---------------------------


def version_of(item: Item) -> tuple[int, int]:
    """A state save's (incarnation, stateVersion), kept in its request."""
    body = item.request or {}
    return int(body.get("incarnation", 0)), int(body.get("stateVersion", 0))


def judge_states(items: Sequence[Item], stored: tuple[int, int] | None) -> None:
    """One supervisor's saves against its stored (incarnation, stateVersion).

    A save is applied when the stored state is at or past it (states only move forward, so a
    later save replacing it is expected). An acknowledged save newer than the stored state,
    or no stored state at all after one was acknowledged, is lost. A save that never got an
    answer is applied if the stored state reached it, else lost with `no answer`.
    """
    for item in items:
        if item.fate is Fate.REFUSED:
            continue
        if stored is not None and version_of(item) <= stored:
            item.apply()
        elif item.fate is Fate.ACCEPTED:
            item.lose(
                "acknowledged, newer than the stored state"
                if stored is not None
                else "acknowledged, no state stored"
            )
        else:
            item.lose("no answer")


# --- questions and answers ---------------------------------------------------------------------


def judge_questions(
    asked: Sequence[Item], answers: Sequence[Item], stored: Mapping[str, Mapping[str, Any]]
) -> None:
    """`stored` maps question id → the stored question (`status`, `answer`). Every question
    asked is stored (whatever its status); every answer given is stored with its value."""
    for item in asked:
        if item.fate is Fate.REFUSED:
            continue
        if item.key in stored:
            item.apply()
        else:
            item.lose("question not stored" if item.fate is Fate.ACCEPTED else "no answer")
    for item in answers:
        if item.fate is Fate.REFUSED:
            continue
        question = stored.get(item.key)
        given = (item.request or {}).get("answer")
        if question is None:
            item.lose("question not stored")
        elif question.get("status") != "answered":
            item.lose(f"question is {question.get('status')}, not answered")
        elif not same_answer(question.get("answer"), given):
            item.lose("another answer stored")
        else:
            item.apply()


def same_answer(stored: Any, given: Any) -> bool:
    """A multiple choice is kept in the options' order, whatever order it was given in."""
    if isinstance(stored, list) and isinstance(given, list):
        return sorted(map(str, stored)) == sorted(map(str, given))
    return bool(stored == given and type(stored) is type(given))


# --- restorations --------------------------------------------------------------------------------


@dataclass(slots=True)
class Acknowledged:
    """What the service acknowledged to one supervisor, as the observer saw it.

    The `uncertain_*` sets hold what was sent without an answer (it may or may not have
    landed), so a restoration is not blamed for either outcome.
    """

    state: tuple[int, int] | None = None  # (incarnation, stateVersion) of the last acknowledged save
    history_length: int = 0
    uncertain_versions: set[int] = field(default_factory=set)
    uncertain_history: set[int] = field(default_factory=set)
    open_questions: set[str] = field(default_factory=set)  # asked, no answer acknowledged
    answered: set[str] = field(default_factory=set)  # the person's answer acknowledged
    uncertain_questions: set[str] = field(default_factory=set)  # an ask or answer without answer
    phase_moving: str | None = None  # a deliverable moved the phase; no save in it acknowledged yet


def _ids(entries: Any) -> set[str]:
    found: set[str] = set()
    for entry in entries or []:
        if isinstance(entry, Mapping):
            value = entry.get("id", entry.get("questionId"))
            if value is not None:
                found.add(str(value))
        elif isinstance(entry, str):
            found.add(entry)
    return found


def restored_state(restoration: Mapping[str, Any]) -> Mapping[str, Any] | None:
    state = restoration.get("state")
    return state if isinstance(state, Mapping) else None


def restored_version(restoration: Mapping[str, Any]) -> int | None:
    """The restored stateVersion (in `state`, or beside it); None when no state came back."""
    state = restored_state(restoration)
    for source in (state or {}, restoration):
        value = source.get("stateVersion")
        if isinstance(value, int):
            return value
    return None


def restored_history_length(restoration: Mapping[str, Any]) -> int:
    """How long the restored history is: `historyLength`, else `historyFrom` + the messages sent."""
    state = restored_state(restoration) or {}
    for value in (restoration.get("historyLength"), state.get("historyLength")):
        if isinstance(value, int):
            return value
    start = restoration.get("historyFrom")
    history = restoration.get("history")
    return (start if isinstance(start, int) else 0) + (len(history) if isinstance(history, list) else 0)


def pending_question_ids(restoration: Mapping[str, Any]) -> set[str]:
    return _ids(restoration.get("pendingQuestions"))


def answered_question_ids(restoration: Mapping[str, Any]) -> set[str]:
    return _ids(restoration.get("answeredQuestions"))


def inconsistency_kinds(restoration: Mapping[str, Any]) -> list[str]:
    found = restoration.get("inconsistencies") or []
    return [str(i.get("kind")) if isinstance(i, Mapping) else str(i) for i in found]


def expected_fallback(ack: Acknowledged, restoration: Mapping[str, Any]) -> bool:
    """The contract moved to the next phase and the supervisor had not saved a state in it
    yet: the stored state's phase is behind the contract's, and the protocol's answer is the
    last consistent checkpoint, else a fresh start. That, and only that, is expected then."""
    kinds = inconsistency_kinds(restoration)
    return ack.phase_moving is not None and bool(kinds) and set(kinds) == {"phase_mismatch"}


def compare_restoration(ack: Acknowledged, restoration: Mapping[str, Any]) -> list[str]:
    """Where a restoration disagrees with what the service had acknowledged to the supervisor
    (empty: it matched). The service answers from its own records; the observer checks it
    gave back the last acknowledged state version, the history that far, and every open
    question as pending and no answered one as pending. A fallback the protocol prescribes
    (`expected_fallback`) matches as long as the questions still do."""
    problems: list[str] = []
    fallback = expected_fallback(ack, restoration)
    if restoration.get("inconsistencies") and not fallback:
        problems.append(f"the service found the stored state inconsistent: {restoration['inconsistencies']}")
    version = restored_version(restoration)
    if fallback:
        pass
    elif ack.state is None:
        if version is not None and version not in ack.uncertain_versions:
            problems.append(f"restored stateVersion {version} though no save was acknowledged")
    elif version != ack.state[1] and version not in ack.uncertain_versions:
        problems.append(f"stateVersion: {ack.state[1]} acknowledged, {version} restored")
    length = restored_history_length(restoration)
    if not fallback and length != ack.history_length and length not in ack.uncertain_history:
        problems.append(f"history: {ack.history_length} messages acknowledged, {length} restored")
    pending = pending_question_ids(restoration)
    for qid in sorted(ack.open_questions - pending - ack.uncertain_questions):
        problems.append(f"question {qid} is open but was not restored as pending")
    for qid in sorted((ack.answered & pending) - ack.uncertain_questions):
        problems.append(f"question {qid} was answered but was restored as pending")
    known = ack.open_questions | ack.answered | ack.uncertain_questions
    for qid in sorted(pending - known):
        problems.append(f"question {qid} restored as pending was never acknowledged")
    return problems


# --- the final account ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFacts:
    url: str
    owner: str | None
    supervisors: int
    daemons: int
    duration: float
    crash_rate: float
    heartbeat_interval: float
    seed: int
    elapsed: float


@dataclass(frozen=True, slots=True)
class Reconciliation:
    facts: RunFacts
    rows: tuple[Row, ...]
    calls: Mapping[str, CallStats]
    commands: Mapping[str, int] = field(default_factory=dict)  # daemon commands received, by name
    mismatches: tuple[str, ...] = ()  # restorations that did not match, one line each

    @property
    def lost(self) -> int:
        return sum(row.lost for row in self.rows)

    @property
    def ok(self) -> bool:
        return self.lost == 0

    def row(self, kind: Kind) -> Row:
        return next(r for r in self.rows if r.kind is kind)

    def to_json(self) -> dict[str, Any]:
        f = self.facts
        return {
            "url": f.url,
            "owner": f.owner,
            "supervisors": f.supervisors,
            "daemons": f.daemons,
            "durationSeconds": f.duration,
            "crashRatePerMinute": f.crash_rate,
            "heartbeatIntervalSeconds": f.heartbeat_interval,
            "seed": f.seed,
            "elapsedSeconds": round(f.elapsed, 1),
            "kinds": {row.kind.value: row.to_json() for row in self.rows},
            "calls": {
                name: {
                    "answers": dict(sorted(stats.codes.items())),
                    "p50Ms": _round(percentile(stats.latencies_ms, 50)),
                    "p99Ms": _round(percentile(stats.latencies_ms, 99)),
                }
                for name, stats in sorted(self.calls.items())
                if stats.codes
            },
            "commandsReceived": dict(sorted(self.commands.items())),
            "restorationMismatches": list(self.mismatches),
            "lost": self.lost,
            "ok": self.ok,
        }

    def render(self) -> str:
        return "\n".join(render_lines(self))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _codes(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))


def render_lines(result: Reconciliation) -> list[str]:
    """The table a person reads at the end, then the verdict on its own line."""
    f = result.facts
    lines = [
        f"Reconciliation: {_count(f.supervisors, 'supervisor')} on {_count(f.daemons, 'daemon')}, "
        f"{f.duration:g} s, "
        f"crash rate {f.crash_rate:g}/min, heartbeats every {f.heartbeat_interval:g} s, seed {f.seed} "
        f"({f.elapsed:.0f} s in all, against {f.url})",
        f"{'kind':<16}{'sent':>8}{'applied':>9}{'refused':>9}{'lost':>6}  p50/p99 ms  notes",
    ]
    for row in result.rows:
        stats = result.calls.get(row.kind.value)
        latency = "-"
        if stats is not None and stats.latencies_ms:
            latency = f"{percentile(stats.latencies_ms, 50):.0f}/{percentile(stats.latencies_ms, 99):.0f}"
        notes = list(row.notes)
        if row.refused_by_code:
            notes.append(f"refused: {_codes(row.refused_by_code)}")
        if row.lost_by_reason:
            notes.append(f"lost: {_codes(row.lost_by_reason)}")
        if row.unverified:
            notes.append(f"{row.unverified} acknowledged, not verifiable: {row.unchecked}")
        if row.skipped:
            notes.insert(0, f"skipped: {row.skipped}")
        lines.append(
            f"{row.kind.value:<16}{row.sent:>8}{row.applied:>9}{row.refused:>9}{row.lost:>6}"
            f"  {latency:<11} {'; '.join(notes)}".rstrip()
        )
    if result.commands:
        lines.append(f"daemon commands received: {_codes(result.commands)}")
    lines.extend(f"restoration mismatch: {m}" for m in result.mismatches[:10])
    if result.ok:
        lines.append("lost 0: everything the service acknowledged is there.")
    else:
        lost = {row.kind.value: row.lost for row in result.rows if row.lost}
        lines.append(f"LOST {result.lost} ({_codes(lost)}): the service does not hold what it acknowledged.")
    return lines


def exit_code(result: Reconciliation) -> int:
    """0 only when nothing is lost."""
    return 0 if result.ok else 1


def merge_counts(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for mapping in counts:
        for key, n in mapping.items():
            total[key] = total.get(key, 0) + n
    return total


__all__ = [
    "Acknowledged",
    "HeartbeatCheck",
    "Reconciliation",
    "RunFacts",
    "answered_question_ids",
    "compare_restoration",
    "exit_code",
    "expected_fallback",
    "inconsistency_kinds",
    "judge_heartbeats",
    "judge_message",
    "judge_questions",
    "judge_states",
    "merge_counts",
    "pending_question_ids",
    "render_lines",
    "restored_history_length",
    "restored_state",
    "restored_version",
    "same_answer",
    "version_of",
]
