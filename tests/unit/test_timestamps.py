"""Every answer writes its times one way: `datetime.isoformat()` (`+00:00`), never pydantic's `Z`."""

from __future__ import annotations

import typing
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import PlainSerializer

from app.http import create_app
from app.message_outcomes import MessageStatus, OutcomeStatus
from app.schemas import Schema


def _subclasses(cls: type[Schema]) -> set[type[Schema]]:
    found: set[type[Schema]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


def _naked_datetime(annotation: Any) -> bool:
    """A datetime in the annotation that is not the `Timestamp` type (no serializer beside it)."""
    if annotation is datetime:
        return True
    if typing.get_origin(annotation) is Annotated:
        inner, *metadata = typing.get_args(annotation)
        return inner is datetime and not any(isinstance(m, PlainSerializer) for m in metadata)
    return any(_naked_datetime(arg) for arg in typing.get_args(annotation))


def test_every_time_in_every_answer_model_is_a_timestamp() -> None:
    create_app()  # every router imported, so every answer model is defined
    naked = sorted(
        f"{cls.__module__}.{cls.__name__}.{name}"
        for cls in _subclasses(Schema)
        for name, f in cls.model_fields.items()
        if _naked_datetime(f.annotation) and not any(isinstance(m, PlainSerializer) for m in f.metadata)
    )
    assert naked == []


def test_a_message_status_writes_its_times_with_an_offset() -> None:
    at = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)
    status = MessageStatus(message_id="m-1", status=OutcomeStatus.APPLIED, accepted_at=at, updated_at=at)
    dumped = status.model_dump(mode="json")
    assert (dumped["acceptedAt"], dumped["updatedAt"]) == ("2026-11-26T01:00:00+00:00",) * 2
