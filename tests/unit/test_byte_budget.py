"""Taking items while a list's JSON stays within a byte budget (`app.byte_budget`): the bound,
the comma each item counts, the reserve, the first item always taken, the count bound, and the
rows closed however the taking ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.byte_budget import Taken, json_size, take_within_budget
from app.schemas import Schema


def sized(n: int) -> int:
    """A row that is its own view, measuring `n` bytes."""
    return n


def take(sizes: list[int], budget: int, reserve: int = 0, limit: int | None = None) -> Taken[int]:
    return take_within_budget(iter(sizes), sized, sized, budget, reserve, limit)


def test_all_items_are_taken_when_they_fit() -> None:
    assert take([3, 3, 3], budget=12) == Taken([3, 3, 3], truncated=False, more=False)


def test_each_item_counts_its_comma() -> None:
    # 3 + 1, 3 + 1, 3 + 1 = 12: exactly the budget
    assert take([3, 3, 3], budget=12).items == [3, 3, 3]
    # one byte less and the third item would pass it
    assert take([3, 3, 3], budget=11) == Taken([3, 3], truncated=True, more=False)


def test_the_reserve_is_kept_out_of_the_budget() -> None:
    assert take([3, 3, 3], budget=12, reserve=2) == Taken([3, 3], truncated=True, more=False)


def test_it_stops_before_the_item_that_would_pass_even_if_a_later_one_fits() -> None:
    assert take([3, 10, 1], budget=8) == Taken([3], truncated=True, more=False)


def test_the_first_item_is_always_taken_however_large() -> None:
    assert take([100, 1], budget=10) == Taken([100], truncated=True, more=False)
    assert take([100], budget=10) == Taken([100], truncated=False, more=False)


def test_no_rows_take_nothing() -> None:
    assert take([], budget=10) == Taken([], truncated=False, more=False)


def test_the_count_bound_sets_more_not_truncated() -> None:
    assert take([1, 1, 1], budget=100, limit=2) == Taken([1, 1], truncated=False, more=True)
    assert take([1, 1], budget=100, limit=2) == Taken([1, 1], truncated=False, more=False)


def test_the_row_past_the_count_bound_is_read_but_never_viewed() -> None:
    viewed: list[int] = []

    def view(row: int) -> int:
        viewed.append(row)
        return row

    taken = take_within_budget(iter([1, 2, 3]), view, sized, 100, 0, limit=2)
    assert taken.items == [1, 2] and taken.more
    assert viewed == [1, 2]


def test_the_count_bound_is_checked_before_the_byte_bound() -> None:
    # the third row would pass the budget, but the page is already full by count
    assert take([4, 4, 100], budget=10, limit=2) == Taken([4, 4], truncated=False, more=True)


class Rows:
    """Rows that can be closed, like a streamed result."""

    def __init__(self, sizes: list[int]) -> None:
        self._sizes = iter(sizes)
        self.closed = False

    def __iter__(self) -> Iterator[int]:
        return self._sizes

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("sizes", "budget", "limit"),
    [([1, 1], 100, None), ([5, 5], 8, None), ([1, 1, 1], 100, 2)],
    ids=["all taken", "byte bound", "count bound"],
)
def test_the_rows_are_closed_however_the_taking_ends(
    sizes: list[int], budget: int, limit: int | None
) -> None:
    rows = Rows(sizes)
    take_within_budget(rows, sized, sized, budget, 0, limit)
    assert rows.closed


def test_the_rows_are_closed_when_a_view_fails() -> None:
    rows = Rows([1, 2])

    def view(row: int) -> int:
        raise ValueError(row)

    with pytest.raises(ValueError):
        take_within_budget(rows, view, sized, 100, 0)
    assert rows.closed


class Item(Schema):
    question_text: str


def test_json_size_is_the_utf8_bytes_of_the_camel_case_json() -> None:
    # {"questionText":"é"}: 20 characters, the é two bytes in UTF-8
    assert json_size(Item(question_text="é")) == 21
