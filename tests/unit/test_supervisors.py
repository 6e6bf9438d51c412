"""The pure supervisor rules: parsing, ordering, fencing, liveness; and the batching machinery."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from app.contract_rows import refuse_if_closed_status
from app.daemon_commands import check_daemon_id
from app.domain.daemon_ids import DAEMON_ID_RULE, daemon_id_problem
from app.domain.errors import IncarnationNotIssued, ValidationFailed
from app.domain.fencing import FenceReason, fence_reason
from app.domain.heartbeat_plan import Outcome, closed_contract_refusal, plan_batch
from app.domain.heartbeat_wire import heartbeat_wire, wire_heartbeat
from app.domain.heartbeats import (
    Heartbeat,
    InvalidHeartbeat,
    derive_heartbeat_id,
    derived_id_text,
    parse_heartbeat,
)
from app.domain.incarnations import (
    FIRST_INCARNATION,
    MAX_INCARNATION,
    incarnation_after_death,
    next_incarnation,
    starts_supervisor,
)
from app.domain.lifecycle import Status
from app.domain.liveness import activity_bump_before, declare_dead, is_dead
from app.domain.supervisors import SupervisorRecord, SupervisorState

T0 = datetime(2026, 1, 31, 10, 30, tzinfo=UTC)
CID, TASK = uuid.uuid4(), uuid.uuid4()


def raw(**over: Any) -> dict[str, Any]:
    base = {
        "taskId": str(TASK),
        "contractId": str(CID),
        "state": "working",
        "phase": "execute",
        "currentActivity": "Implementing user authentication",
        "progress": 45,
        "pendingTaskIds": [str(uuid.uuid4())],
        "timestamp": "2026-01-31T10:30:00Z",
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def beat(seconds: float, state: str = "working", **over: Any) -> Heartbeat:
    return parse_heartbeat(raw(state=state, timestamp=(T0 + timedelta(seconds=seconds)).isoformat(), **over))


def test_every_state_of_the_seed_is_recognised_and_round_trips() -> None:
    assert [s.value for s in SupervisorState] == [
        "initializing", "idle", "working", "waiting_for_user", "waiting_for_tasks",
        "blocked", "completed", "failed", "interrupted",
    ]  # fmt: skip
    for state in SupervisorState:
        hb = parse_heartbeat(raw(state=state.value))
        assert parse_heartbeat(hb.to_json()) == hb


def test_a_heartbeat_without_an_id_gets_one_from_its_task_and_timestamp() -> None:
    first, again = parse_heartbeat(raw()), parse_heartbeat(raw())
    assert first.id == again.id == derive_heartbeat_id(TASK, T0)
    assert parse_heartbeat(raw(timestamp="2026-01-31T10:30:01Z")).id != first.id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("progress", 101),
        ("progress", True),
        ("state", "sleeping"),
        ("taskId", "nope"),
        ("timestamp", "2026-01-31T10:30:00"),  # no time zone
        ("timestamp", "1970-01-01T00:00:00Z"),
        ("phase", ""),
        ("phase", "a\x00b"),
        ("pendingTaskIds", ["x"]),
        ("incarnation", 0),
        ("currentActivity", "x" * 2001),
        ("bogus", 1),
    ],
)
def test_an_invalid_heartbeat_names_its_field(field: str, value: Any) -> None:
    with pytest.raises(InvalidHeartbeat) as exc:
        parse_heartbeat({**raw(), field: value})
    assert exc.value.field == field


WIRE = parse_heartbeat(raw(id=str(uuid.uuid4()), incarnation=2, daemonId="d-1", host="h-1")).to_json()


@pytest.mark.parametrize(
    "sent",
    [
        WIRE,
        {k: v for k, v in WIRE.items() if k not in ("currentActivity", "progress", "pendingTaskIds")},
        {**WIRE, "timestamp": "2026-01-31T10:30:00Z"},
        {**WIRE, "timestamp": "2026-01-31T12:30:00.123456+02:00"},
        {**WIRE, "timestamp": "2026-01-31T10:30:00+20:00"},
        {**WIRE, "taskId": WIRE["taskId"].upper()},
        {k: v for k, v in WIRE.items() if k != "id"},
        {**WIRE, "phase": "exécuter"},
        {**WIRE, "pendingTaskIds": None, "progress": None, "incarnation": None},
        {**WIRE, "timestamp": "2026-01-31T10:30:00"},
        {**WIRE, "timestamp": "2026-01-31T10:30:00+99:00"},
        {**WIRE, "timestamp": "1999-12-31T23:59:59Z"},
        {**WIRE, "progress": True},
        {**WIRE, "progress": 101},
        {**WIRE, "incarnation": 0},
        {**WIRE, "phase": "   "},
        {**WIRE, "host": ""},
        {**WIRE, "daemonId": "d\x00"},
        {**WIRE, "daemonId": "gpu\n7"},
        {**WIRE, "daemonId": "gpu\x01"},
        {**WIRE, "daemonId": "\tgpu"},
        {**WIRE, "daemonId": "gpu\x7f"},
        {**WIRE, "daemonId": "gpu\u0085"},
        {**WIRE, "daemonId": "gpu\ufffd"},
        {**WIRE, "daemonId": "gpu\ud800"},
        {**WIRE, "daemonId": " "},
        {**WIRE, "daemonId": "x" * 201},
        {**WIRE, "daemonId": 7},
        {**WIRE, "daemonId": "dæmon 7/a"},
        {**WIRE, "daemonId": "x" * 200},
        {**WIRE, "host": "gpu\n7"},
        {**WIRE, "currentActivity": "x" * 2001},
        {**WIRE, "pendingTaskIds": [WIRE["taskId"], "x"]},
        {**WIRE, "state": "sleeping"},
        {**WIRE, "timestamp": "9999-12-31T23:59:59.999999-23:59"},
        {**WIRE, "timestamp": "0001-01-01T00:00:00+14:00"},
        {**WIRE, "timestamp": "0001-01-01T00:00:00+00:01"},
        {**WIRE, "timestamp": "0001-01-01T00:00:00Z"},
        {**WIRE, "timestamp": "0001-01-01T00:01:00+00:01"},
        {**WIRE, "timestamp": "9999-12-31T23:00:00-02:00"},
        {**WIRE, "state": {}},
        {**WIRE, "state": ["working"]},
        {**WIRE, "bogus": 1},
        {**WIRE, "id": "nope"},
        {**WIRE, "id": WIRE["id"][:-1], "taskId": WIRE["taskId"] + "0"},  # 35 + 37 characters
        {**WIRE, "contractId": WIRE["contractId"].upper()},
        {**WIRE, "pendingTaskIds": ""},
        {**WIRE, "pendingTaskIds": {}},
        [WIRE],
        # Offsets past 23:59, ids in another spelling than the UUID's, text off one line.
        {**WIRE, "timestamp": "2026-01-31T10:30:00+00:90"},
        {**WIRE, "timestamp": "2026-01-31T10:30:00+24:00"},
        {**WIRE, "timestamp": "2026-01-31T10:30:00+23:59"},
        {**WIRE, "taskId": "\uff10" * 32},
        {**WIRE, "taskId": "\uff10" * 8 + WIRE["taskId"][8:]},
        {**WIRE, "contractId": WIRE["contractId"].replace("-", "")},
        {**WIRE, "contractId": WIRE["contractId"].replace("-", "").upper()},
        {
            **WIRE,
            "contractId": "-".join(
                [WIRE["contractId"].replace("-", "")[:4], WIRE["contractId"].replace("-", "")[4:]]
            ),
        },
        {**WIRE, "id": "{" + WIRE["id"] + "}"},
        {**WIRE, "id": "urn:uuid:" + WIRE["id"]},
        {**WIRE, "pendingTaskIds": [WIRE["taskId"].upper()]},
        {**WIRE, "pendingTaskIds": [" " + WIRE["taskId"].replace("-", "")[1:]]},
        {**WIRE, "phase": "exec\nute"},
        {**WIRE, "phase": "exec\x07ute"},
        {**WIRE, "phase": "exec\u2028ute"},
        {**WIRE, "phase": "exécuter\u2029"},
        {**WIRE, "currentActivity": "line one\nline two"},
        {**WIRE, "currentActivity": "\x1b[2Jwiped"},
        {**WIRE, "currentActivity": "tab\there"},
        {**WIRE, "currentActivity": "café\u0085"},
        {**WIRE, "currentActivity": "a\u2028b"},
        {**WIRE, "currentActivity": "writing tests, 40% done (café)"},
        {**WIRE, "daemonId": "gpu\u20287"},
        {**WIRE, "daemonId": "gpu\u20297"},
    ],
)
def test_the_workers_quick_check_accepts_and_refuses_exactly_what_parsing_does(sent: Any) -> None:
    try:
        parsed = parse_heartbeat(sent)
    except InvalidHeartbeat as exc:
        with pytest.raises(InvalidHeartbeat) as quick:
            wire_heartbeat(sent)
        assert (quick.value.field, quick.value.problem) == (exc.field, exc.problem)
        return
    assert parse_heartbeat(wire_heartbeat(sent)) == parsed


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00+00:01",  # a minute before year 1 in UTC
        "0001-01-01T00:00:00+14:00",
        "0001-01-01T23:59:59.999999+23:59",
        "9999-12-31T23:00:00-02:00",  # past the last instant in UTC
    ],
)
def test_a_timestamp_its_offset_pushes_off_the_calendar_is_refused_like_any_out_of_range_one(
    stamp: str,
) -> None:
    """It was moved to the nearest bound: 0001-01-01T00:00:00+00:01 was stored as 2000-01-01,
    where 0001-01-01T00:00:00Z is refused. Every path now refuses both, in the same words."""
    refusals = []
    for check in (
        lambda: parse_heartbeat(raw(timestamp=stamp)),
        lambda: wire_heartbeat({**WIRE, "timestamp": stamp}),
        lambda: wire_heartbeat({k: v for k, v in WIRE.items() if k != "id"} | {"timestamp": stamp}),
        lambda: heartbeat_wire(**TYPED | {"timestamp": datetime.fromisoformat(stamp)}),
        lambda: heartbeat_wire(**TYPED | {"timestamp": stamp}),
    ):
        with pytest.raises(InvalidHeartbeat) as refused:
            check()
        refusals.append((refused.value.field, refused.value.problem))
    assert refusals == [("timestamp", "must lie between 2000 and 9000")] * 5


def test_what_our_senders_produce_takes_the_quick_path_unchanged() -> None:
    assert wire_heartbeat(WIRE) is WIRE
    sent = parse_heartbeat(raw()).to_json()
    assert wire_heartbeat(sent) is sent
    # Another offset is normalized to UTC (PostgreSQL refuses some Python accepts, e.g. +20:00).
    assert wire_heartbeat({**WIRE, "timestamp": "2026-01-31T10:30:00+20:00"})["timestamp"].endswith("+00:00")


@pytest.mark.parametrize(
    "stamp",
    [
        T0,
        T0 + timedelta(microseconds=7),
        datetime(2026, 1, 31, 12, 30, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    ],
)
def test_the_derived_id_as_text_is_the_derived_uuid(stamp: datetime) -> None:
    utc = stamp.astimezone(UTC).isoformat()
    assert derived_id_text(str(TASK), utc) == str(derive_heartbeat_id(TASK, stamp))


def spelled_out(**values: Any) -> dict[str, Any]:
    """What the API module sent before it built the wire form itself: every value as text."""
    task, stamp, given = values["task_id"], values["timestamp"], values.get("heartbeat_id")
    sent = {
        "taskId": str(task),
        "contractId": str(values["contract_id"]),
        "state": values["state"],
        "phase": values["phase"],
        "currentActivity": values.get("current_activity", ""),
        "progress": values.get("progress", 0),
        "pendingTaskIds": [str(t) for t in values.get("pending_task_ids", ())],
        "timestamp": stamp.isoformat() if isinstance(stamp, datetime) else stamp,
    }
    if given is None and isinstance(task, uuid.UUID) and isinstance(stamp, datetime) and stamp.tzinfo:
        with contextlib.suppress(OverflowError):  # off the calendar in UTC: refused for its timestamp
            given = derive_heartbeat_id(task, stamp)
    optional = {"id": given, "incarnation": values.get("incarnation"), "daemonId": values.get("daemon_id"),
                "host": values.get("host")}  # fmt: skip
    sent.update({k: str(v) if isinstance(v, uuid.UUID) else v for k, v in optional.items() if v is not None})
    return sent


TYPED: dict[str, Any] = {"task_id": TASK, "contract_id": CID, "state": "working", "phase": "execute",
                         "timestamp": T0}  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [
        TYPED,
        {
            **TYPED,
            "current_activity": "writing tests",
            "progress": 40,
            "pending_task_ids": [uuid.uuid4()],
            "incarnation": 3,
            "daemon_id": "d-7",
            "host": "gpu-7",
            "heartbeat_id": uuid.uuid4(),
        },
        {**TYPED, "timestamp": T0 + timedelta(microseconds=120)},
        {**TYPED, "timestamp": datetime(2026, 1, 31, 12, 30, tzinfo=timezone(timedelta(hours=2)))},
        {**TYPED, "timestamp": datetime(2026, 1, 31, 10, 30, tzinfo=timezone(timedelta(0), "Z"))},
        {**TYPED, "timestamp": datetime(2026, 1, 31, 10, 30)},
        {**TYPED, "timestamp": datetime(1999, 12, 31, 23, 59, tzinfo=UTC)},
        {**TYPED, "timestamp": datetime(1, 1, 1, tzinfo=timezone(timedelta(minutes=1)))},
        {**TYPED, "timestamp": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))},
        {**TYPED, "timestamp": datetime(1, 1, 1, tzinfo=UTC)},
        {**TYPED, "timestamp": "0001-01-01T00:00:00+00:01"},
        {**TYPED, "timestamp": "2026-01-31T10:30:00Z"},
        {**TYPED, "task_id": str(TASK).upper()},
        {**TYPED, "task_id": "nope"},
        {**TYPED, "contract_id": str(CID)},
        {**TYPED, "state": SupervisorState.IDLE},
        {**TYPED, "state": "sleeping"},
        {**TYPED, "phase": "exécuter"},
        {**TYPED, "phase": "  "},
        {**TYPED, "phase": "x" * 101},
        {**TYPED, "current_activity": "a\x00b"},
        {**TYPED, "current_activity": "x" * 2001},
        {**TYPED, "progress": True},
        {**TYPED, "progress": 101},
        {**TYPED, "progress": 40.0},
        {**TYPED, "incarnation": 0},
        {**TYPED, "incarnation": 2**31},
        {**TYPED, "pending_task_ids": [str(TASK)]},
        {**TYPED, "pending_task_ids": ["x"]},
        {**TYPED, "pending_task_ids": [uuid.uuid4() for _ in range(1001)]},
        {**TYPED, "daemon_id": ""},
        {**TYPED, "daemon_id": "gpu\n7"},
        {**TYPED, "daemon_id": "gpu\x01"},
        {**TYPED, "daemon_id": "gpu\x7f"},
        {**TYPED, "daemon_id": "gpu\ufffd"},
        {**TYPED, "daemon_id": "dæmon-7"},
        {**TYPED, "host": "h\x00"},
        {**TYPED, "host": "ünï"},
        {**TYPED, "heartbeat_id": str(uuid.uuid4())},
        {**TYPED, "task_id": "\uff10" * 32},
        {**TYPED, "task_id": TASK.hex},
        {**TYPED, "phase": "exec\nute"},
        {**TYPED, "phase": "exec\u2028ute"},
        {**TYPED, "current_activity": "line one\nline two"},
        {**TYPED, "current_activity": "\x1b[31mred"},
        {**TYPED, "current_activity": "naïve\u2029"},
        {**TYPED, "daemon_id": "gpu\u20287"},
        {**TYPED, "pending_task_ids": ["{" + str(TASK) + "}"]},
    ],
)
def test_the_api_modules_values_are_checked_as_their_text_would_be(values: dict[str, Any]) -> None:
    try:
        expected = wire_heartbeat(spelled_out(**values))
    except InvalidHeartbeat as exc:
        with pytest.raises(InvalidHeartbeat) as quick:
            heartbeat_wire(**values)
        assert (quick.value.field, quick.value.problem) == (exc.field, exc.problem)
        return
    assert heartbeat_wire(**values) == expected


@pytest.mark.parametrize(
    ("daemon_id", "found"),
    [
        ("gpu\n7", "U+000A"),
        ("gpu\r\n", "U+000D"),
        ("\x01gpu", "U+0001"),
        ("gpu\x1b[2J", "U+001B"),
        ("gpu\x7f", "U+007F"),
        ("gpu\u0085", "U+0085"),
        ("gpu\x00", "U+0000"),
    ],
)
def test_a_daemon_id_with_a_control_character_is_refused_by_every_heartbeat_path_as_the_feed_refuses_it(
    daemon_id: str, found: str
) -> None:
    """The heartbeat once stored such an id, and the feed then refused it (400): the daemon was
    listed with commands it could never read. Every path now names the field and the rule."""
    with pytest.raises(ValidationFailed) as feed:
        check_daemon_id(daemon_id)
    assert feed.value.details["field"] == "daemonId"
    problem = f"must not contain NUL or control characters (found {found}): {DAEMON_ID_RULE}"
    assert daemon_id_problem(daemon_id) == problem
    assert feed.value.message == f"daemonId {problem}."
    refusals = []
    for parse in (
        lambda: parse_heartbeat(raw(daemonId=daemon_id)),
        lambda: wire_heartbeat(WIRE | {"daemonId": daemon_id}),
        lambda: heartbeat_wire(**TYPED, daemon_id=daemon_id),
    ):
        with pytest.raises(InvalidHeartbeat) as refused:
            parse()
        refusals.append((refused.value.field, refused.value.problem))
    assert refusals == [("daemonId", problem)] * 3
    assert "1 to 200 characters" in problem and "control character" in problem


@pytest.mark.parametrize(
    "daemon_id",
    [
        "d-7",
        "gpu 7",
        "a/b",
        "dæmon-7",
        "x" * 200,
        "x" * 201,
        " ",
        "",
        "gpu\ufffd",
        "gpu\ud800",
        "gpu\t1",
        "gpu\u20287",
        "gpu\u20297",
    ],
)
def test_heartbeats_and_the_command_feed_take_and_refuse_the_same_daemon_ids(daemon_id: str) -> None:
    try:
        check_daemon_id(daemon_id)
    except ValidationFailed as feed:
        with pytest.raises(InvalidHeartbeat) as heartbeat:
            parse_heartbeat(raw(daemonId=daemon_id))
        assert heartbeat.value.field == "daemonId"
        assert feed.message == f"daemonId {heartbeat.value.problem}."
        return
    assert parse_heartbeat(raw(daemonId=daemon_id)).daemon_id == daemon_id
    assert heartbeat_wire(**TYPED, daemon_id=daemon_id)["daemonId"] == daemon_id


def record(**over: Any) -> SupervisorRecord:
    base: dict[str, Any] = {
        "task_id": TASK,
        "contract_id": CID,
        "incarnation": 1,
        "state": SupervisorState.WORKING,
        "phase": "execute",
        "current_activity": "",
        "progress": 0,
        "pending_task_ids": (),
        "heartbeat_id": None,
        "sent_at": T0,
        "last_received_at": T0,
        "alive": True,
        "dead_at": None,
        "daemon_id": None,
        "host": None,
        "version": 1,
    }
    base.update(over)
    return SupervisorRecord(**base)


def test_the_newest_state_wins_whatever_the_order_and_repeats_are_duplicates() -> None:
    batch = [beat(3, "idle"), beat(1), beat(2, "blocked"), beat(3, "idle")]
    plan = plan_batch(batch, {}, T0)
    assert plan.outcomes == [Outcome.APPLIED, Outcome.STALE, Outcome.STALE, Outcome.DUPLICATE]
    (_, after) = plan.writes[TASK]
    assert after.state is SupervisorState.IDLE and after.sent_at == T0 + timedelta(seconds=3)
    assert [(c.old_state, c.new_state) for c in plan.changes] == [(None, SupervisorState.IDLE)]
    assert len(plan.rows_to_store()) == 3


def test_an_older_heartbeat_never_overwrites_and_no_change_means_no_event() -> None:
    current = {TASK: record(sent_at=T0 + timedelta(seconds=10))}
    plan = plan_batch([beat(5, "idle")], current, T0 + timedelta(seconds=30))
    assert plan.outcomes == [Outcome.STALE]
    _, after = plan.writes[TASK]
    assert after.state is SupervisorState.WORKING
    assert after.last_received_at == T0 + timedelta(seconds=30)  # still proves liveness
    assert plan.changes == []


def test_a_newer_incarnation_wins_whatever_its_clock_says() -> None:
    # The old daemon's clock ran ahead; the server issued incarnation 2 (a restoration or a
    # restart clears the stored timestamp with the bump), and its first heartbeat wins.
    ahead = record(sent_at=T0 + timedelta(hours=1))
    issued = {TASK: replace(ahead, incarnation=2, sent_at=None)}
    plan = plan_batch([beat(0, "idle", incarnation=2)], issued, T0)
    assert plan.outcomes == [Outcome.APPLIED] and plan.writes[TASK][1].incarnation == 2
    assert plan_batch([beat(7200, "failed", incarnation=1)], {TASK: plan.writes[TASK][1]}, T0).outcomes == [
        Outcome.FENCED
    ]


def test_an_incarnation_the_server_never_issued_is_fenced() -> None:
    current = {TASK: record(incarnation=2)}
    plan = plan_batch([beat(5, "failed", incarnation=50)], current, T0)
    assert plan.outcomes == [Outcome.FENCED] and TASK not in plan.writes
    assert [(f.sent_incarnation, f.current_incarnation, f.reason) for f in plan.fenced] == [
        (50, 2, FenceReason.NOT_ISSUED)
    ]


def test_an_unnamed_heartbeat_counts_only_while_the_first_incarnation_is_in_force() -> None:
    assert plan_batch([beat(5, "idle")], {TASK: record(incarnation=1)}, T0).outcomes == [Outcome.APPLIED]
    fenced = plan_batch([beat(5, "idle")], {TASK: record(incarnation=2)}, T0)
    assert fenced.outcomes == [Outcome.FENCED]
    # It named none: the notice says so (None), not an incarnation it never sent.
    assert [(f.sent_incarnation, f.current_incarnation, f.reason) for f in fenced.fenced] == [
        (None, 2, FenceReason.NO_INCARNATION)
    ]


def test_a_fence_reason_is_what_the_heartbeat_named_against_the_incarnation_in_force() -> None:
    assert fence_reason(None, 3) is FenceReason.NO_INCARNATION  # after a restoration's claim
    assert fence_reason(50, 3) is FenceReason.NOT_ISSUED  # above the one in force: never issued
    assert fence_reason(2, 3) is FenceReason.REPLACED  # older: declared dead or replaced
    assert fence_reason(1, 3) is FenceReason.REPLACED
    with pytest.raises(ValueError, match="incarnation 3 is the one in force"):
        fence_reason(3, 3)  # the incarnation in force is never fenced


def test_each_fence_reason_tells_the_daemon_what_it_sent_what_is_in_force_and_what_to_do() -> None:
    unnamed = FenceReason.NO_INCARNATION.explain(None, 3)
    assert "named no incarnation" in unnamed and "incarnation 3 is in force" in unnamed
    assert "sends it (currentIncarnation) with every heartbeat" in unnamed and "replaced by" not in unnamed
    never = FenceReason.NOT_ISSUED.explain(50, 3)
    assert "incarnation 50 of this supervisor was never issued" in never and "incarnation 3" in never
    assert "declared dead or replaced" not in never and "restores" in never
    older = FenceReason.REPLACED.explain(2, 3)
    assert older.startswith("incarnation 2 of this supervisor was declared dead or replaced by incarnation 3")
    assert "A restart must send heartbeats with currentIncarnation" in older


def test_fencing_an_older_incarnation_and_a_dead_supervisors_unnamed_heartbeat() -> None:
    alive2 = {TASK: record(incarnation=2)}
    plan = plan_batch([beat(100, incarnation=1)], alive2, T0)
    assert plan.outcomes == [Outcome.FENCED] and TASK not in plan.writes
    assert [(f.sent_incarnation, f.current_incarnation, f.reason) for f in plan.fenced] == [
        (1, 2, FenceReason.REPLACED)
    ]
    dead, changes = declare_dead(record(), T0 + timedelta(minutes=5))
    assert (dead.incarnation, dead.alive, dead.state, dead.sent_at) == (
        2,
        False,
        SupervisorState.INTERRUPTED,
        None,
    )
    assert [(c.old_state, c.new_state) for c in changes] == [
        (SupervisorState.WORKING, SupervisorState.INTERRUPTED)
    ]
    late = plan_batch([beat(400)], {TASK: dead}, T0 + timedelta(minutes=6))
    assert late.outcomes == [Outcome.FENCED] and late.writes == {}
    assert [(f.sent_incarnation, f.reason) for f in late.fenced] == [(None, FenceReason.NO_INCARNATION)]
    restart = plan_batch(
        [beat(-3600, "initializing", incarnation=2)], {TASK: dead}, T0 + timedelta(minutes=6)
    )
    assert restart.outcomes == [Outcome.APPLIED] and restart.writes[TASK][1].alive
    assert restart.changes[0].revived


@pytest.mark.parametrize("named", [2, 50, MAX_INCARNATION])
def test_a_first_heartbeat_naming_an_incarnation_never_issued_is_fenced_and_starts_nothing(
    named: int,
) -> None:
    """It once started the supervisor at that number: at MAX_INCARNATION the next restart issued
    2147483648, which no heartbeat, save or column could name. The first incarnation is in force
    for a supervisor never stored, as it is for a save."""
    plan = plan_batch([beat(0, incarnation=named)], {}, T0)
    assert plan.outcomes == [Outcome.FENCED] and plan.writes == {} and plan.changes == []
    assert plan.rows_to_store() == [(plan.heartbeats[0], True)]  # kept for the record, marked fenced
    assert [(f.sent_incarnation, f.current_incarnation, f.reason) for f in plan.fenced] == [
        (named, FIRST_INCARNATION, FenceReason.NOT_ISSUED)
    ]
    # Its daemon restores, or names the first incarnation (or none): that one starts it.
    for first in (FIRST_INCARNATION, None):
        started = plan_batch([beat(0, incarnation=named), beat(1, incarnation=first)], {}, T0)
        assert started.outcomes == [Outcome.FENCED, Outcome.APPLIED]
        assert started.writes[TASK][1].incarnation == FIRST_INCARNATION
    assert [starts_supervisor(n) for n in (None, 1, 2, MAX_INCARNATION)] == [True, True, False, False]


def test_the_server_issues_incarnations_one_above_the_one_in_force_and_none_beyond_the_limit() -> None:
    assert [next_incarnation(CID, TASK, n) for n in (0, 1, 7, MAX_INCARNATION - 1)] == [
        1, 2, 8, MAX_INCARNATION,
    ]  # fmt: skip
    with pytest.raises(IncarnationNotIssued) as refused:
        next_incarnation(CID, TASK, MAX_INCARNATION)
    assert refused.value.code == "INCARNATION_NOT_ISSUED"
    assert refused.value.details == {
        "contractId": str(CID),
        "taskId": str(TASK),
        "incarnation": MAX_INCARNATION + 1,
        "currentIncarnation": MAX_INCARNATION,
        "maxIncarnation": 2147483647,
    }
    message = refused.value.message
    assert f"cannot be issued incarnation {MAX_INCARNATION + 1}" in message
    assert "2147483647 is the highest incarnation there is" in message
    assert "new task id" in message  # what the operator can do
    # A death at the limit is still declared, without an incarnation past it.
    dead, _ = declare_dead(record(incarnation=MAX_INCARNATION), T0)
    assert (dead.incarnation, dead.alive) == (MAX_INCARNATION, False)
    assert incarnation_after_death(MAX_INCARNATION - 1) == MAX_INCARNATION


@pytest.mark.parametrize("status", [s.value for s in Status])
def test_a_heartbeat_is_refused_on_a_closed_contract_as_a_state_save_is(status: str) -> None:
    """Completed, failed and archived contracts take no state save, claim or restart, so no
    heartbeat either: the same code and words, naming contractId (the fronts and the worker)."""
    refusal = closed_contract_refusal(status)
    if Status(status) not in Status.terminal():
        assert refusal is None
        return
    assert refusal is not None and refusal.code == "VALIDATION_FAILED"
    assert (
        refusal.message == f"The contract is '{status}': no more supervisor heartbeats can be recorded on it."
    )
    assert refusal.details == {"missing": [], "status": status, "field": "contractId"}
    with pytest.raises(ValidationFailed) as save:
        refuse_if_closed_status(status, "supervisor state saves")
    assert save.value.message == refusal.message.replace("heartbeats", "state saves")


def test_liveness_is_judged_by_receive_time_only() -> None:
    timeout = timedelta(seconds=120)
    ahead = record(sent_at=T0 + timedelta(hours=1), last_received_at=T0)
    behind = record(sent_at=T0 - timedelta(hours=1), last_received_at=T0)
    for rec in (ahead, behind):
        assert not is_dead(rec, T0 + timedelta(seconds=119), timeout)
        assert is_dead(rec, T0 + timedelta(seconds=121), timeout)
    assert not is_dead(record(alive=False), T0 + timedelta(days=1), timeout)


def test_activity_moves_only_when_older_than_a_tenth_of_the_stale_threshold() -> None:
    assert activity_bump_before(T0, timedelta(minutes=30)) == T0 - timedelta(minutes=3)


def test_a_task_id_of_another_contract_is_refused() -> None:
    plan = plan_batch([beat(1)], {TASK: record(contract_id=uuid.uuid4())}, T0)
    assert plan.outcomes == [Outcome.REFUSED] and plan.rows_to_store() == []


# --- the batching machinery (no broker: a sender that records) -----------------------------


def test_the_buffer_flushes_every_n_and_after_t_and_keeps_what_the_broker_refused() -> None:
    from app.heartbeat_buffer import HeartbeatBuffer

    sent: list[dict[str, Any]] = []
    fail = threading.Event()

    def send(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        if fail.is_set():
            raise ConnectionError("broker down")
        sent.append(payload)
        return "id"

    buffer = HeartbeatBuffer(send, batch_size=3, flush_ms=20, max_buffered=5)
    principal = uuid.uuid4()
    for i in range(3):
        buffer.add(principal, {"n": i})
    assert len(sent) == 1 and len(sent[0]["groups"][0]["heartbeats"]) == 3  # every N
    buffer.add(principal, {"n": 3})
    threading.Event().wait(0.2)
    assert len(sent) == 2  # after T
    buffer.close()
    buffer = HeartbeatBuffer(send, batch_size=3, flush_ms=60_000, max_buffered=5)  # no timer in the way
    fail.set()
    for i in range(2):
        buffer.add(principal, {"n": 10 + i})
    with pytest.raises(ConnectionError):
        buffer.add(principal, {"n": 12})  # the third triggers a send, which fails: all kept
    for i in range(3):  # while the broker is down, every add past the batch size tries and fails
        with pytest.raises(ConnectionError):
            buffer.add(principal, {"n": 20 + i})
    assert len(buffer) == 5 and buffer.dropped == 1  # bounded: the oldest goes
    fail.clear()
    buffer.close()
    assert len(buffer) == 0 and buffer.sent == 5 and buffer.sent + buffer.dropped == 6


def test_the_group_commit_coalesces_concurrent_submissions_and_answers_after_the_send() -> None:
    from app.group_commit import GroupCommit

    flushed: list[list[int]] = []

    def flush(entries: list[int]) -> None:
        threading.Event().wait(0.01)
        flushed.append(entries)

    async def run() -> list[int]:
        group = GroupCommit(flush, linger_seconds=0.05, max_items=1000)

        async def one(n: int) -> int:
            await group.submit(n, 1)
            return len(flushed)

        return list(await asyncio.gather(*(one(n) for n in range(20))))

    done = asyncio.run(run())
    assert sorted(n for entries in flushed for n in entries) == list(range(20)) and len(flushed) < 20
    assert all(d >= 1 for d in done)  # nobody was answered before its group was sent


def test_a_full_group_leaves_at_once_and_the_next_submission_opens_another() -> None:
    from app.group_commit import GroupCommit

    flushed: list[list[str]] = []

    async def run() -> float:
        group = GroupCommit(flushed.append, linger_seconds=30, max_items=3)
        started = time.monotonic()
        await asyncio.gather(group.submit("a", 2), group.submit("b", 1))  # full: no 30 s wait
        await asyncio.wait_for(asyncio.gather(group.submit("c", 3)), 5)
        return time.monotonic() - started

    assert asyncio.run(run()) < 5
    assert flushed == [["a", "b"], ["c"]]


def test_every_member_of_a_group_whose_send_fails_gets_the_error_and_the_next_group_is_sent() -> None:
    from app.group_commit import GroupCommit

    sent: list[list[str]] = []
    down = [True]

    def flush(entries: list[str]) -> None:
        if down[0]:
            raise ConnectionError("broker down")
        sent.append(entries)

    async def run() -> list[BaseException | None]:
        group = GroupCommit(flush, linger_seconds=0.02, max_items=100)
        outcomes = await asyncio.gather(group.submit("a", 1), group.submit("b", 1), return_exceptions=True)
        down[0] = False
        await group.submit("c", 1)
        return list(outcomes)

    outcomes = asyncio.run(run())
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    assert sent == [["c"]]


def test_a_member_cancelled_while_it_waits_does_not_stop_its_groups_send() -> None:
    """A client that goes away mid-wait (its request cancelled) leaves the others answered."""
    from app.group_commit import GroupCommit

    sent: list[list[str]] = []

    async def run() -> None:
        group = GroupCommit(sent.append, linger_seconds=0.05, max_items=100)
        first = asyncio.ensure_future(group.submit("a", 1))
        second = asyncio.ensure_future(group.submit("b", 1))
        await asyncio.sleep(0.01)
        first.cancel()
        await asyncio.wait_for(second, 5)

    asyncio.run(run())
    assert sent == [["a", "b"]]
