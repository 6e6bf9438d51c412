"""Text shown as sent cannot lie: one rule refuses control characters, line separators and
bidirectional controls in a daemon's id and host, a phase, a contract's and a task's name, and
each refusal names the field, the character's code point and what is allowed.

Also here: a character is named for what it is (a tab alone is not "blank"), and a message time
without a time zone is told it has none.
"""

from __future__ import annotations

import unicodedata
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from app.domain.control_characters import (
    BIDI_CONTROLS,
    BIDI_CONTROLS_NAMED,
    ONE_LINE_RULE,
    first_control_or_separator,
    kind_of,
    one_line_problem,
)
from app.domain.daemon_ids import DAEMON_ID_RULE, daemon_id_problem
from app.domain.errors import ValidationFailed
from app.domain.heartbeats import InvalidHeartbeat
from app.domain.history_messages import message_time
from app.domain.reported_text import (
    ACTIVITY_RULE,
    CONTRACT_NAME_RULE,
    HOST_RULE,
    PHASE_RULE,
    TASK_NAME_RULE,
    host_problem,
    name_problem,
)
from app.domain.state_saves import parse_save
from app.domain.state_values import InvalidValue

# Every Bidi_Control character Unicode defines, spelled out rather than taken from the module.
EVERY_BIDI_CONTROL = [
    "\u061c",
    "\u200e",
    "\u200f",
    "\u202a",
    "\u202b",
    "\u202c",
    "\u202d",
    "\u202e",
    "\u2066",
    "\u2067",
    "\u2068",
    "\u2069",
]
SAVE: dict[str, Any] = {
    "taskId": "6a4c6955-0f3b-4c1e-9a51-0d2b7f4e8c13",
    "stateVersion": 1,
    "state": "working",
    "phase": "plan",
}


def cp(char: str) -> str:
    return f"U+{ord(char):04X}"


def test_the_bidirectional_controls_are_exactly_unicodes_bidi_control_characters() -> None:
    assert frozenset(EVERY_BIDI_CONTROL) == BIDI_CONTROLS
    assert all(
        unicodedata.category(c) == "Cf" for c in BIDI_CONTROLS
    )  # not Cc: isprintable alone misses none
    assert all(not c.isprintable() for c in BIDI_CONTROLS)
    assert BIDI_CONTROLS_NAMED == "U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069"


@pytest.mark.parametrize("bidi", EVERY_BIDI_CONTROL, ids=cp)
def test_a_bidi_control_is_refused_in_a_daemon_id_and_a_host_naming_its_code_point(bidi: str) -> None:
    """`gpu-7` + U+202E + `0.exe` was stored and listed: the daemon list showed another id."""
    text = f"gpu-7{bidi}0.exe"
    assert first_control_or_separator(text) == bidi
    assert daemon_id_problem(text) == (
        f"must not contain bidirectional controls (found {cp(bidi)}): {DAEMON_ID_RULE}"
    )
    assert host_problem(text) == f"must not contain bidirectional controls (found {cp(bidi)}): {HOST_RULE}"


@pytest.mark.parametrize("bidi", EVERY_BIDI_CONTROL, ids=cp)
def test_a_bidi_control_is_refused_in_a_contract_or_task_name_naming_its_code_point(bidi: str) -> None:
    name = f"invoice{bidi}fdp.exe"
    for rule in (CONTRACT_NAME_RULE, TASK_NAME_RULE):
        assert name_problem(name, rule) == (
            f"must not contain a bidirectional control (found {cp(bidi)}): {rule}"
        )


@pytest.mark.parametrize(
    ("char", "kind"),
    [
        ("\x00", "NUL character"),
        ("\x01", "control character"),
        ("\t", "control character"),
        ("\n", "control character"),
        ("\x1b", "control character"),
        ("\x1f", "control character"),
        ("\x7f", "control character"),
        ("\x80", "control character"),
        ("\x85", "control character"),
        ("\x9b", "control character"),
        ("\x9f", "control character"),
        ("\u2028", "line or paragraph separator"),
        ("\u2029", "line or paragraph separator"),
        ("\u202e", "bidirectional control"),
    ],
    ids=lambda v: cp(v) if len(v) == 1 else v,
)
def test_a_name_with_a_control_character_is_refused_saying_what_it_found(char: str, kind: str) -> None:
    """C0 (NUL to U+001F), DEL, C1 (U+0080 to U+009F), the separators and the bidi controls."""
    assert kind_of(char) == kind
    for rule in (CONTRACT_NAME_RULE, TASK_NAME_RULE):
        assert (
            name_problem(f"build{char}step", rule) == f"must not contain a {kind} (found {cp(char)}): {rule}"
        )


@pytest.mark.parametrize(
    "name",
    [
        "Refactor the OAuth flow",
        "exécuter les tests",
        "שלום עולם",  # Hebrew: right-to-left by itself, no control needed
        "مرحبا بالعالم",  # Arabic
        "実施 / 東京",
        "👩\u200d👩\u200d👧 family",  # a zero-width joiner is a format character, not a bidi control
        "x" * 500,
    ],
)
def test_a_printable_name_in_any_script_is_taken(name: str) -> None:
    assert one_line_problem(name) is None
    assert name_problem(name, CONTRACT_NAME_RULE) is None
    assert name_problem(name, TASK_NAME_RULE) is None


def test_every_rule_of_shown_text_says_bidi_controls_are_not_allowed() -> None:
    for rule in (ONE_LINE_RULE, CONTRACT_NAME_RULE, TASK_NAME_RULE, HOST_RULE, PHASE_RULE, ACTIVITY_RULE):
        assert f"no bidirectional control ({BIDI_CONTROLS_NAMED})" in rule, rule
    assert f"no bidirectional control ({BIDI_CONTROLS_NAMED}) and no U+FFFD" in DAEMON_ID_RULE
    assert CONTRACT_NAME_RULE.startswith("a contract's name is 1 to 500 characters on one line: ")
    assert TASK_NAME_RULE.startswith("a task's name is 1 to 500 characters on one line: ")


@pytest.mark.parametrize("text", ["\n", "\t", "\r\n", " \t ", "\x1c", "\x85", "\u2028"], ids=repr)
def test_a_daemon_id_or_host_of_whitespace_controls_alone_is_refused_for_them_not_as_blank(text: str) -> None:
    """Python's str.strip() takes newlines, tabs and NEL for whitespace, so `?daemonId=%0A` was
    told it was blank; it holds a newline, and is told so."""
    bad = first_control_or_separator(text)
    assert bad is not None
    for problem in (daemon_id_problem(text), host_problem(text)):
        assert problem is not None and problem.startswith("must not contain "), problem
        assert f"(found {cp(bad)})" in problem, problem


@pytest.mark.parametrize("text", ["", "   ", "\u3000", "\u200b", "\ufeff\u200b", " \u2060 "])
def test_a_daemon_id_or_host_of_spaces_or_zero_width_characters_alone_is_blank(text: str) -> None:
    """A zero-width space shows as nothing in the daemon list and the logs, as a space does."""
    assert daemon_id_problem(text) == "must not be blank (only spaces or zero-width characters)"
    assert host_problem(text) == "must not be blank (only spaces or zero-width characters)"


@pytest.mark.parametrize("text", ["\u200b", "\u3000\ufeff"])
def test_a_heartbeat_phase_of_zero_width_characters_alone_is_refused_as_blank(text: str) -> None:
    from app.domain.heartbeat_wire import wire_heartbeat

    raw = {
        "taskId": str(uuid.uuid4()),
        "contractId": str(uuid.uuid4()),
        "state": "working",
        "phase": text,
        "timestamp": "2026-01-31T10:30:00+00:00",
    }
    with pytest.raises(InvalidHeartbeat) as refused:
        wire_heartbeat(raw)
    assert refused.value.field == "phase" and "only blanks" in refused.value.problem
    for field in ("daemonId", "host"):
        with pytest.raises(InvalidHeartbeat) as refused:
            wire_heartbeat({**raw, "phase": "plan", field: text})
        assert refused.value.field == field and "blank" in refused.value.problem


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("phase", "plan\u202e", PHASE_RULE),
        ("currentActivity", "writing \u2066tests", ACTIVITY_RULE),
        ("phase", "\t", PHASE_RULE),
    ],
)
def test_a_saves_phase_or_activity_with_a_bidi_or_control_character_names_it_and_the_rule(
    field: str, value: str, rule: str
) -> None:
    bad = first_control_or_separator(value)
    assert bad is not None
    with pytest.raises(ValidationFailed) as refused:
        parse_save({**SAVE, field: value})
    assert refused.value.details["field"] == field
    assert refused.value.details["problem"] == f"must not contain a {kind_of(bad)} (found {cp(bad)}): {rule}"


@pytest.mark.parametrize("daemon_id", ["gpu\u202e7", "\n"])
def test_a_saves_daemon_id_is_judged_by_the_daemon_id_rule(daemon_id: str) -> None:
    """A save's id was judged as free text: a bidi control passed, a newline alone was "empty"."""
    with pytest.raises(ValidationFailed) as refused:
        parse_save({**SAVE, "daemonId": daemon_id})
    assert refused.value.details["field"] == "daemonId"
    assert refused.value.details["problem"] == daemon_id_problem(daemon_id)
    assert "(found U+" in refused.value.details["problem"]


@pytest.mark.parametrize(
    "at", ["2026-01-31T10:30:00", "2026-01-31T10:30:00.250", datetime(2026, 1, 31, 10, 30)]
)
def test_a_message_time_without_a_time_zone_is_told_it_has_none_and_what_to_send(at: Any) -> None:
    with pytest.raises(InvalidValue) as refused:
        message_time(at, "historyAppend[0].at")
    assert refused.value.field == "historyAppend[0].at"
    assert refused.value.problem.startswith("has no time zone")
    assert "Z or an offset from UTC (+HH:MM or -HH:MM)" in refused.value.problem
    assert "2026-01-31T10:30:00Z" in refused.value.problem
    with pytest.raises(ValidationFailed) as saved:
        parse_save({**SAVE, "historyAppend": [{"role": "user", "content": "hi", "at": str(at)}]})
    assert saved.value.details["field"] == "historyAppend[0].at"
    assert saved.value.details["problem"].startswith("has no time zone")


def test_a_message_time_with_z_or_an_offset_is_taken_in_utc() -> None:
    expected = datetime(2026, 1, 31, 10, 30, tzinfo=UTC)
    assert message_time("2026-01-31T10:30:00Z") == expected
    assert message_time("2026-01-31T12:30:00+02:00") == expected
    with pytest.raises(InvalidValue) as garbage:
        message_time("yesterday")
    assert garbage.value.problem.startswith("'yesterday' is not an ISO 8601 date-time with a time zone")


@pytest.mark.parametrize("field", ["phase", "currentActivity"])
def test_a_heartbeat_names_a_bidirectional_control_as_what_it_is(field: str) -> None:
    """Not "control characters or line separators": U+202E is neither."""
    from app.domain.heartbeats import InvalidHeartbeat, parse_heartbeat

    raw = {
        "taskId": "6a674d20-ce05-4aa6-8a33-b1138c462682",
        "contractId": "7b674d20-ce05-4aa6-8a33-b1138c462682",
        "state": "working",
        "phase": "plan",
        "currentActivity": "ok",
        "progress": 1,
        "pendingTaskIds": [],
        "timestamp": "2026-11-26T10:00:00Z",
        field: "re\u202eport",
    }
    with pytest.raises(InvalidHeartbeat) as refused:
        parse_heartbeat(raw)
    assert "must not contain bidirectional controls (found U+202E)" in str(refused.value)


# --- names of blanks alone, and daemon ids that read as path segments -------------------------


@pytest.mark.parametrize("name", [" ", "   ", "\u3000", "\u200b", " \ufeff "], ids=repr)
def test_a_name_of_blanks_alone_is_refused_as_blank_by_the_contracts_and_the_tasks_rule(name: str) -> None:
    """A task reported as " " was taken and listed with no name; a contract's name was refused
    only when `strip()` left nothing, so a zero-width space alone passed. One rule, the
    questions' meaning of blank (spaces and zero-width characters)."""
    for rule in (CONTRACT_NAME_RULE, TASK_NAME_RULE):
        assert name_problem(name, rule) == f"must not be blank: {rule}"
        assert "not only blanks (spaces, zero-width characters)" in rule


def test_a_name_of_a_newline_alone_is_refused_for_the_newline_not_as_blank() -> None:
    assert (
        name_problem("\n", TASK_NAME_RULE)
        == f"must not contain a control character (found U+000A): {TASK_NAME_RULE}"
    )


@pytest.mark.parametrize("daemon_id", [".", ".."])
def test_a_daemon_id_of_dot_or_dot_dot_is_refused_saying_it_reads_as_a_path_segment(daemon_id: str) -> None:
    problem = daemon_id_problem(daemon_id)
    assert problem is not None
    assert problem.startswith(f"must not be '{daemon_id}': the id is a segment of the feed's path")
    assert "queue names and log lines" in problem and "directory, not a daemon" in problem
    assert problem.endswith(DAEMON_ID_RULE)
    assert "not '.' or '..'" in DAEMON_ID_RULE


@pytest.mark.parametrize("daemon_id", ["...", ".a", "a.", "a..b", "gpu-7.local", ". ."])
def test_a_daemon_id_holding_dots_among_other_characters_is_still_taken(daemon_id: str) -> None:
    assert daemon_id_problem(daemon_id) is None


@pytest.mark.parametrize("daemon_id", [".", ".."])
def test_the_heartbeats_quick_paths_refuse_a_dot_daemon_id_as_the_rule_does(daemon_id: str) -> None:
    """The wire-form checks pass plain ASCII ids without asking the rule: "." and ".." are plain
    ASCII, so each quick path must leave them to the rule."""
    import uuid

    from app.domain.heartbeat_wire import heartbeat_wire, wire_heartbeat
    from app.domain.heartbeats import InvalidHeartbeat

    task, contract = uuid.uuid4(), uuid.uuid4()
    at = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    raw = {
        "taskId": str(task),
        "contractId": str(contract),
        "state": "working",
        "phase": "plan",
        "timestamp": "2026-11-26T10:00:00Z",
        "daemonId": daemon_id,
    }
    for check in (
        lambda: wire_heartbeat(raw),
        lambda: heartbeat_wire(task, contract, "working", "plan", timestamp=at, daemon_id=daemon_id),
    ):
        with pytest.raises(InvalidHeartbeat) as refused:
            check()
        assert (refused.value.field, refused.value.problem) == ("daemonId", daemon_id_problem(daemon_id))


def test_the_ascii_shortcut_of_is_blank_agrees_with_the_rule_on_every_ascii_text() -> None:
    """`is_blank` answers ASCII text without a loop; the rule is the Unicode categories."""
    import unicodedata

    from app.domain.control_characters import is_blank

    def by_the_rule(text: str) -> bool:
        return all(c.isspace() or unicodedata.category(c) in {"Zs", "Zl", "Zp", "Cf", "Cc"} for c in text)

    singles = [chr(i) for i in range(128)]
    for text in [*singles, "", "  \t", " a ", "\x7f\x00", "host-7", " \x1f "]:
        assert is_blank(text) == by_the_rule(text), repr(text)
