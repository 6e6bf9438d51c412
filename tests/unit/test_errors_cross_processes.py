"""A domain error keeps its class, code, message and details when it crosses a process.

Celery's failure handling pickles a task's exception (`get_pickleable_exception`) before the
task's `on_failure` reads its code; an error whose constructor takes other arguments than the
message could not be rebuilt and was swapped for the base class: a report refused with
INVALID_DELIVERABLE was recorded as CONTRACT_ERROR in its message status and dead letter.
"""

from __future__ import annotations

import pickle
import uuid

import pytest
from celery.utils.serialization import get_pickleable_exception

from app.domain.errors import (
    ContractError,
    ContractNotFound,
    FeatureDisabled,
    Forbidden,
    InvalidDeliverable,
    InvalidTransition,
    PhaseGuardRequired,
    SupervisorDead,
    ValidationFailed,
    VersionConflict,
)

CID = uuid.uuid4()

ERRORS = [
    InvalidDeliverable("pull-request", "plan", ["plan-document"]),
    InvalidTransition("created", "completed", ["active", "cancelled"]),
    VersionConflict(2, 3, "plan"),
    PhaseGuardRequired("plan", "execute", [{"id": "plan-document", "completed": True}]),
    ContractNotFound(CID),
    Forbidden("change_phase", "viewer", ["user", "admin"]),
    FeatureDisabled("supervisor_heartbeat"),
    ValidationFailed("A contract needs a non-empty name.", missing=["name"]),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_celery_hands_on_failure_the_same_error(error: ContractError) -> None:
    seen = get_pickleable_exception(error)
    assert type(seen) is type(error)
    assert (seen.code, seen.message, seen.details, str(seen)) == (
        error.code,
        error.message,
        error.details,
        str(error),
    )


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_a_pickled_error_keeps_every_attribute(error: ContractError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and copy.__dict__ == error.__dict__ and copy.args == error.args


def test_every_domain_error_class_survives_pickling() -> None:
    """Any subclass, present or future: rebuilt from what it holds, whatever its constructor."""

    def all_subclasses(cls: type[ContractError]) -> list[type[ContractError]]:
        return [c for sub in cls.__subclasses__() for c in (sub, *all_subclasses(sub))]

    import app.domain  # noqa: F401  (the domain's errors, wherever they are declared)

    classes = all_subclasses(ContractError)
    assert len(classes) >= 15
    for cls in classes:
        error = cls.__new__(cls)
        ContractError.__init__(error, f"a {cls.__name__}", {"field": "x"})
        error.extra = [1, 2]  # type: ignore[attr-defined]
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is cls and copy.code == cls.code and copy.details == {"field": "x"}
        assert copy.extra == [1, 2]  # type: ignore[attr-defined]
    assert SupervisorDead in classes or any(issubclass(c, SupervisorDead) for c in classes)
