"""The live monitor's filter message: what it accepts, and that nothing it does not know is ignored."""

from __future__ import annotations

import uuid

import pytest

from app.domain.uuids import UUID_FORM
from app.monitor_filter import FilterError, MonitorFilter

ONE = uuid.uuid4()


def test_camel_case_and_the_seeds_snake_case_mean_the_same_filter() -> None:
    camel = {
        "contractIds": [str(ONE)],
        "statuses": ["paused"],
        "includeStale": True,
        "includeHeartbeats": True,
    }
    snake = {
        "contract_ids": [str(ONE)],
        "statuses": ["paused"],
        "include_stale": True,
        "include_heartbeats": True,
    }
    assert (
        MonitorFilter.parse(camel)
        == MonitorFilter.parse(snake)
        == MonitorFilter(frozenset({ONE}), frozenset({"paused"}), True, True)
    )


def test_an_empty_message_is_everything() -> None:
    assert MonitorFilter.parse({}) == MonitorFilter()


@pytest.mark.parametrize("field", ["contractID", "contractIDs", "foo", "include_stales", "after", "type"])
def test_a_field_the_filter_does_not_know_is_refused_naming_it_and_the_allowed_ones(field: str) -> None:
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse({field: [str(ONE)]})
    [problem] = refused.value.problems
    assert problem["field"] == field
    assert problem["problem"] == (
        "is not a filter field; allowed: contractIds, statuses, includeStale, includeHeartbeats "
        "(or the snake_case contract_ids, include_stale, include_heartbeats)"
    )
    assert set(problem["allowed"]) == {
        "contractIds",
        "contract_ids",
        "statuses",
        "includeStale",
        "include_stale",
        "includeHeartbeats",
        "include_heartbeats",
    }


def test_the_caller_names_what_else_a_message_may_carry() -> None:
    assert MonitorFilter.parse({"after": 3}, also=("after",)) == MonitorFilter()
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse({"afterr": 3}, also=("after",))
    assert str(refused.value).startswith(
        "afterr: is not a filter field; allowed: contractIds, statuses, includeStale, "
        "includeHeartbeats, after "
    )


@pytest.mark.parametrize(
    "given",
    [
        "{" + str(ONE) + "}",
        "urn:uuid:" + str(ONE),
        "\uff10" * 32,
        f"{ONE.hex[:8]}-{ONE.hex[8:]}",
        ONE.hex[:4] + "_" + ONE.hex[5:],
    ],
    ids=["braces", "urn", "full-width digits", "hyphens missing", "an underscore"],
)
def test_a_contract_id_is_held_to_a_heartbeats_form_naming_the_field_and_the_form(given: str) -> None:
    """`uuid.UUID` read these, so a filter took spellings of a contract id its heartbeats could
    not use; refused in the heartbeat's words."""
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse({"contractIds": [str(ONE), given]})
    [problem] = refused.value.problems
    assert problem == {
        "field": "contractIds",
        "problem": f"'{given[:60]}' is not a UUID: {UUID_FORM}",
        "given": given,
    }


def test_a_contract_id_is_taken_in_either_case_with_or_without_hyphens() -> None:
    spellings = [str(ONE), str(ONE).upper(), ONE.hex, ONE.hex.upper()]
    assert MonitorFilter.parse({"contractIds": spellings}).contract_ids == frozenset({ONE})
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse({"contractIds": [7]})
    assert refused.value.problems[0]["problem"] == f"must be a UUID string: {UUID_FORM}"


def test_unknown_fields_and_bad_values_are_all_reported_together() -> None:
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse({"contractID": [], "statuses": ["nope"], "includeStale": "yes"})
    assert [p["field"] for p in refused.value.problems] == ["contractID", "statuses", "includeStale"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(None, None), (0, 0), ("0042", 42), (2**63 - 1, 2**63 - 1), (str(2**63 - 1), 2**63 - 1)],
)
def test_an_after_is_an_event_id_from_0_to_the_largest_bigint(raw: object, expected: int | None) -> None:
    from app.http.monitor import parse_after

    assert parse_after(raw) == expected


@pytest.mark.parametrize(
    "raw", [2**63, -1, str(2**63), "9" * 5000, "²", "١٢", "", " 1", 1.0, True, [1]], ids=repr
)
def test_an_after_past_the_largest_bigint_or_not_a_whole_number_is_refused_naming_the_field(
    raw: object,
) -> None:
    from app.http.monitor import parse_after

    with pytest.raises(FilterError) as refused:
        parse_after(raw, "Last-Event-ID")
    [problem] = refused.value.problems
    assert problem["field"] == "Last-Event-ID"
    assert problem["problem"] == "must be an event id: a whole number from 0 to 9223372036854775807"


@pytest.mark.parametrize(
    ("camel", "snake", "message"),
    [
        ("contractIds", "contract_ids", {"contract_ids": [str(ONE)], "contractIds": []}),
        ("contractIds", "contract_ids", {"contractIds": [str(ONE)], "contract_ids": [str(ONE)]}),
        ("includeStale", "include_stale", {"include_stale": False, "includeStale": True}),
        ("includeHeartbeats", "include_heartbeats", {"includeHeartbeats": True, "include_heartbeats": True}),
    ],
)
def test_a_field_given_in_both_spellings_is_refused_even_when_they_agree(
    camel: str, snake: str, message: dict[str, object]
) -> None:
    """camelCase won silently: `{"contract_ids": [X], "contractIds": []}` subscribed to every
    contract. Which spelling the client meant is a guess, so neither is obeyed."""
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse(message)
    [problem] = refused.value.problems
    assert (problem["field"], problem["given"]) == (camel, [camel, snake])
    assert problem["problem"] == f"is given twice, as {camel} and as {snake}: send one spelling of a field"


def test_each_field_given_twice_is_reported_with_the_other_problems() -> None:
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse(
            {"contractIds": [], "contract_ids": [], "include_stale": True, "includeStale": 1, "foo": 1}
        )
    assert [p["field"] for p in refused.value.problems] == [
        "foo",
        "contractIds",
        "includeStale",
        "includeStale",
    ]


@pytest.mark.parametrize("message", [{"contractIds": []}, {"contract_ids": []}, {"statuses": []}])
def test_an_empty_list_is_refused_rather_than_read_as_everything(message: dict[str, object]) -> None:
    """Absent means every contract; `[]` subscribed a client that meant "none of these yet" to
    all of them, where the event stream refuses `contractIds=` for the same reason."""
    with pytest.raises(FilterError) as refused:
        MonitorFilter.parse(message)
    [problem] = refused.value.problems
    assert problem["field"] in ("contractIds", "statuses")
    assert problem["problem"] == "names nothing; give at least one, or leave it out for all"
