"""The facts a contract's phase gate is judged on, read from the schema for the pure domain.

Every rule that asks "is this phase done?" (the guarded phase change, auto-advance, the
readiness view, the completion check) loads its facts here, so they all judge the same
thing the same way.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections import OrderedDict
from typing import Any, Final, Protocol

from sqlalchemy import Boolean, Connection, String, bindparam, cast, false, null, select, union_all
from sqlalchemy.orm import Session

from app.config import Settings
from app.domain.completion import (
    AutomationSwitches,
    GateFacts,
    ReadinessResult,
    TaskSummary,
    check_phase_readiness,
    registered_validators,
)
from app.domain.phases import PhaseConfig, parse_phase_config, resolve_phase_config
from app.models import CompletedDeliverable, Contract, ContractTask


class ConfiguredContract(Protocol):
    """What choosing a contract's phases reads: an ORM row or a plain `ContractRow` alike."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def version(self) -> int: ...
    @property
    def contract_type(self) -> str: ...
    @property
    def phase_config(self) -> dict[str, Any] | None: ...


PHASE_CONFIG_CACHE_SIZE: Final = 512
_ConfigKey = tuple[uuid.UUID, int, bytes, tuple[str, ...]]
_parsed_configs: OrderedDict[_ConfigKey, PhaseConfig] = OrderedDict()
_parsed_configs_lock = threading.Lock()


def _config_key(contract: ConfiguredContract, validators: tuple[str, ...]) -> _ConfigKey | None:
    """(id, version, digest of the raw config, registered validators), or None if unhashable.

    A contract's phase_config never changes after creation today, but nothing enforces that,
    so the key carries the version and the content as well as the id: a changed config can
    never be answered from the cache. Hashing is a fraction of parsing's cost.
    """
    try:
        raw = json.dumps(contract.phase_config, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return None
    digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return (contract.id, contract.version, digest, validators)


def phase_config_of(contract: ConfiguredContract) -> PhaseConfig:
    """The contract's own phases if it brought them, else its type's.

    Every read of a contract asks for its phases (list pages, readiness, each report a worker
    applies), so a contract's own config is parsed once per (contract, version, content) and
    kept in a small LRU, not re-parsed on every call. Only successful parses are cached: a
    stored config the rules now refuse raises every time, the same way.
    """
    if contract.phase_config is None:
        return resolve_phase_config(contract.contract_type, None)
    validators = tuple(registered_validators())
    key = _config_key(contract, validators)
    if key is not None:
        with _parsed_configs_lock:
            cached = _parsed_configs.get(key)
            if cached is not None:
                _parsed_configs.move_to_end(key)
                return cached
    config = parse_phase_config(contract.phase_config, validators)
    if key is not None:
        with _parsed_configs_lock:
            _parsed_configs[key] = config
            while len(_parsed_configs) > PHASE_CONFIG_CACHE_SIZE:
                _parsed_configs.popitem(last=False)
    return config


def cached_phase_configs() -> int:
    """How many parsed configs the cache holds (for tests and metrics)."""
    with _parsed_configs_lock:
        return len(_parsed_configs)


# Built once: constructing a statement costs more Python than executing a cached one.
_FACTS = union_all(
    select(
        CompletedDeliverable.deliverable_id.label("name"),
        cast(null(), String).label("status"),
        cast(false(), Boolean).label("is_supervisor"),
    ).where(
        CompletedDeliverable.contract_id == bindparam("cid"), CompletedDeliverable.phase == bindparam("phase")
    ),
    select(ContractTask.name, ContractTask.status, ContractTask.is_supervisor).where(
        ContractTask.contract_id == bindparam("cid"), ContractTask.phase == bindparam("phase")
    ),
)


def load_gate_facts(session: Session, contract: Contract, phase: str | None = None) -> GateFacts:
    """The phase's completed deliverables and its tasks, in one round trip (UNION ALL)."""
    return gate_facts(session, contract.id, phase or contract.phase)


def gate_facts(executor: Session | Connection, contract_id: uuid.UUID, phase: str) -> GateFacts:
    """`load_gate_facts` on a session or a Core connection (the guarded phase change's path).

    A deliverable row carries its id in `name` and NULL status; a task row its name, status
    and supervisor flag.
    """
    done: set[str] = set()
    summaries: list[TaskSummary] = []
    for name, status, is_supervisor in executor.execute(_FACTS, {"cid": contract_id, "phase": phase}):
        if status is None:
            done.add(name)
        else:
            summaries.append(TaskSummary(name, status, bool(is_supervisor)))
    return GateFacts(phase, frozenset(done), tuple(summaries))


def readiness(session: Session, contract: Contract) -> ReadinessResult:
    return check_phase_readiness(phase_config_of(contract), load_gate_facts(session, contract))


class AutomatedContract(Protocol):
    """What the automation switches read of a contract: an ORM row or a plain `ContractRow`."""

    @property
    def auto_complete_enabled(self) -> bool: ...


def switches_for(contract: AutomatedContract, settings: Settings) -> AutomationSwitches:
    """The three switches automation obeys: the feature flag, the server, the contract."""
    return AutomationSwitches(
        auto_complete_feature=settings.feature_flags.auto_complete,
        auto_advance_phases=settings.contracts.auto_advance_phases,
        contract_auto_complete=contract.auto_complete_enabled,
    )


__all__ = [
    "PHASE_CONFIG_CACHE_SIZE",
    "AutomatedContract",
    "ConfiguredContract",
    "cached_phase_configs",
    "gate_facts",
    "load_gate_facts",
    "phase_config_of",
    "readiness",
    "switches_for",
]
