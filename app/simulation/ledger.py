"""The simulator's own record of what it sent and what the service said: pure, no I/O.

Every item a simulated daemon or person sends has an id the simulator chose (a message id, a
heartbeat id, a question id, a state version, ...) and one fate:

    sent ──► accepted (2xx) ──► applied (seen stored in the service at reconciliation)
      │          └────────────► lost    (acknowledged, never found)
      ├────► refused (the service answered a code that means "no", kept with the code)
      └────► unanswered (no answer after the retries) ──► applied, or lost

An item is counted once however many times it was resent (same id), so `sent` is what the
fleet meant to do and `lost` what the service acknowledged, or never answered, and does not
hold. This ledger is the observer's: a supervisor that crashes forgets its own memory, never
these records, which is how its restoration is checked.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final


class Kind(StrEnum):
    """What was sent, one row each in the reconciliation table."""

    CONTRACTS = "contracts"  # POST /contracts
    REPORTS = "reports"  # task started / completed, tracked by message id
    HEARTBEATS = "heartbeats"  # POST /supervisors/heartbeats, tracked by heartbeat id
    DELIVERABLES = "deliverables"  # POST .../deliverables/{id}/complete
    STATES = "states"  # POST .../supervisor/state, tracked by (task, incarnation, version)
    QUESTIONS = "questions"  # POST .../questions, tracked by question id
    ANSWERS = "answers"  # POST .../questions/{id}/answer by the person
    ANSWER_COMMANDS = "answer_commands"  # the answer_question command on the daemon's feed
    RESTORATIONS = "restorations"  # GET .../supervisor/restoration after a crash


class Fate(StrEnum):
    UNANSWERED = "unanswered"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    APPLIED = "applied"
    LOST = "lost"


@dataclass(slots=True)
class Item:
    """One thing sent, under the id the simulator gave it."""

    kind: Kind
    key: str
    contract_id: str | None = None
    fate: Fate = Fate.UNANSWERED
    code: str | None = None  # the refusal's code, or why it is lost
    note: str | None = None
    request: dict[str, Any] | None = None  # what to resend with the same id
    sent_at: float = 0.0  # monotonic time of the last send

    def accept(self) -> None:
        if self.fate in (Fate.UNANSWERED, Fate.LOST):
            self.fate = Fate.ACCEPTED

    def refuse(self, code: str, note: str | None = None) -> None:
        self.fate, self.code, self.note = Fate.REFUSED, code, note

    def apply(self) -> None:
        self.fate, self.code = Fate.APPLIED, None

    def lose(self, why: str) -> None:
        self.fate, self.code = Fate.LOST, why


@dataclass(frozen=True, slots=True)
class Row:
    """One kind's line of the reconciliation."""

    kind: Kind
    sent: int
    applied: int
    refused: int
    lost: int
    refused_by_code: dict[str, int] = field(default_factory=dict)
    lost_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None  # why this kind was not exercised (the service lacks it)
    notes: tuple[str, ...] = ()
    unverified: int = 0  # acknowledged, but the service has no way yet to read them back
    unchecked: str | None = None  # why they could not be read back

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "sent": self.sent,
            "applied": self.applied,
            "refused": self.refused,
            "lost": self.lost,
            "refusedByCode": dict(sorted(self.refused_by_code.items())),
            "lostByReason": dict(sorted(self.lost_by_reason.items())),
            "skipped": self.skipped,
            "unverified": self.unverified,
            "unchecked": self.unchecked,
            "notes": list(self.notes),
        }


def tally(
    kind: Kind,
    items: Iterable[Item],
    *,
    skipped: str | None = None,
    unchecked: str | None = None,
    notes: Sequence[str] = (),
) -> Row:
    """Count a kind's items once the reconciliation has judged them.

    Whatever is still only accepted or unanswered at this point was not found in the service:
    it counts as lost (under the reason `not found` or `no answer`), never as applied. Only
    when the service offers no way to read a kind back (`unchecked` says why) are its
    acknowledged items counted as unverified instead.
    """
    items = list(items)
    refused = Counter(i.code or "?" for i in items if i.fate is Fate.REFUSED)
    lost: Counter[str] = Counter()
    unverified = 0
    for item in items:
        if item.fate is Fate.LOST:
            lost[item.code or "not found"] += 1
        elif item.fate is Fate.ACCEPTED and unchecked is not None:
            unverified += 1
        elif item.fate is Fate.ACCEPTED:
            lost["acknowledged, not found"] += 1
        elif item.fate is Fate.UNANSWERED:
            lost["no answer"] += 1
    return Row(
        kind=kind,
        sent=len(items),
        applied=sum(1 for i in items if i.fate is Fate.APPLIED),
        refused=sum(refused.values()),
        lost=sum(lost.values()),
        refused_by_code=dict(refused),
        lost_by_reason=dict(lost),
        skipped=skipped,
        notes=tuple(notes),
        unverified=unverified,
        unchecked=unchecked,
    )


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (`q` from 0 to 100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# Latencies kept per kind: a long run keeps the most recent ones (enough for a p99).
MAX_LATENCIES: Final = 50_000


@dataclass(slots=True)
class CallStats:
    """Per kind: HTTP answers by code (`2xx` for success) and their latencies in ms."""

    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    def record(self, code: str, latency_ms: float | None) -> None:
        self.codes[code] += 1
        if latency_ms is not None:
            if len(self.latencies_ms) >= MAX_LATENCIES:
                del self.latencies_ms[: MAX_LATENCIES // 10]
            self.latencies_ms.append(latency_ms)


class Ledger:
    """Every item sent, by kind and key, and how the HTTP calls behind them went."""

    def __init__(self) -> None:
        self.items: dict[Kind, dict[str, Item]] = {kind: {} for kind in Kind}
        # Call statistics by kind, plus `reads` for the checks that follow an item up.
        self.calls: dict[str, CallStats] = {}
        self.skipped: dict[Kind, str] = {}
        self.unchecked: dict[Kind, str] = {}
        self.notes: dict[Kind, list[str]] = {kind: [] for kind in Kind}

    def item(self, kind: Kind, key: str, contract_id: str | None = None) -> Item:
        """The item under `key`, created on first use (a resend finds the same one)."""
        found = self.items[kind].get(key)
        if found is None:
            found = self.items[kind][key] = Item(kind, key, contract_id)
        return found

    def stats(self, name: str) -> CallStats:
        found = self.calls.get(name)
        if found is None:
            found = self.calls[name] = CallStats()
        return found

    def forget(self, kind: Kind, key: str) -> None:
        """Drop an item that was never really sent (its route does not exist yet)."""
        self.items[kind].pop(key, None)

    def of(self, kind: Kind) -> list[Item]:
        return list(self.items[kind].values())

    def errors_by_code(self) -> Counter[str]:
        """Every non-2xx answer seen so far, by code, across kinds."""
        total: Counter[str] = Counter()
        for stats in self.calls.values():
            total.update({code: n for code, n in stats.codes.items() if code != "2xx"})
        return total

    def rows(self) -> list[Row]:
        return [
            tally(
                kind,
                self.of(kind),
                skipped=self.skipped.get(kind),
                unchecked=self.unchecked.get(kind),
                notes=self.notes[kind],
            )
            for kind in Kind
        ]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def progress_line(elapsed: float, ledger: Ledger) -> str:
    """One line a person can follow: per kind sent/acknowledged and p50/p99, then errors."""
    parts: list[str] = []
    for kind in Kind:
        items = ledger.items[kind]
        if not items:
            continue
        acked = sum(1 for i in items.values() if i.fate in (Fate.ACCEPTED, Fate.APPLIED))
        lat = ledger.stats(kind.value).latencies_ms
        timing = f" p50 {_ms(percentile(lat, 50))} p99 {_ms(percentile(lat, 99))} ms" if lat else ""
        parts.append(f"{kind.value} {acked}/{len(items)}{timing}")
    errors = ledger.errors_by_code()
    tail = ", ".join(f"{code} {n}" for code, n in sorted(errors.items())) or "none"
    return f"[{elapsed:5.0f}s] " + " · ".join(parts or ["nothing sent yet"]) + f" · errors: {tail}"


__all__ = [
    "MAX_LATENCIES",
    "CallStats",
    "Fate",
    "Item",
    "Kind",
    "Ledger",
    "Row",
    "percentile",
    "progress_line",
    "tally",
]
