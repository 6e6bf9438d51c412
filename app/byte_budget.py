"""Taking items for a list in an answer until its JSON would pass a byte budget.

Why: answers that carry whole rows (a page of questions, the open questions and the answers a
restoration carries, a daemon's command feed) are bounded by size as well as by count, so a
few rows of the largest allowed size cannot make an answer of tens of MB. Each of them reads
its rows streamed (or in small reads), builds a view of each, measures the view's JSON, and
stops before the item that would pass the bound; the first item is always taken, so a list is
never empty while a row is due, and `truncated` tells the reader to read on. This module is
that loop, once; what differs per answer (how a view is built, how it is measured, how much
of the budget the answer's own JSON around the list keeps) is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

Row = TypeVar("Row")
View = TypeVar("View")


@dataclass(frozen=True, slots=True)
class Taken(Generic[View]):
    """The views taken, in the rows' order, and why the taking stopped early, if it did."""

    items: list[View]
    truncated: bool
    """The byte budget stopped it: the next row's view would have passed the bound."""
    more: bool
    """The count bound stopped it: a row past `limit` was there (never with `truncated`)."""


def take_within_budget(
    rows: Iterable[Row],
    view: Callable[[Row], View],
    size: Callable[[View], int],
    budget: int,
    reserve: int,
    limit: int | None = None,
) -> Taken[View]:
    """The views of `rows`, taken in order while their JSON as a list stays within `budget`
    bytes less the `reserve` kept for the answer's JSON around it (each item counts its
    `size` and a comma); it stops before the item that would pass the bound, and the first is
    always taken. With `limit`, at most that many are taken, and a row past them (read, never
    viewed) sets `more`. `rows` is closed afterwards when it can be (a streamed result, a
    generator of reads), so a list the bound ends holds no cursor open."""
    items: list[View] = []
    used, room = 0, budget - reserve
    truncated = more = False
    try:
        for row in rows:
            if limit is not None and len(items) == limit:
                more = True
                break
            item = view(row)
            item_size = size(item) + 1  # and its comma
            if items and used + item_size > room:
                truncated = True
                break
            used += item_size
            items.append(item)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()
    return Taken(items, truncated, more)


def json_size(view: BaseModel) -> int:
    """The bytes of a view's JSON as an answer carries it (UTF-8, by alias: camelCase)."""
    return len(view.__pydantic_serializer__.to_json(view, by_alias=True))


__all__ = ["Taken", "json_size", "take_within_budget"]
