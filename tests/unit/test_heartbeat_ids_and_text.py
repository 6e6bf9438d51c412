"""A heartbeat's ids, `phase`, `currentActivity` and `daemonId`: one rule each, on every path.

The paths are those of `test_heartbeat_host_and_timestamp`: the full parse, the worker's quick
check with and without an id, and the API module's values. Ids are ASCII hex in the UUID's
form (not whatever `uuid.UUID` reads); phase, activity, daemon id and host are one line each,
refused for a control character or a line separator by the same helper.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.domain.control_characters import first_control_or_separator
from app.domain.daemon_ids import DAEMON_ID_RULE, daemon_id_problem
from app.domain.heartbeat_wire import heartbeat_wire, wire_heartbeat
from app.domain.heartbeats import InvalidHeartbeat, parse_heartbeat
from app.domain.reported_text import ACTIVITY_RULE, PHASE_RULE, host_problem
from app.domain.uuids import UUID_FORM
from tests.unit.test_heartbeat_host_and_timestamp import SENT, TASK, VALUES, WIRE, heartbeat_refusals

# --- ids --------------------------------------------------------------------------------------

HEX = TASK.hex


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("\uff10" * 32, id="full-width digits"),
        pytest.param("\uff10" * 8 + "-" + str(TASK)[9:], id="full-width digits in one group"),
        pytest.param("\u0660" * 32, id="Arabic-Indic digits"),
        pytest.param(f"{HEX[:4]}-{HEX[4:]}", id="a hyphen misplaced"),
        pytest.param(f"{HEX[:8]}-{HEX[8:12]}{HEX[12:]}", id="hyphens missing"),
        pytest.param("-".join(HEX[i : i + 4] for i in range(0, 32, 4)), id="hyphens every 4"),
        pytest.param("{" + str(TASK) + "}", id="braces"),
        pytest.param("urn:uuid:" + str(TASK), id="urn"),
        pytest.param(" " + HEX[1:], id="a leading space in 32 characters"),
        pytest.param(HEX[:4] + "_" + HEX[5:], id="an underscore"),
        pytest.param(str(TASK) + "\n", id="a trailing newline"),
        pytest.param(str(TASK)[:-1] + "g", id="not hex"),
    ],
)
@pytest.mark.parametrize("field", ["taskId", "contractId", "id"])
def test_an_id_in_another_spelling_than_the_uuids_is_refused_on_every_path(field: str, given: str) -> None:
    """`uuid.UUID` took all but the last three: one task had many spellings, a full-width one
    among them, which no other reader of the id takes."""
    problem = f"'{given[:60]}' is not a UUID: {UUID_FORM}"
    keyword = {"taskId": "task_id", "contractId": "contract_id", "id": "heartbeat_id"}[field]
    assert heartbeat_refusals(field, given, keyword) == [(field, problem)] * 4


@pytest.mark.parametrize("given", ["\uff10" * 32, f"{HEX[:4]}-{HEX[4:]}", "{" + str(TASK) + "}"])
def test_a_pending_task_id_is_held_to_the_same_form(given: str) -> None:
    problem = f"'{given[:60]}' is not a UUID: {UUID_FORM}"
    refusals = heartbeat_refusals("pendingTaskIds", [str(TASK), given], "pending_task_ids")
    assert refusals == [("pendingTaskIds", problem)] * 4


@pytest.mark.parametrize(
    "given",
    [str(TASK), str(TASK).upper(), HEX, HEX.upper(), str(TASK)[:9] + str(TASK)[9:].upper()],
)
def test_an_id_in_the_uuids_form_is_taken_in_either_case_with_or_without_hyphens(given: str) -> None:
    for field in ("taskId", "contractId", "id"):
        assert str(parse_heartbeat({**SENT, field: given}).to_json()[field]) == str(TASK)
        assert wire_heartbeat({**WIRE, field: given})[field] == str(TASK)
    assert parse_heartbeat({**SENT, "pendingTaskIds": [given]}).pending_task_ids == (str(TASK),)


def test_the_id_form_says_what_an_id_may_be() -> None:
    assert UUID_FORM.startswith("a UUID is 32 hexadecimal digits (0-9, a-f or A-F) grouped 8-4-4-4-12")


# --- one line of text: phase, currentActivity, daemonId, host ----------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("exec\nute", "U+000A"),
        ("execute\r\n", "U+000D"),
        ("exec\tute", "U+0009"),
        ("exec\x07ute", "U+0007"),  # BEL
        ("\x1b[2Jexecute", "U+001B"),  # ESC: clears a terminal
        ("exec\x00ute", "U+0000"),
        ("exec\x7fute", "U+007F"),
        ("exéc\u0085ute", "U+0085"),  # NEL, a C1 control
        ("exec\u2028ute", "U+2028"),
        ("exec\u2029ute", "U+2029"),
    ],
)
def test_a_phase_or_activity_off_one_line_is_refused_on_every_path_naming_its_rule(
    text: str, found: str
) -> None:
    """Both were shown as sent in the dashboard, the monitor and logs, where they took newlines,
    BEL and escape sequences (only NUL was refused)."""
    words = f"must not contain control characters or line separators (found {found})"
    assert heartbeat_refusals("phase", text, "phase") == [("phase", f"{words}: {PHASE_RULE}")] * 4
    activity = heartbeat_refusals("currentActivity", text, "current_activity")
    assert activity == [("currentActivity", f"{words}: {ACTIVITY_RULE}")] * 4


@pytest.mark.parametrize(
    "text", ["execute", "exécuter", "phase 2/3: write tests", "实施", "déjà vu \ufffd", "x" * 100]
)
def test_a_phase_or_activity_on_one_line_is_taken_as_sent_on_every_path(text: str) -> None:
    given = {"phase": text, "currentActivity": text}
    assert parse_heartbeat({**SENT, **given}).phase == text
    for wire in (
        wire_heartbeat({**WIRE, **given}),
        wire_heartbeat({**SENT, **given}),
        heartbeat_wire(**{**VALUES, "phase": text, "current_activity": text}),
    ):
        assert (wire["phase"], wire["currentActivity"]) == (text, text)


def test_the_phase_and_activity_rules_say_one_line() -> None:
    for rule in (PHASE_RULE, ACTIVITY_RULE):
        assert "on one line: no control character (NUL, newline, tab, escape, ...)" in rule
        assert "no line or paragraph separator (U+2028, U+2029)" in rule


@pytest.mark.parametrize("separator", ["\u2028", "\u2029"])
def test_a_daemon_id_with_a_line_separator_is_refused_as_a_host_with_one_is(separator: str) -> None:
    """The daemon id took them while the host refused them: the two rules now ask one helper."""
    daemon_id = f"gpu{separator}7"
    found = f"U+{ord(separator):04X}"
    problem = f"must not contain line or paragraph separators (found {found}): {DAEMON_ID_RULE}"
    assert daemon_id_problem(daemon_id) == problem
    assert heartbeat_refusals("daemonId", daemon_id, "daemon_id") == [("daemonId", problem)] * 4
    assert host_problem(daemon_id) is not None
    assert "no line or paragraph separator (U+2028, U+2029)" in DAEMON_ID_RULE


@pytest.mark.parametrize(
    "text",
    ["gpu-7", "gpu 7", "dæmon-7", "主机", "gpu\n7", "gpu\x1b", "gpu\u0085", "gpu\u2028", "gpu\ufffd"],
)
def test_daemon_id_and_host_agree_on_control_characters_and_separators(text: str) -> None:
    """What differs between them is U+FFFD alone (a daemon id is a URL segment, where it stands
    for bytes that are not UTF-8); on control characters and separators they say the same."""
    bad = first_control_or_separator(text)
    assert (host_problem(text) is None) == (bad is None)
    assert (daemon_id_problem(text) is None) == (bad is None and "\ufffd" not in text)


def test_text_refused_on_the_quick_path_is_refused_by_the_full_parse_too() -> None:
    """The quick check takes printable ASCII only, so it can never take what the rule refuses."""
    sent: dict[str, Any] = {**WIRE, "phase": "a\x1b", "currentActivity": "b"}
    with pytest.raises(InvalidHeartbeat) as full:
        parse_heartbeat(sent)
    with pytest.raises(InvalidHeartbeat) as quick:
        wire_heartbeat(sent)
    assert (quick.value.field, quick.value.problem) == (full.value.field, full.value.problem)
    assert uuid.UUID(wire_heartbeat({**WIRE, "currentActivity": "ok"})["taskId"]) == TASK
