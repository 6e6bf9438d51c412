"""A contract's own phase_config is parsed once per (contract, version, content), not per call.

Every read of a contract (a list page, readiness, each report a worker applies) asks for its
phases; re-parsing a large config on each of them is what made 20,000 deliverables cost 7 s
per call. The cache key carries the version and a digest of the raw config, so a config that
changed under the same id and version (never today, but nothing enforces it) is parsed anew.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

import app.gate as gate
from app.domain.phases import parse_phase_config
from app.models import Contract

RAW = {"phases": [{"id": "draft", "deliverables": [{"id": "notes"}]}, {"id": "ship"}]}


def _contract(raw: dict[str, Any] | None, *, version: int = 1, cid: uuid.UUID | None = None) -> Contract:
    return Contract(id=cid or uuid.uuid4(), contract_type="custom", phase_config=raw, version=version)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []

    def counting(raw: Any, known: Any = ()) -> Any:
        calls.append(raw)
        return parse_phase_config(raw, known)

    monkeypatch.setattr(gate, "parse_phase_config", counting)
    return calls


def test_the_same_contract_version_is_parsed_once(parses: list[Any]) -> None:
    contract = _contract(RAW)
    first = gate.phase_config_of(contract)
    assert gate.phase_config_of(contract) is first
    assert gate.phase_config_of(_contract(RAW, cid=contract.id)) is first  # re-loaded row
    assert len(parses) == 1
    assert first.phase_ids() == ["draft", "ship"]


def test_a_new_version_is_parsed_again(parses: list[Any]) -> None:
    contract = _contract(RAW)
    gate.phase_config_of(contract)
    contract.version = 2
    gate.phase_config_of(contract)
    assert len(parses) == 2


def test_a_different_config_under_the_same_id_and_version_is_parsed_again(parses: list[Any]) -> None:
    contract = _contract(RAW)
    gate.phase_config_of(contract)
    changed = _contract({"phases": [{"id": "other"}]}, cid=contract.id)
    assert gate.phase_config_of(changed).phase_ids() == ["other"]
    assert len(parses) == 2


def test_a_contract_of_a_shipped_type_is_never_parsed(parses: list[Any]) -> None:
    contract = Contract(id=uuid.uuid4(), contract_type="simple", phase_config=None, version=1)
    assert gate.phase_config_of(contract).phase_ids() == ["plan", "execute"]
    assert parses == []


def test_the_cache_keeps_a_bounded_number_of_configs(parses: list[Any]) -> None:
    for _ in range(gate.PHASE_CONFIG_CACHE_SIZE + 10):
        gate.phase_config_of(_contract(RAW))
    assert gate.cached_phase_configs() <= gate.PHASE_CONFIG_CACHE_SIZE
