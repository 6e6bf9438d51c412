"""Contract types, phases, deliverables and gates (seed 2.2.1, 6.2; DESIGN "Domain rules").

- `simple` = plan → execute; `specification` = research → specify → plan → execute → review.
- The last phase is terminal.
- Only a deliverable the phase defines may be marked complete (INVALID_DELIVERABLE lists the
  valid ids); an unknown phase or contract type is VALIDATION_FAILED naming the valid ones.
- A contract's own phase_config wins over its type's, and round-trips through JSON unchanged.
"""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.completion import Readiness, check_phase_readiness, gate_facts, registered_validators
from app.domain.errors import InvalidDeliverable, ValidationFailed
from app.domain.phases import (
    CONTRACT_TYPES,
    Deliverable,
    Phase,
    PhaseConfig,
    PhaseGate,
    TaskRequirement,
    contract_type_names,
    parse_phase_config,
    resolve_phase_config,
    validate_deliverable,
)

SEED_PHASES = {
    "simple": ["plan", "execute"],
    "specification": ["research", "specify", "plan", "execute", "review"],
}

PHASES_OF_TYPES = [(t, p) for t, phases in SEED_PHASES.items() for p in phases]
DELIVERABLES_OF_TYPES = [
    (t, phase.id, d.id)
    for t, config in CONTRACT_TYPES.items()
    for phase in config.phases
    for d in phase.deliverables
]


# --- the shipped contract types -----------------------------------------------------------


def test_the_two_seed_contract_types_ship() -> None:
    assert set(SEED_PHASES) <= set(CONTRACT_TYPES)
    assert contract_type_names() == sorted(CONTRACT_TYPES)


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_each_type_has_its_phases_in_order(contract_type: str) -> None:
    config = CONTRACT_TYPES[contract_type]
    assert config.phase_ids() == SEED_PHASES[contract_type]
    assert config.initial_phase == SEED_PHASES[contract_type][0]


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_the_terminal_phase_is_the_last_one(contract_type: str) -> None:
    config = CONTRACT_TYPES[contract_type]
    phases = SEED_PHASES[contract_type]
    assert config.terminal_phase == phases[-1]
    assert config.next_phase(phases[-1]) is None


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_each_phase_leads_to_the_following_one(contract_type: str) -> None:
    config = CONTRACT_TYPES[contract_type]
    phases = SEED_PHASES[contract_type]
    for current, following in itertools.pairwise(phases):
        assert config.next_phase(current) == following


@pytest.mark.parametrize(("contract_type", "phase_id"), PHASES_OF_TYPES)
def test_each_shipped_phase_has_named_deliverables_and_a_gate_over_them(
    contract_type: str, phase_id: str
) -> None:
    phase = CONTRACT_TYPES[contract_type].get(phase_id)
    assert phase.deliverables, "every phase names at least one deliverable"
    assert phase.gate is not None
    assert set(phase.gate.required_deliverables) <= set(phase.deliverable_ids())
    # The gate requires exactly the deliverables marked required.
    assert list(phase.gate.required_deliverables) == [d.id for d in phase.deliverables if d.required]


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_plan_phase_asks_for_a_plan_document(contract_type: str) -> None:
    plan = CONTRACT_TYPES[contract_type].get("plan")
    assert "plan-document" in plan.deliverable_ids()
    assert "plan-document" in plan.gate.required_deliverables  # type: ignore[union-attr]


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_execute_phase_waits_for_all_spawned_tasks(contract_type: str) -> None:
    execute = CONTRACT_TYPES[contract_type].get("execute")
    assert execute.gate is not None
    assert execute.gate.required_tasks == TaskRequirement.all_complete()


# --- deliverable validation (seed 6.2) ------------------------------------------------------


@pytest.mark.parametrize(("contract_type", "phase_id", "deliverable_id"), DELIVERABLES_OF_TYPES)
def test_each_defined_deliverable_is_accepted(contract_type: str, phase_id: str, deliverable_id: str) -> None:
    config = resolve_phase_config(contract_type, None)
    deliverable = validate_deliverable(config, phase_id, deliverable_id)
    assert deliverable.id == deliverable_id


def test_every_phase_of_both_types_has_deliverables_under_test() -> None:
    covered = {(t, p) for t, p, _ in DELIVERABLES_OF_TYPES}
    assert covered >= set(PHASES_OF_TYPES)


@pytest.mark.parametrize(("contract_type", "phase_id"), PHASES_OF_TYPES)
def test_an_unknown_deliverable_is_invalid_and_lists_the_phases_ids(
    contract_type: str, phase_id: str
) -> None:
    config = resolve_phase_config(contract_type, None)
    valid_ids = config.get(phase_id).deliverable_ids()
    with pytest.raises(InvalidDeliverable) as caught:
        validate_deliverable(config, phase_id, "made-up-deliverable")
    err = caught.value
    assert err.code == "INVALID_DELIVERABLE"
    assert err.details == {"deliverableId": "made-up-deliverable", "phase": phase_id, "validIds": valid_ids}
    assert "'made-up-deliverable'" in err.message
    assert f"'{phase_id}'" in err.message
    for valid in valid_ids:
        assert valid in err.message


def test_a_deliverable_of_another_phase_is_invalid_here() -> None:
    config = CONTRACT_TYPES["simple"]
    with pytest.raises(InvalidDeliverable) as caught:
        validate_deliverable(config, "execute", "plan-document")
    assert caught.value.details["validIds"] == config.get("execute").deliverable_ids()


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_an_unknown_phase_is_a_validation_failure_naming_the_valid_phases(contract_type: str) -> None:
    config = CONTRACT_TYPES[contract_type]
    with pytest.raises(ValidationFailed) as caught:
        validate_deliverable(config, "deploy", "plan-document")
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.details["phase"] == "deploy"
    assert err.details["validPhases"] == SEED_PHASES[contract_type]
    assert "'deploy'" in err.message
    for phase in SEED_PHASES[contract_type]:
        assert phase in err.message


def test_an_unknown_contract_type_is_a_validation_failure_naming_the_known_types() -> None:
    with pytest.raises(ValidationFailed) as caught:
        resolve_phase_config("waterfall", None)
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.details["contractType"] == "waterfall"
    assert err.details["validTypes"] == contract_type_names()
    assert "'waterfall'" in err.message
    for known in ("simple", "specification"):
        assert known in err.message


@pytest.mark.parametrize("contract_type", list(SEED_PHASES))
def test_a_known_type_resolves_to_its_shipped_config(contract_type: str) -> None:
    assert resolve_phase_config(contract_type, None) is CONTRACT_TYPES[contract_type]


OWN_CONFIG = PhaseConfig(
    (
        Phase("draft", "Draft", (Deliverable("outline", "Outline"),), PhaseGate(("outline",))),
        Phase("publish", "Publish", (Deliverable("post", "Post"),), PhaseGate(("post",))),
    )
)


@pytest.mark.parametrize("contract_type", [*SEED_PHASES, "a-type-we-never-shipped"])
def test_a_contracts_own_phase_config_overrides_its_type(contract_type: str) -> None:
    config = resolve_phase_config(contract_type, OWN_CONFIG)
    assert config is OWN_CONFIG
    assert config.phase_ids() == ["draft", "publish"]
    assert validate_deliverable(config, "draft", "outline").name == "Outline"
    with pytest.raises(ValidationFailed):
        validate_deliverable(config, "plan", "plan-document")  # the type's phase is not ours
    with pytest.raises(InvalidDeliverable) as caught:
        validate_deliverable(config, "publish", "plan-document")
    assert caught.value.details["validIds"] == ["post"]


# --- parsing a contract's own phase_config --------------------------------------------------


def good_config() -> dict[str, Any]:
    return {
        "phases": [
            {
                "id": "design",
                "name": "Design",
                "deliverables": [
                    {"id": "design-doc", "name": "Design document"},
                    {"id": "sketches", "name": "Sketches", "required": False},
                ],
                "gate": {
                    "requiredDeliverables": ["design-doc"],
                    "requiredTasks": {"kind": "min_complete", "count": 2},
                    "validators": ["no_failed_tasks"],
                    "autoAdvance": False,
                },
            },
            {
                "id": "build",
                "deliverables": [{"id": "binary"}],
                "gate": {"requiredTasks": {"kind": "named_tasks", "names": ["compile", "test"]}},
            },
            {"id": "ship", "deliverables": [{"id": "release"}], "gate": None},
        ]
    }


def test_a_good_phase_config_is_parsed() -> None:
    config = parse_phase_config(good_config(), registered_validators())
    assert config == PhaseConfig(
        (
            Phase(
                "design",
                "Design",
                (Deliverable("design-doc", "Design document"), Deliverable("sketches", "Sketches", False)),
                PhaseGate(("design-doc",), TaskRequirement.min_complete(2), ("no_failed_tasks",), False),
            ),
            Phase(
                "build",
                "build",  # name defaults to the id
                (Deliverable("binary", "binary"),),  # so does a deliverable's; required by default
                PhaseGate(("binary",), TaskRequirement.named_tasks("compile", "test")),
            ),
            Phase("ship", "ship", (Deliverable("release", "release"),), None),
        )
    )
    assert config.terminal_phase == "ship"


def test_a_phase_without_a_gate_key_gets_the_default_gate() -> None:
    raw = {"phases": [{"id": "only", "deliverables": [{"id": "a"}, {"id": "b", "required": False}]}]}
    gate = parse_phase_config(raw).phases[0].gate
    assert gate == PhaseGate(required_deliverables=("a",), required_tasks=TaskRequirement.none())
    assert gate.auto_advance is True


def test_a_phase_with_gate_null_has_no_gate() -> None:
    config = parse_phase_config({"phases": [{"id": "only", "deliverables": [{"id": "a"}], "gate": None}]})
    assert config.phases[0].gate is None
    readiness = check_phase_readiness(config, gate_facts("only", set()))
    assert readiness.readiness is Readiness.NO_GATE


def test_parsing_does_not_change_its_input() -> None:
    raw = good_config()
    before = copy.deepcopy(raw)
    parse_phase_config(raw, registered_validators())
    assert raw == before


def _with(path: list[Any], value: Any, *, delete: bool = False) -> dict[str, Any]:
    """good_config() with the item at `path` replaced (or deleted)."""
    raw = good_config()
    node: Any = raw
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


BAD_COUNTS: list[tuple[str, dict[str, Any]]] = [
    ("missing", {}),
    ("zero", {"count": 0}),
    ("negative", {"count": -3}),
    ("text", {"count": "2"}),
    ("fraction", {"count": 1.5}),
    ("boolean", {"count": True}),
]
BAD_NAMES: list[tuple[str, dict[str, Any]]] = [
    ("missing", {}),
    ("empty", {"names": []}),
    ("text", {"names": "compile"}),
    ("blank-name", {"names": ["compile", ""]}),
    ("number-name", {"names": ["compile", 3]}),
]

BAD_CONFIGS: list[tuple[str, Any, str, str]] = [
    # (case id, raw, field path in details, a fragment of the message)
    ("not-an-object", ["design"], "phaseConfig", "'phases' list"),
    ("missing-phases", {}, "phaseConfig", "'phases' list"),
    ("phases-not-a-list", {"phases": {"id": "x"}}, "phaseConfig", "'phases' list"),
    ("empty-phases", {"phases": []}, "phaseConfig.phases", "at least one phase"),
    ("phase-not-an-object", {"phases": ["design"]}, "phaseConfig.phases[0]", "must be an object"),
    (
        "phase-without-id",
        _with(["phases", 1, "id"], None, delete=True),
        "phaseConfig.phases[1].id",
        "non-empty",
    ),
    ("phase-with-empty-id", _with(["phases", 0, "id"], ""), "phaseConfig.phases[0].id", "non-empty"),
    ("phase-id-not-text", _with(["phases", 0, "id"], 7), "phaseConfig.phases[0].id", "non-empty"),
    ("duplicate-phase-id", _with(["phases", 2, "id"], "design"), "phaseConfig.phases[2].id", "'design'"),
    (
        "deliverable-not-an-object",
        _with(["phases", 0, "deliverables", 1], "sketches"),
        "phaseConfig.phases[0].deliverables[1]",
        "non-empty 'id'",
    ),
    (
        "deliverable-without-id",
        _with(["phases", 1, "deliverables", 0], {"name": "Binary"}),
        "phaseConfig.phases[1].deliverables[0]",
        "non-empty 'id'",
    ),
    (
        "deliverable-with-empty-id",
        _with(["phases", 0, "deliverables", 0, "id"], ""),
        "phaseConfig.phases[0].deliverables[0]",
        "non-empty 'id'",
    ),
    (
        "gate-not-an-object",
        _with(["phases", 0, "gate"], "auto"),
        "phaseConfig.phases[0].gate",
        "object or null",
    ),
    (
        "required-deliverables-not-a-list",
        _with(["phases", 0, "gate", "requiredDeliverables"], "design-doc"),
        "phaseConfig.phases[0].gate.requiredDeliverables",
        "list of ids",
    ),
    (
        "required-deliverable-undefined",
        _with(["phases", 0, "gate", "requiredDeliverables"], ["design-doc", "mockups"]),
        "phaseConfig.phases[0].gate.requiredDeliverables",
        "mockups",
    ),
    (
        "required-tasks-not-an-object",
        _with(["phases", 0, "gate", "requiredTasks"], "all_complete"),
        "phaseConfig.phases[0].gate.requiredTasks",
        "must be an object",
    ),
    (
        "required-tasks-unknown-kind",
        _with(["phases", 0, "gate", "requiredTasks"], {"kind": "most_complete"}),
        "phaseConfig.phases[0].gate.requiredTasks.kind",
        "all_complete",
    ),
    (
        "required-tasks-missing-kind",
        _with(["phases", 0, "gate", "requiredTasks"], {"count": 2}),
        "phaseConfig.phases[0].gate.requiredTasks.kind",
        "min_complete",
    ),
    *[
        (
            f"min-complete-count-{label}",
            _with(["phases", 0, "gate", "requiredTasks"], {"kind": "min_complete", **count}),
            "phaseConfig.phases[0].gate.requiredTasks.count",
            "at least 1",
        )
        for label, count in BAD_COUNTS
    ],
    *[
        (
            f"named-tasks-names-{label}",
            _with(["phases", 1, "gate", "requiredTasks"], {"kind": "named_tasks", **names}),
            "phaseConfig.phases[1].gate.requiredTasks.names",
            "non-empty list of task names",
        )
        for label, names in BAD_NAMES
    ],
    (
        "validators-not-a-list",
        _with(["phases", 0, "gate", "validators"], "no_failed_tasks"),
        "phaseConfig.phases[0].gate.validators",
        "list of validator names",
    ),
    (
        "unregistered-validator",
        _with(["phases", 0, "gate", "validators"], ["no_failed_tasks", "has_changelog"]),
        "phaseConfig.phases[0].gate.validators",
        "has_changelog",
    ),
    *[
        (
            f"auto-advance-{label}",
            _with(["phases", 0, "gate", "autoAdvance"], value),
            "phaseConfig.phases[0].gate.autoAdvance",
            "true or false",
        )
        for label, value in [("text", "yes"), ("number", 1), ("null", None)]
    ],
]


@pytest.mark.parametrize(
    ("raw", "field", "fragment"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS]
)
def test_a_bad_phase_config_is_rejected_naming_the_field(raw: Any, field: str, fragment: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    err = caught.value
    assert err.code == "VALIDATION_FAILED"
    assert err.details["field"] == field
    assert err.message.startswith("phaseConfig is not valid: ")
    assert field.removeprefix("phaseConfig").lstrip(".") in err.message
    assert fragment in err.message


def test_an_undefined_required_deliverable_is_named_with_the_ones_defined() -> None:
    raw = _with(["phases", 0, "gate", "requiredDeliverables"], ["mockups"])
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    assert "mockups" in caught.value.message
    assert "design-doc" in caught.value.message
    assert "sketches" in caught.value.message


def test_an_unregistered_validator_is_named_with_the_registered_ones() -> None:
    raw = _with(["phases", 0, "gate", "validators"], ["has_changelog"])
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, ["no_failed_tasks"])
    assert "has_changelog" in caught.value.message
    assert "registered: no_failed_tasks" in caught.value.message


def test_validators_are_only_accepted_when_the_caller_says_they_are_registered() -> None:
    # Without the list of registered names every validator is unknown.
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(good_config())
    assert caught.value.details["field"] == "phaseConfig.phases[0].gate.validators"
    assert "registered: none" in caught.value.message


@pytest.mark.parametrize("value", [5, True], ids=["number", "boolean"])
def test_deliverables_that_are_not_a_list_are_rejected(value: Any) -> None:
    raw = _with(["phases", 0, "deliverables"], value)
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    assert caught.value.details["field"] == "phaseConfig.phases[0].deliverables"


@pytest.mark.parametrize("value", [False, [], 0, ""], ids=["false", "empty-list", "zero", "empty-text"])
def test_a_falsy_gate_that_is_not_null_is_rejected(value: Any) -> None:
    raw = _with(["phases", 0, "gate"], value)
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    assert caught.value.details["field"] == "phaseConfig.phases[0].gate"


def test_a_repeated_deliverable_id_is_rejected() -> None:
    raw = _with(["phases", 0, "deliverables", 1, "id"], "design-doc")
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    assert caught.value.details["field"] == "phaseConfig.phases[0].deliverables[1].id"


@pytest.mark.parametrize("value", ["false", "no", 0, None])
def test_a_deliverables_required_flag_must_be_true_or_false(value: Any) -> None:
    raw = _with(["phases", 0, "deliverables", 1, "required"], value)
    with pytest.raises(ValidationFailed) as caught:
        parse_phase_config(raw, registered_validators())
    assert caught.value.details["field"] == "phaseConfig.phases[0].deliverables[1].required"


# --- JSON round trip ------------------------------------------------------------------------


def _round_trip(config: PhaseConfig) -> PhaseConfig:
    wire = json.loads(json.dumps(config.to_json()))
    return parse_phase_config(wire, registered_validators())


@pytest.mark.parametrize("contract_type", list(CONTRACT_TYPES))
def test_shipped_configs_round_trip_through_json(contract_type: str) -> None:
    config = CONTRACT_TYPES[contract_type]
    assert _round_trip(config) == config


def test_the_good_config_round_trips_through_json() -> None:
    config = parse_phase_config(good_config(), registered_validators())
    assert _round_trip(config) == config


def test_to_json_uses_the_seeds_camel_case_field_names() -> None:
    gate = PhaseGate(("a",), TaskRequirement.min_complete(3), ("no_failed_tasks",), False).to_json()
    assert gate == {
        "requiredDeliverables": ["a"],
        "requiredTasks": {"kind": "min_complete", "count": 3},
        "validators": ["no_failed_tasks"],
        "autoAdvance": False,
    }
    assert TaskRequirement.none().to_json() == {"kind": "none"}
    assert TaskRequirement.all_complete().to_json() == {"kind": "all_complete"}
    assert TaskRequirement.named_tasks("a", "b").to_json() == {"kind": "named_tasks", "names": ["a", "b"]}


_ids = st.from_regex(r"[a-z][a-z0-9-]{0,11}", fullmatch=True)
# Names are non-empty: an empty name is read back as "use the id" (see the parser's docstring).
# NUL is refused by the parser (PostgreSQL's JSONB cannot store it), and so is a lone
# surrogate (category Cs: half of a character, which UTF-8 cannot encode).
_names = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), min_size=1, max_size=16)
_requirements = st.one_of(
    st.just(TaskRequirement.none()),
    st.just(TaskRequirement.all_complete()),
    st.integers(min_value=1, max_value=10_000).map(TaskRequirement.min_complete),
    st.lists(_names, min_size=1, max_size=4).map(lambda names: TaskRequirement.named_tasks(*names)),
)


@st.composite
def _gates(draw: st.DrawFn, deliverable_ids: list[str]) -> PhaseGate:
    required = draw(st.lists(st.sampled_from(deliverable_ids), unique=True)) if deliverable_ids else []
    validators = draw(st.lists(st.sampled_from(registered_validators()), unique=True))
    return PhaseGate(tuple(required), draw(_requirements), tuple(validators), draw(st.booleans()))


@st.composite
def _phase_configs(draw: st.DrawFn) -> PhaseConfig:
    phases = []
    for phase_id in draw(st.lists(_ids, min_size=1, max_size=5, unique=True)):
        deliverable_ids = draw(st.lists(_ids, max_size=4, unique=True))
        deliverables = tuple(Deliverable(d, draw(_names), draw(st.booleans())) for d in deliverable_ids)
        gate = draw(st.none() | _gates(deliverable_ids))
        phases.append(Phase(phase_id, draw(_names), deliverables, gate))
    return PhaseConfig(tuple(phases))


@settings(max_examples=200, database=None, deadline=None)
@given(_phase_configs())
def test_any_phase_config_round_trips_through_json(config: PhaseConfig) -> None:
    assert _round_trip(config) == config


def test_ids_longer_than_the_stored_columns_are_refused_with_their_limit() -> None:
    with pytest.raises(ValidationFailed, match="at most 100 characters"):
        parse_phase_config({"phases": [{"id": "p" * 101}]})
    with pytest.raises(ValidationFailed, match="at most 200 characters"):
        parse_phase_config({"phases": [{"id": "p", "deliverables": [{"id": "d" * 201}]}]})


def test_nul_characters_are_refused_anywhere_in_a_phase_config() -> None:
    with pytest.raises(ValidationFailed, match="NUL"):
        parse_phase_config({"phases": [{"id": "p", "name": "a\x00b"}]})


@pytest.mark.parametrize(
    ("config", "field", "unknown"),
    [
        ({"phases": [{"id": "p"}], "stages": []}, "phaseConfig", "stages"),
        ({"phases": [{"id": "p", "title": "P"}]}, "phaseConfig.phases[0]", "title"),
        (
            {"phases": [{"id": "p", "deliverables": [{"id": "d", "optional": True}]}]},
            "deliverables[0]",
            "optional",
        ),
        ({"phases": [{"id": "p", "gate": {"auto_advance": False}}]}, "phases[0].gate", "auto_advance"),
        (
            {"phases": [{"id": "p", "gate": {"requiredTasks": {"kind": "min_complete", "n": 2}}}]},
            "requiredTasks",
            "n",
        ),
    ],
    ids=["top", "phase", "deliverable", "gate", "requirement"],
)
def test_a_misspelt_field_is_refused_naming_it_and_the_allowed_ones(
    config: dict, field: str, unknown: str
) -> None:
    with pytest.raises(ValidationFailed) as err:
        parse_phase_config(config)
    assert f"unknown field {unknown}" in err.value.message
    assert "allowed:" in err.value.message
    assert field in err.value.details["field"] or field in err.value.message


# --- bounds: a phase_config is typed all the way down, bounded, and parsed in linear time ---


def _deliverables(count: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i}"} for i in range(count)]


@pytest.mark.parametrize("name", [{"a": "b"}, ["x"], 3, True, float("nan")])
def test_a_phase_name_that_is_not_a_string_is_refused(name: Any) -> None:
    with pytest.raises(ValidationFailed, match=r"phases\[0\]\.name"):
        parse_phase_config({"phases": [{"id": "p", "name": name}]})


def test_a_deliverable_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(ValidationFailed, match=r"deliverables\[0\]\.name"):
        parse_phase_config({"phases": [{"id": "p", "deliverables": [{"id": "d", "name": {"a": 1}}]}]})


def test_a_name_nested_a_thousand_levels_is_refused_without_recursing() -> None:
    name: Any = "x"
    for _ in range(1000):
        name = {"a": name}
    with pytest.raises(ValidationFailed, match="name"):
        parse_phase_config({"phases": [{"id": "p", "name": name}]})


def test_at_most_64_phases_are_accepted() -> None:
    parse_phase_config({"phases": [{"id": f"p{i}"} for i in range(64)]})
    with pytest.raises(ValidationFailed, match="at most 64 phases"):
        parse_phase_config({"phases": [{"id": f"p{i}"} for i in range(65)]})


def test_at_most_256_deliverables_per_phase_are_accepted() -> None:
    parse_phase_config({"phases": [{"id": "p", "deliverables": _deliverables(256)}]})
    with pytest.raises(ValidationFailed, match="at most 256 deliverables"):
        parse_phase_config({"phases": [{"id": "p", "deliverables": _deliverables(257)}]})


def test_names_longer_than_500_characters_are_refused_with_their_limit() -> None:
    with pytest.raises(ValidationFailed, match="at most 500 characters"):
        parse_phase_config({"phases": [{"id": "p", "name": "n" * 501}]})
    with pytest.raises(ValidationFailed, match="at most 500 characters"):
        parse_phase_config({"phases": [{"id": "p", "deliverables": [{"id": "d", "name": "n" * 501}]}]})


def test_lone_surrogates_are_refused_anywhere_in_a_phase_config() -> None:
    for raw in (
        {"phases": [{"id": "p\ud800"}]},
        {"phases": [{"id": "p", "name": "\udfff"}]},
        {"phases": [{"id": "p", "deliverables": [{"id": "d\ud83d"}]}]},
    ):
        with pytest.raises(ValidationFailed, match="surrogate"):
            parse_phase_config(raw)


def test_required_task_counts_and_lists_are_bounded() -> None:
    def gate(tasks: dict[str, Any]) -> dict[str, Any]:
        return {"phases": [{"id": "p", "gate": {"requiredTasks": tasks}}]}

    with pytest.raises(ValidationFailed, match="at most 2147483647"):
        parse_phase_config(gate({"kind": "min_complete", "count": 2**64}))
    with pytest.raises(ValidationFailed, match="at most 256"):
        parse_phase_config(gate({"kind": "named_tasks", "names": [f"t{i}" for i in range(257)]}))


class _CountingId(str):
    """A deliverable id that counts how often it is compared for equality."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        _CountingId.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_repeated_deliverable_ids_are_found_in_linear_time() -> None:
    """Duplicate detection compared each id with every earlier one: 20,000 ids took 7.6 s."""
    _CountingId.comparisons = 0
    deliverables = [{"id": _CountingId(f"d{i}")} for i in range(256)]
    parse_phase_config({"phases": [{"id": "p", "deliverables": deliverables}]})
    assert _CountingId.comparisons <= 4 * len(deliverables)


def test_an_unknown_field_list_names_only_the_first_few() -> None:
    raw = {"phases": [{"id": "p", **{f"k{i}": 1 for i in range(1000)}}]}
    with pytest.raises(ValidationFailed) as err:
        parse_phase_config(raw)
    assert len(err.value.message) < 500


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=20,
)
_slots = st.sampled_from(
    [
        "name",
        "deliverables",
        "gate",
        "d.name",
        "d.required",
        "g.requiredDeliverables",
        "g.requiredTasks",
        "g.validators",
        "g.autoAdvance",
        "t.names",
        "t.count",
    ]
)


def _placed(slot: str, value: Any) -> dict[str, Any]:
    phase: dict[str, Any] = {
        "id": "p",
        "deliverables": [{"id": "d"}],
        "gate": {"requiredTasks": {"kind": "named_tasks", "names": ["t"]}},
    }
    if slot.startswith("d."):
        phase["deliverables"][0][slot[2:]] = value
    elif slot.startswith("g."):
        phase["gate"][slot[2:]] = value
    elif slot.startswith("t."):
        phase["gate"]["requiredTasks"] = {
            "kind": "min_complete" if slot == "t.count" else "named_tasks",
            slot[2:]: value,
        }
    else:
        phase[slot] = value
    return {"phases": [phase]}


@settings(max_examples=300, database=None, deadline=None, derandomize=True)
@given(_slots, _any_json)
def test_an_accepted_phase_config_is_shallow_and_finite_so_its_answer_can_always_be_written(
    slot: str, value: Any
) -> None:
    """The raw config is echoed in every answer: whatever is accepted must serialise, always."""
    raw = _placed(slot, value)
    try:
        parse_phase_config(raw, registered_validators())
    except ValidationFailed:
        return
    assert _depth(raw) <= 7
    json.dumps(raw, allow_nan=False).encode("utf-8")
