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
from tests.unit.test_text_hygiene import EVERY_BIDI_CONTROL


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


# Every Bidi_Control character, spelled out (each makes an owner or a name read as another).
BIDI_CONTROLS = EVERY_BIDI_CONTROL


@pytest.mark.parametrize("bidi", BIDI_CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("field", ["owner", "name"])
def test_makima_token_create_refuses_a_bidi_control_in_the_owner_or_name_naming_it(
    field: str, bidi: str
) -> None:
    """`--owner "team-a"` + U+202E was stored and listed by `token list` as another owner; the
    owner and the name follow the one-line rule the HTTP front holds names to. Refused before
    any database is opened (the run has none)."""
    from typer.testing import CliRunner

    from app.cli import app
    from app.domain.control_characters import ONE_LINE_RULE

    value = f"team{bidi}a-mot"
    args = {"owner": "team-a", "name": "ci"} | {field: value}
    result = CliRunner().invoke(
        app, ["token", "create", "--owner", args["owner"], "--role", "user", "--name", args["name"]]
    )
    assert result.exit_code == 2, result.output
    found = f"U+{ord(bidi):04X}"
    assert (
        f"error: VALIDATION_FAILED: The {field} must not contain a bidirectional control (found {found}): "
        in result.output
    )
    assert ONE_LINE_RULE.split(" (")[0] in result.output
    assert f'"field": "{field}"' in result.output
    with pytest.raises(ValidationFailed) as caught:
        check_principal_fields(args["owner"], args["name"])
    assert caught.value.details["field"] == field
    assert caught.value.message.endswith(f"holds {ONE_LINE_RULE}.")


@pytest.mark.parametrize("char", ["\x85", "\u2028"], ids=["NEL", "LINE-SEPARATOR"])
def test_an_owner_with_a_c1_control_or_a_line_separator_is_refused_too(char: str) -> None:
    """Only C0 and DEL were refused: NEL (U+0085) and U+2028 break a line all the same."""
    with pytest.raises(ValidationFailed) as caught:
        check_principal_fields(f"team{char}a", None)
    assert caught.value.details["field"] == "owner"


def test_makima_token_list_refuses_an_owner_no_token_can_have() -> None:
    """A filter holding U+202E was echoed back ("No tokens for owner '...'") as another owner."""
    from typer.testing import CliRunner

    from app.cli import app

    result = CliRunner().invoke(app, ["token", "list", "--owner", "team\u202ea"])
    assert result.exit_code == 2, result.output
    assert "error: VALIDATION_FAILED: The owner must not contain a bidirectional control (found U+202E)" in (
        result.output
    )
