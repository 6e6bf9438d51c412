"""Every task name the service sends has a worker task registered under it, and no other.

A name sent but not registered is a message no worker can run (Celery rejects it as
unregistered and it is dead-lettered); a name registered outside `TaskName` is one no sender
can spell. Both are caught here, at test time, rather than in production.
"""

from __future__ import annotations

import ast
from pathlib import Path

from app.queues import TaskName

WORKERS = Path(__file__).resolve().parents[2] / "workers"


def _registered_names() -> set[str]:
    from workers.celery_app import celery_app

    celery_app.loader.import_default_modules()
    return {name for name in celery_app.tasks if not name.startswith("celery.")}


def test_every_task_name_sent_is_registered_by_a_worker() -> None:
    registered = _registered_names()
    missing = [name.value for name in TaskName if name.value not in registered]
    assert missing == [], f"sent but no worker registers: {missing}"


def test_every_registered_task_is_a_task_name() -> None:
    known = {name.value for name in TaskName}
    assert _registered_names() <= known, _registered_names() - known


def _task_decorator_names(tree: ast.AST) -> list[ast.expr]:
    """The `name=` argument of every `@<app>.task(...)` / `@shared_task(...)` decorator."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for decorator in node.decorator_list:
            if not isinstance(decorator, ast.Call):
                continue
            func = decorator.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called not in ("task", "shared_task"):
                continue
            name = next((kw.value for kw in decorator.keywords if kw.arg == "name"), None)
            assert name is not None, f"{node.name} is registered without an explicit name="
            found.append(name)
    return found


def test_every_name_registered_under_workers_is_spelt_through_task_name() -> None:
    names = [
        (path.name, expr)
        for path in sorted(WORKERS.glob("*.py"))
        for expr in _task_decorator_names(ast.parse(path.read_text()))
    ]
    assert names, "no task decorators found under workers/"
    for module, expr in names:
        assert (
            isinstance(expr, ast.Attribute)
            and isinstance(expr.value, ast.Name)
            and expr.value.id == "TaskName"
        ), f"{module}: task name {ast.unparse(expr)} is not a TaskName member"
        assert expr.attr in TaskName.__members__, f"{module}: TaskName.{expr.attr} does not exist"
