"""The pure domain stays pure: every module of `app/domain/` imports the standard library and
its own siblings only (no database, broker or web framework), and exports only what it defines
or takes from a sibling."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

DOMAIN = Path(__file__).resolve().parents[2] / "app" / "domain"
MODULES = sorted(p.stem for p in DOMAIN.glob("*.py") if p.stem != "__init__")


def imported(module: str) -> set[str]:
    """Every module `module` imports, at any depth of its code (a function's own imports too)."""
    tree = ast.parse((DOMAIN / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", MODULES)
def test_a_domain_module_imports_the_standard_library_and_the_domain_only(module: str) -> None:
    foreign = {
        name
        for name in imported(module)
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("app.domain.")
    }
    assert foreign == set(), f"app/domain/{module}.py imports {sorted(foreign)}"


@pytest.mark.parametrize("module", MODULES)
def test_every_name_a_domain_module_exports_is_there(module: str) -> None:
    loaded = importlib.import_module(f"app.domain.{module}")
    exported = getattr(loaded, "__all__", [])
    assert exported, f"app/domain/{module}.py has no __all__"
    assert [name for name in exported if not hasattr(loaded, name)] == []
    assert len(set(exported)) == len(exported)


def test_the_split_supervisor_rules_each_have_a_module_of_their_own() -> None:
    """Where each rule once in one long module lives now (the README's code map lists them)."""
    homes = {
        "uuid_problem": "uuids",
        "host_problem": "reported_text",
        "parse_timestamp": "timestamps",
        "parse_heartbeat": "heartbeats",
        "wire_heartbeat": "heartbeat_wire",
        "next_incarnation": "incarnations",
        "fence_reason": "fencing",
        "plan_batch": "heartbeat_plan",
        "declare_dead": "liveness",
        "SupervisorRecord": "supervisors",
    }
    exports = {m: getattr(importlib.import_module(f"app.domain.{m}"), "__all__", []) for m in MODULES}
    found = {name: [m for m in MODULES if name in exports[m]] for name in homes}
    assert found == {name: [home] for name, home in homes.items()}


def test_the_split_supervisor_state_rules_each_have_a_module_of_their_own() -> None:
    """Where each rule once in `supervisor_state.py` lives now (the README's code map lists them)."""
    homes = {
        "InvalidValue": "state_values",
        "check_host": "state_values",
        "MAX_TASK_IDS": "state_values",
        "parse_message": "history_messages",
        "message_time": "history_messages",
        "parse_save": "state_saves",
        "judge_save": "save_plan",
        "worth_an_event": "save_plan",
        "resend_differences": "save_resends",
        "checkpoint_after": "state_snapshots",
        "parse_snapshot": "state_snapshots",
    }
    exports = {m: getattr(importlib.import_module(f"app.domain.{m}"), "__all__", []) for m in MODULES}
    found = {name: [m for m in MODULES if name in exports[m]] for name in homes}
    assert found == {name: [home] for name, home in homes.items()}
    assert "supervisor_state" not in MODULES
