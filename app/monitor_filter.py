"""What a live-monitor subscriber asks for: the filter message, judged, and what it matches.

Its own module because both streams take the same filter and refuse it in the same words (the
WebSocket's filter messages, `app.http.monitor_ws`; the SSE stream's query parameters,
`app.http.monitor_sse`), while the hub (`app.monitor`) and its catch-up only ask it `matches`.
Seed 4.1.2: contract ids, statuses, include_stale, include_heartbeats, in camelCase or the
seed's snake_case. A field no filter message has, or one given in both spellings, is refused
like a bad value (`FilterError`, each problem naming its field and what is allowed), never
ignored: a misspelt `contractID`, ignored, would subscribe the client to every contract.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from app.domain.lifecycle import Status
from app.domain.uuids import uuid_problem

STALE_TYPES: Final = frozenset({"stale_detected", "stale_cleared"})
HEARTBEAT: Final = "heartbeat"


class FilterError(ValueError):
    """A filter message that cannot be used; `problems` say which field and why."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(f"{p['field']}: {p['problem']}" for p in problems))
        self.problems = problems


# A filter message's fields (seed 4.1.2): each camelCase spelling and the seed's snake_case one.
FILTER_FIELDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "contractIds": "contract_ids",
        "statuses": "statuses",
        "includeStale": "include_stale",
        "includeHeartbeats": "include_heartbeats",
    }
)


def _field(data: Mapping[str, Any], camel: str, snake: str) -> Any:
    return data[camel] if camel in data else data.get(snake)


def _both_spellings(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A problem for each field given in both spellings: which one to obey would be a guess
    (`{"contract_ids": [X], "contractIds": []}` subscribed to every contract: camelCase won)."""
    return [
        {
            "field": camel,
            "problem": f"is given twice, as {camel} and as {snake}: send one spelling of a field",
            "given": [camel, snake],
        }
        for camel, snake in FILTER_FIELDS.items()
        if camel != snake and camel in data and snake in data
    ]


def _unknown_fields(data: Mapping[str, Any], also: Collection[str]) -> list[dict[str, Any]]:
    """A problem for each field no filter message has: a misspelt `contractID` must not widen
    the subscription to everything (as an ignored field would)."""
    snake = [s for c, s in FILTER_FIELDS.items() if s != c]
    allowed = [*FILTER_FIELDS, *also, *snake]
    listed = f"{', '.join([*FILTER_FIELDS, *also])} (or the snake_case {', '.join(snake)})"
    return [
        {"field": str(name), "problem": f"is not a filter field; allowed: {listed}", "allowed": allowed}
        for name in data
        if name not in allowed
    ]


@dataclass(frozen=True, slots=True)
class MonitorFilter:
    """Seed 4.1.2: contract ids, statuses, include_stale, include_heartbeats (empty: everything)."""

    contract_ids: frozenset[uuid.UUID] = frozenset()
    statuses: frozenset[str] = frozenset()
    include_stale: bool = False
    include_heartbeats: bool = False

    @classmethod
    def parse(cls, data: Mapping[str, Any], also: Collection[str] = ()) -> MonitorFilter:
        """From a filter message, camelCase (`contractIds`) or the seed's snake_case.

        A field that is neither, nor one of `also` (what else the message may carry, such as
        the subscription's `after`, read by the caller), is refused like a bad value; so is a
        field given in both spellings.
        """
        problems = [*_unknown_fields(data, also), *_both_spellings(data)]
        for camel, snake in (("contractIds", "contract_ids"), ("statuses", "statuses")):
            both = camel != snake and camel in data and snake in data  # refused as such already
            if not both and _field(data, camel, snake) == []:
                # Absent means every contract; an empty list read as "all" subscribed a client
                # that meant "none of these yet" to everything.
                problems.append(
                    {"field": camel, "problem": "names nothing; give at least one, or leave it out for all"}
                )
        raw_ids = _field(data, "contractIds", "contract_ids") or []
        ids: set[uuid.UUID] = set()
        if not isinstance(raw_ids, list):
            problems.append({"field": "contractIds", "problem": "must be a list of contract ids"})
            raw_ids = []
        for raw in raw_ids:
            # The heartbeat's rule: `uuid.UUID` also read braces, urn:uuid: and full-width digits.
            problem = uuid_problem(raw)
            if problem is None:
                ids.add(uuid.UUID(raw))
            else:
                problems.append({"field": "contractIds", "problem": problem, "given": raw})
        raw_statuses = _field(data, "statuses", "statuses") or []
        allowed = [s.value for s in Status]
        if not isinstance(raw_statuses, list):
            problems.append({"field": "statuses", "problem": "must be a list of statuses"})
            raw_statuses = []
        for raw in raw_statuses:
            if raw not in allowed:
                problems.append(
                    {
                        "field": "statuses",
                        "problem": f"'{raw}' is not a status; allowed: {', '.join(allowed)}",
                        "given": raw,
                    }
                )
        flags = {}
        for camel, snake in (("includeStale", "include_stale"), ("includeHeartbeats", "include_heartbeats")):
            value = _field(data, camel, snake)
            if value is not None and not isinstance(value, bool):
                problems.append({"field": camel, "problem": "must be true or false", "given": value})
            flags[snake] = bool(value)
        if len(ids) > 1000:
            problems.append({"field": "contractIds", "problem": "at most 1000 contract ids"})
        if problems:
            raise FilterError(problems)
        return cls(
            frozenset(ids), frozenset(raw_statuses), flags["include_stale"], flags["include_heartbeats"]
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "contractIds": sorted(str(c) for c in self.contract_ids),
            "statuses": sorted(self.statuses),
            "includeStale": self.include_stale,
            "includeHeartbeats": self.include_heartbeats,
        }

    def matches(self, type_: str, contract_id: uuid.UUID, status: str | None) -> bool:
        if type_ in STALE_TYPES and not self.include_stale:
            return False
        if type_ == HEARTBEAT and not self.include_heartbeats:
            return False
        if self.contract_ids and contract_id not in self.contract_ids:
            return False
        return not self.statuses or status in self.statuses


__all__ = ["FILTER_FIELDS", "HEARTBEAT", "STALE_TYPES", "FilterError", "MonitorFilter"]
