"""What `makima token create` accepts, checked before any database is opened (no I/O here).

Owner and name must fit `principals` (200 characters each) and carry no control characters;
an expiry is a whole number of minutes, hours or days, more than zero and at most ten years.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.auth import (
    MAX_NAME_LENGTH,
    MAX_OWNER_LENGTH,
    PERSON_ROLES,
    Caller,
    Role,
    check_principal_fields,
    parse_lifetime,
)
from app.domain.errors import ValidationFailed
from app.domain.phase_change import CONFIRMING_ROLES
from app.models import Principal


def test_the_length_limits_are_the_columns_sizes() -> None:
    assert Principal.__table__.c.owner_id.type.length == MAX_OWNER_LENGTH  # type: ignore[attr-defined]
    assert Principal.__table__.c.name.type.length == MAX_NAME_LENGTH  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "owner, name, field",
    [
        ("o" * 201, None, "owner"),
        ("o" * 300, None, "owner"),
        ("ok", "n" * 201, "name"),
        ("bad\x00owner", None, "owner"),
        ("ok", "line\nbreak", "name"),
    ],
    ids=["owner-201", "owner-300", "name-201", "owner-nul", "name-newline"],
)
def test_an_owner_or_name_the_columns_cannot_hold_is_refused_naming_the_field(
    owner: str, name: str | None, field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_principal_fields(owner, name)
    assert caught.value.details["field"] == field
    assert field in caught.value.message


def test_an_owner_or_name_at_the_limit_is_accepted() -> None:
    check_principal_fields("o" * MAX_OWNER_LENGTH, "n" * MAX_NAME_LENGTH)


def test_an_empty_owner_is_refused() -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_principal_fields("  ", None)
    assert caught.value.missing == ["owner"]


@pytest.mark.parametrize(
    "raw, lifetime",
    [
        ("90m", timedelta(minutes=90)),
        ("12h", timedelta(hours=12)),
        ("30d", timedelta(days=30)),
        (" 1d ", timedelta(days=1)),
    ],
)
def test_a_lifetime_is_minutes_hours_or_days(raw: str, lifetime: timedelta) -> None:
    assert parse_lifetime(raw) == lifetime


@pytest.mark.parametrize("raw", ["", "30", "0d", "30w", "1.5h", "-1d", "30 weeks", "3651d", "999999999d"])
def test_a_lifetime_that_is_not_a_positive_whole_number_of_m_h_or_d_is_refused(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_lifetime(raw)
    assert caught.value.details["field"] == "expires"
    assert "30d" in caught.value.message


def test_the_persons_are_the_roles_the_phase_guard_names() -> None:
    assert [r.value for r in PERSON_ROLES] == list(CONFIRMING_ROLES) == ["user", "admin"]
    import uuid

    assert [Caller(uuid.uuid4(), "o", role).is_person for role in Role] == [True, False, True]
