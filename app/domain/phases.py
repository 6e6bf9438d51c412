"""Contract types, their phases, deliverables and completion gates.

A contract follows the phases of its type unless it carries its own `phase_config`; either
way the phases are an ordered list whose last entry is terminal. Gates are plain data
(custom validators are referred to by registered name) so a contract's own configuration
round-trips through JSON unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

from app.domain.errors import InvalidDeliverable, ValidationFailed

TaskRequirementKind = Literal["none", "all_complete", "min_complete", "named_tasks"]


@dataclass(frozen=True, slots=True)
class TaskRequirement:
    """What the phase's spawned tasks must have done (seed 2.2.1)."""

    kind: TaskRequirementKind = "none"
    count: int = 0
    names: tuple[str, ...] = ()

    @classmethod
    def none(cls) -> TaskRequirement:
        return cls("none")

    @classmethod
    def all_complete(cls) -> TaskRequirement:
        return cls("all_complete")

    @classmethod
    def min_complete(cls, count: int) -> TaskRequirement:
        return cls("min_complete", count=count)

    @classmethod
    def named_tasks(cls, *names: str) -> TaskRequirement:
        return cls("named_tasks", names=tuple(names))

    def to_json(self) -> dict[str, Any]:
        if self.kind == "min_complete":
            return {"kind": self.kind, "count": self.count}
        if self.kind == "named_tasks":
            return {"kind": self.kind, "names": list(self.names)}
        return {"kind": self.kind}


@dataclass(frozen=True, slots=True)
class Deliverable:
    id: str
    name: str
    required: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "required": self.required}


@dataclass(frozen=True, slots=True)
class PhaseGate:
    """What must hold before a phase may be left, and whether to leave it unasked."""

    required_deliverables: tuple[str, ...] = ()
    required_tasks: TaskRequirement = field(default_factory=TaskRequirement.none)
    validators: tuple[str, ...] = ()
    auto_advance: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "requiredDeliverables": list(self.required_deliverables),
            "requiredTasks": self.required_tasks.to_json(),
            "validators": list(self.validators),
            "autoAdvance": self.auto_advance,
        }


@dataclass(frozen=True, slots=True)
class Phase:
    id: str
    name: str
    deliverables: tuple[Deliverable, ...] = ()
    gate: PhaseGate | None = None

    def deliverable_ids(self) -> list[str]:
        return [d.id for d in self.deliverables]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "deliverables": [d.to_json() for d in self.deliverables],
            "gate": self.gate.to_json() if self.gate else None,
        }


@dataclass(frozen=True, slots=True)
class PhaseConfig:
    """An ordered list of phases; the last one is terminal."""

    phases: tuple[Phase, ...]

    def phase_ids(self) -> list[str]:
        return [p.id for p in self.phases]

    @property
    def initial_phase(self) -> str:
        return self.phases[0].id

    @property
    def terminal_phase(self) -> str:
        return self.phases[-1].id

    def get(self, phase_id: str) -> Phase:
        for phase in self.phases:
            if phase.id == phase_id:
                return phase
        raise ValidationFailed(
            f"'{phase_id}' is not a phase of this contract. Its phases are: {', '.join(self.phase_ids())}.",
            details={"phase": phase_id, "validPhases": self.phase_ids()},
        )

    def next_phase(self, phase_id: str) -> str | None:
        ids = self.phase_ids()
        index = ids.index(self.get(phase_id).id)
        return ids[index + 1] if index + 1 < len(ids) else None

    def to_json(self) -> dict[str, Any]:
        return {"phases": [p.to_json() for p in self.phases]}


def _phase(
    phase_id: str,
    name: str,
    deliverables: Sequence[Deliverable],
    tasks: TaskRequirement | None = None,
) -> Phase:
    required = tuple(d.id for d in deliverables if d.required)
    return Phase(
        phase_id,
        name,
        tuple(deliverables),
        PhaseGate(required_deliverables=required, required_tasks=tasks or TaskRequirement.none()),
    )


# Both types plan the same way: one plan phase, shared so they cannot drift apart.
_PLAN: Final = _phase(
    "plan",
    "Plan",
    [
        Deliverable("plan-document", "Plan document"),
        Deliverable("task-breakdown", "Task breakdown", required=False),
    ],
)

CONTRACT_TYPES: Final[Mapping[str, PhaseConfig]] = MappingProxyType(
    {
        "simple": PhaseConfig(
            (
                _PLAN,
                _phase(
                    "execute",
                    "Execute",
                    [
                        Deliverable("pull-request", "Pull request"),
                        Deliverable("execution-notes", "Execution notes", required=False),
                    ],
                    TaskRequirement.all_complete(),
                ),
            )
        ),
        "specification": PhaseConfig(
            (
                _phase(
                    "research",
                    "Research",
                    [
                        Deliverable("research-notes", "Research notes"),
                        Deliverable("references", "References", required=False),
                    ],
                ),
                _phase(
                    "specify",
                    "Specify",
                    [Deliverable("requirements-document", "Requirements document")],
                ),
                _PLAN,
                _phase(
                    "execute",
                    "Execute",
                    [Deliverable("pull-request", "Pull request")],
                    TaskRequirement.all_complete(),
                ),
                _phase(
                    "review",
                    "Review",
                    [
                        Deliverable("review-report", "Review report"),
                        Deliverable("release-notes", "Release notes", required=False),
                    ],
                ),
            )
        ),
    }
)


def contract_type_names() -> list[str]:
    return sorted(CONTRACT_TYPES)


def resolve_phase_config(contract_type: str, own_config: PhaseConfig | None) -> PhaseConfig:
    """A contract's own phases win over its type's; an unknown type is named with the known."""
    if own_config is not None:
        return own_config
    try:
        return CONTRACT_TYPES[contract_type]
    except KeyError:
        raise ValidationFailed(
            f"'{contract_type}' is not a contract type. Known types: "
            f"{', '.join(contract_type_names())}; or give the contract its own phaseConfig.",
            details={"contractType": contract_type, "validTypes": contract_type_names()},
        ) from None


def validate_deliverable(config: PhaseConfig, phase_id: str, deliverable_id: str) -> Deliverable:
    """Seed 6.2: only a deliverable the phase defines may be marked complete."""
    phase = config.get(phase_id)
    for deliverable in phase.deliverables:
        if deliverable.id == deliverable_id:
            return deliverable
    raise InvalidDeliverable(deliverable_id, phase_id, phase.deliverable_ids())


# --- parsing a contract's own phase_config (JSON as sent over HTTP and stored) -----------
#
# The stored config is echoed back verbatim (`phaseConfig` of every contract answer), so a
# config is only accepted when every value in it is typed and bounded: a string where a name
# goes (not a tree 250 levels deep that later fails to serialise), at most MAX_PHASES phases of
# at most MAX_DELIVERABLES deliverables. Parsing is linear in the size of the config.

MAX_PHASE_ID: Final = 100  # the width of the stored phase column
MAX_DELIVERABLE_ID: Final = 200  # the width of the stored deliverable id column
MAX_NAME: Final = 500  # a phase's or deliverable's display name, like a contract's name
MAX_PHASES: Final = 64
MAX_DELIVERABLES: Final = 256  # per phase; also bounds requiredDeliverables
MAX_TASK_NAMES: Final = 256  # requiredTasks.names
MAX_TASK_NAME: Final = 500  # like a reported task's name
MAX_VALIDATORS: Final = 32
MAX_VALIDATOR_NAME: Final = 100
MAX_TASK_COUNT: Final = 2**31 - 1  # requiredTasks.count
_SHOWN: Final = 10  # how many offending keys or ids an error message lists
_REQUIREMENT_KINDS: Final = ("none", "all_complete", "min_complete", "named_tasks")
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _fail(path: str, problem: str) -> ValidationFailed:
    return ValidationFailed(
        f"phaseConfig is not valid: {path + ' ' if path else ''}{problem}.",
        details={"field": f"phaseConfig.{path}" if path else "phaseConfig"},
    )


def _shown(values: Sequence[Any]) -> str:
    """At most _SHOWN values for a message, each short and printable whatever was sent."""
    texts = [_SURROGATE.sub("\ufffd", str(v)[:50]) for v in values[:_SHOWN]]
    more = f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
    return ", ".join(texts) + more


def _text(value: Any, path: str, limit: int, what: str = "a non-empty string") -> str:
    """A string we will store and echo: non-empty, at most `limit` characters, and encodable.

    PostgreSQL text cannot hold NUL, and a lone UTF-16 surrogate is not a character at all
    (it cannot be written as UTF-8, so storing or answering it would fail later).
    """
    if not isinstance(value, str) or not value:
        raise _fail(path, f"must be {what}")
    if len(value) > limit:
        raise _fail(path, f"must be at most {limit} characters")
    if "\x00" in value:
        raise _fail(path, "must not contain NUL characters")
    if _SURROGATE.search(value):
        raise _fail(path, "must not contain a lone UTF-16 surrogate (half of a character)")
    return value


def _display_name(raw: Mapping[str, Any], default: str, path: str) -> str:
    """An optional display name: absent, null or "" means the id."""
    name = raw.get("name")
    if name is None or name == "":
        return default
    return _text(name, f"{path}.name", MAX_NAME, "a string")


def _bounded_list(value: Any, path: str, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(path, f"must be a list of {what}")
    if len(value) > limit:
        raise _fail(path, f"must list at most {limit} {what} (it lists {len(value)})")
    return value


def _known_keys(raw: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
    """A misspelt key (`auto_advance` for `autoAdvance`) must not silently mean the default."""
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise _fail(
            path,
            f"has unknown field{'s' if len(unknown) > 1 else ''} {_shown(unknown)} "
            f"(allowed: {', '.join(allowed)})",
        )


def _parse_requirement(raw: Any, path: str) -> TaskRequirement:
    if raw is None:
        return TaskRequirement.none()
    if not isinstance(raw, Mapping):
        raise _fail(path, 'must be an object like {"kind": "all_complete"}')
    _known_keys(raw, ("kind", "count", "names"), path)
    kind = raw.get("kind")
    if kind not in _REQUIREMENT_KINDS:
        raise _fail(f"{path}.kind", f"must be one of {', '.join(_REQUIREMENT_KINDS)}")
    if kind == "min_complete":
        count = raw.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_TASK_COUNT:
            raise _fail(f"{path}.count", f"must be a whole number of at least 1 and at most {MAX_TASK_COUNT}")
        return TaskRequirement.min_complete(count)
    if kind == "named_tasks":
        names = raw.get("names")
        if not isinstance(names, list) or not names:
            raise _fail(f"{path}.names", "must be a non-empty list of task names")
        names = _bounded_list(names, f"{path}.names", MAX_TASK_NAMES, "task names")
        what = "a non-empty list of task names"
        return TaskRequirement.named_tasks(*(_text(n, f"{path}.names", MAX_TASK_NAME, what) for n in names))
    return TaskRequirement(kind)


def _parse_deliverables(raw: Any, path: str) -> tuple[Deliverable, ...]:
    raw_deliverables = _bounded_list(raw, path, MAX_DELIVERABLES, "deliverables")
    deliverables: list[Deliverable] = []
    seen: set[str] = set()  # a set, not a scan of those parsed so far: linear, not quadratic
    for j, rd in enumerate(raw_deliverables):
        dpath = f"{path}[{j}]"
        if not isinstance(rd, Mapping) or not isinstance(rd.get("id"), str) or not rd["id"]:
            raise _fail(dpath, "must be an object with a non-empty 'id'")
        _known_keys(rd, ("id", "name", "required"), dpath)
        did = _text(rd["id"], f"{dpath}.id", MAX_DELIVERABLE_ID)
        if did in seen:
            raise _fail(f"{dpath}.id", f"repeats deliverable '{did}'")
        seen.add(did)
        required_flag = rd.get("required", True)
        if not isinstance(required_flag, bool):
            raise _fail(f"{dpath}.required", "must be true or false")
        deliverables.append(Deliverable(did, _display_name(rd, did, dpath), required_flag))
    return tuple(deliverables)


def _parse_gate(
    rg: Any, deliverables: Sequence[Deliverable], known_validators: Sequence[str], path: str
) -> PhaseGate:
    if not isinstance(rg, Mapping):
        raise _fail(path, "must be an object or null")
    _known_keys(rg, ("requiredDeliverables", "requiredTasks", "validators", "autoAdvance"), path)
    required = rg.get("requiredDeliverables")
    if required is None:
        required = [d.id for d in deliverables if d.required]
    required = _bounded_list(required, f"{path}.requiredDeliverables", MAX_DELIVERABLES, "ids")
    if not all(isinstance(r, str) for r in required):
        raise _fail(f"{path}.requiredDeliverables", "must be a list of ids")
    ids = {d.id for d in deliverables}
    unknown = [r for r in required if r not in ids]
    if unknown:
        raise _fail(
            f"{path}.requiredDeliverables",
            f"names {_shown(unknown)}, which the phase does not define "
            f"(it defines: {_shown(sorted(ids)) or 'none'})",
        )
    validators = _bounded_list(
        rg.get("validators") or [], f"{path}.validators", MAX_VALIDATORS, "validator names"
    )
    for k, v in enumerate(validators):
        _text(v, f"{path}.validators[{k}]", MAX_VALIDATOR_NAME, "a validator name")
    missing_validators = [v for v in validators if v not in known_validators]
    if missing_validators:
        raise _fail(
            f"{path}.validators",
            f"names unregistered validators {_shown(missing_validators)} "
            f"(registered: {', '.join(known_validators) or 'none'})",
        )
    auto = rg.get("autoAdvance", True)
    if not isinstance(auto, bool):
        raise _fail(f"{path}.autoAdvance", "must be true or false")
    return PhaseGate(
        tuple(required),
        _parse_requirement(rg.get("requiredTasks"), f"{path}.requiredTasks"),
        tuple(validators),
        auto,
    )


def parse_phase_config(raw: Any, known_validators: Sequence[str] = ()) -> PhaseConfig:
    """Turn a contract's own phase configuration into a PhaseConfig, or say what is wrong.

    Shape: {"phases": [{"id", "name"?, "deliverables": [{"id", "name"?, "required"?}],
    "gate": null | {"requiredDeliverables"?, "requiredTasks"?, "validators"?,
    "autoAdvance"?}}]}. Required deliverables default to those marked required.

    Every key is known and every value typed and bounded (see the MAX_ constants), so an
    accepted config is at most a few levels deep and can always be stored and answered.
    Linear in the size of `raw`; lists are measured before they are walked.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("phases"), list):
        raise _fail("", "must be an object with a 'phases' list")
    _known_keys(raw, ("phases",), "")
    raw_phases = _bounded_list(raw["phases"], "phases", MAX_PHASES, "phases")
    if not raw_phases:
        raise _fail("phases", "must list at least one phase")
    phases: list[Phase] = []
    seen: set[str] = set()
    for i, rp in enumerate(raw_phases):
        path = f"phases[{i}]"
        if not isinstance(rp, Mapping):
            raise _fail(path, "must be an object")
        _known_keys(rp, ("id", "name", "deliverables", "gate"), path)
        pid = _text(rp.get("id"), f"{path}.id", MAX_PHASE_ID)
        if pid in seen:
            raise _fail(f"{path}.id", f"repeats phase '{pid}'")
        seen.add(pid)
        name = _display_name(rp, pid, path)
        deliverables = _parse_deliverables(rp.get("deliverables", []), f"{path}.deliverables")
        gate: PhaseGate | None = None
        if not ("gate" in rp and rp["gate"] is None):
            gate = _parse_gate(rp.get("gate", {}), deliverables, known_validators, f"{path}.gate")
        phases.append(Phase(pid, name, deliverables, gate))
    return PhaseConfig(tuple(phases))


__all__ = [
    "CONTRACT_TYPES",
    "MAX_DELIVERABLES",
    "MAX_NAME",
    "MAX_PHASES",
    "Deliverable",
    "Phase",
    "PhaseConfig",
    "PhaseGate",
    "TaskRequirement",
    "contract_type_names",
    "parse_phase_config",
    "resolve_phase_config",
    "validate_deliverable",
]
