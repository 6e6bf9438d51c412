"""Each daemon's command queue and its HTTP feed, end to end through a real worker.

A command that names a daemon travels on that daemon's own durable queue, which is its owner's
(`daemon.commands.<owner token>.<daemonId>`, answered by `GET /api/v1/daemons/{daemonId}/queue`)
and is listed in its feed (`GET /api/v1/daemons/{daemonId}/commands`); a command that names none
goes to the owner's own `daemon.commands.<owner token>`. The daemon is the one the command names,
else the one whose heartbeats last spoke for the supervisor concerned. Two owners may use the
same daemon id: neither ever receives the other's commands. Queues are read here the way a
daemon reads them (`helpers.commands_received`).
"""

from __future__ import annotations

import threading
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from app.api import ContractsAPI
from app.auth import Role, create_token
from app.broker import DAEMON_EXCHANGE, daemon_queue, daemon_queue_key, owner_queue_token, send_task
from app.daemon_commands import FEED_PAGE_BYTES, MAX_FEED, queue_command
from app.db import get_engine, migrate, unit_of_work
from app.domain.questions import MAX_FREE_TEXT_ANSWER, MAX_QUESTION
from app.http import create_app
from app.models import Supervisor, utcnow
from app.questions import ANSWER_COMMAND
from tests.integration.helpers import commands_received
from tests.integration.worker_processes import WorkerProcess, start_worker, wait_for

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient` is deprecated")
    from starlette.testclient import TestClient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    proc = start_worker(tmp_path_factory.mktemp("daemon-commands"), queues="contracts,heartbeats,sweeps")
    proc.wait_ready()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as c:
        yield c


def token_for(owner: str, role: str) -> str:
    with unit_of_work() as uow:
        return create_token(uow.session, owner, Role(role))


def feed(client: TestClient, token: str, daemon_id: str, **query: Any) -> Any:
    path = f"/api/v1/daemons/{urllib.parse.quote(daemon_id, safe='')}/commands"
    resp = client.get(path, params=query, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def feed_of(client: TestClient, token: str, daemon_id: str, count: int, **query: Any) -> Any:
    """The feed once it lists `count` commands: it holds a command back while any older
    transaction on the database server is still running (the commit horizon)."""
    return wait_for(
        lambda: (page := feed(client, token, daemon_id, **query)) and len(page["commands"]) >= count and page,
        what=f"{count} commands in {daemon_id}'s feed",
    )


def daemon_heard(task: uuid.UUID, daemon_id: str) -> bool:
    with unit_of_work() as uow:
        row = uow.session.get(Supervisor, task)
        return row is not None and row.daemon_id == daemon_id


def supervisor_on(
    api: ContractsAPI, daemon_id: str, *, restored: bool = False
) -> tuple[uuid.UUID, uuid.UUID]:
    """A contract whose supervisor's heartbeats name `daemon_id`: (contract, supervisor task).
    `restored`: its daemon then claimed it (a restoration), so incarnation 2 is in force."""
    cid = api.create_contract("daemon commands", "simple").id
    task = uuid.uuid4()
    api.send_heartbeat(cid, task, "working", "plan", daemon_id=daemon_id, host="h")
    api.flush()
    wait_for(lambda: daemon_heard(task, daemon_id), what=f"supervisor heard on {daemon_id}")
    if restored:
        claimed = api.restore_supervisor(cid, task, daemon_id=daemon_id, host="h")
        assert (claimed.claimed, claimed.incarnation) == (True, 2)
    return cid, task


def fence(api: ContractsAPI, cid: uuid.UUID, task: uuid.UUID) -> None:
    """A heartbeat of an older incarnation, naming no daemon: the service tells the daemon that
    runs the supervisor (`supervisor_fenced`), which it finds from the supervisor's heartbeats."""
    api.send_heartbeat(cid, task, "working", "plan", incarnation=1)
    api.flush()


def of_contract(commands: list[dict[str, Any]], cid: uuid.UUID) -> list[dict[str, Any]]:
    return [c for c in commands if c["contractId"] == str(cid)]


# --- the queue a daemon's id becomes ----------------------------------------------------------


def test_a_daemon_id_becomes_its_queue_name_only_when_it_is_safe_under_its_owners_token() -> None:
    owner = owner_queue_token("alice")
    assert owner.startswith("o") and len(owner) == 33 and owner[1:].isalnum()
    assert owner_queue_token("alice") != owner_queue_token("bob")
    assert owner_queue_token("a.b") != owner_queue_token("a") and "." not in owner_queue_token("a.b")
    assert daemon_queue_key("gpu-7.eu:a@b_c") == "gpu-7.eu:a@b_c"
    queue = daemon_queue("alice", "gpu-7")
    assert (queue.name, queue.routing_key, queue.durable) == (
        f"daemon.commands.{owner}.gpu-7",
        f"daemon.{owner}.gpu-7",
        True,
    )
    assert queue.exchange.name == DAEMON_EXCHANGE.name
    mine = daemon_queue("alice", None)
    assert (mine.name, mine.routing_key) == (f"daemon.commands.{owner}", f"daemon.{owner}")
    assert daemon_queue("bob", "gpu-7").name != queue.name
    # Spaces, slashes, non-ASCII, kombu's binding separator: a digest.
    for unsafe in ("gpu 7", "a/b", "\u03b1", "x\x06\x16y", "~abc", "x" * 201):
        key = daemon_queue_key(unsafe)
        assert key.startswith("~") and len(key) == 33 and key[1:].isalnum(), unsafe
    assert daemon_queue_key("gpu 7") != daemon_queue_key("gpu 8")


# --- each daemon's queue and feed -------------------------------------------------------------


def test_a_command_for_a_supervisor_reaches_its_daemons_queue_and_feed_and_no_other(
    worker: WorkerProcess, client: TestClient, make_caller
) -> None:
    token, me = make_caller(role="supervisor")
    api = ContractsAPI(token)
    d, e = f"d-{uuid.uuid4().hex[:8]}", f"e-{uuid.uuid4().hex[:8]}"
    cid, task = supervisor_on(api, d, restored=True)
    supervisor_on(api, e)  # another live daemon of the same owner

    fence(api, cid, task)

    told = wait_for(
        lambda: of_contract(commands_received(d, owner=me.owner_id), cid), what=f"a command on {d}'s queue"
    )
    assert [c["command"] for c in told] == ["supervisor_fenced"]
    assert told[0]["payload"]["taskId"] == str(task) and told[0]["daemonId"] == d
    # What the fenced heartbeat named (1), what is in force (2), and why: an older incarnation.
    payload = told[0]["payload"]
    assert (payload["fencedIncarnation"], payload["currentIncarnation"], payload["reasonCode"]) == (
        1,
        2,
        "replaced",
    )
    assert payload["reason"].startswith("incarnation 1 of this supervisor was declared dead or replaced")
    assert of_contract(commands_received(e, owner=me.owner_id), cid) == []
    assert of_contract(commands_received(None, owner=me.owner_id), cid) == []

    mine = feed_of(client, token, d, 1)
    assert mine["daemonId"] == d
    assert [(c["commandId"], c["command"]) for c in mine["commands"]] == [
        (told[0]["commandId"], "supervisor_fenced")
    ]
    assert mine["nextAfter"] == told[0]["commandId"]
    assert of_contract(feed(client, token, e)["commands"], cid) == []
    assert feed(client, token, d, after=mine["nextAfter"])["commands"] == []
    # The API module reads the same feed.
    assert [c.command_id for c in api.daemon_commands(d).commands] == [told[0]["commandId"]]


def test_a_command_that_names_no_daemon_goes_to_its_owners_own_queue(
    worker: WorkerProcess, make_caller
) -> None:
    token, me = make_caller(role="supervisor")
    _, other = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("no daemon yet", "simple").id
    with unit_of_work(send_task) as uow:
        command_id = queue_command(uow, cid, "restart_supervisor", {"reason": "test"}, utcnow()).id

    mine = wait_for(
        lambda: of_contract(commands_received(None, owner=me.owner_id), cid), what="the owner's queue"
    )
    assert [(c["commandId"], c["daemonId"]) for c in mine] == [(command_id, None)]
    assert commands_received(None, owner=other.owner_id) == []


def test_unsafe_daemon_ids_get_a_queue_of_their_digest_and_a_feed_by_their_own_name(
    worker: WorkerProcess, client: TestClient, make_caller
) -> None:
    token, me = make_caller(role="supervisor")
    api = ContractsAPI(token)
    for daemon_id in (f"gpu 7/\u03b1 {uuid.uuid4().hex[:6]}", "commands"):
        cid, task = supervisor_on(api, daemon_id, restored=True)
        fence(api, cid, task)
        told = wait_for(
            lambda d=daemon_id, c=cid: of_contract(commands_received(d, owner=me.owner_id), c),
            what=f"{daemon_id!r}'s queue",
        )
        assert told[0]["command"] == "supervisor_fenced" and told[0]["daemonId"] == daemon_id
        assert of_contract(commands_received(None, owner=me.owner_id), cid) == []
        listed = feed_of(client, token, daemon_id, 1)["commands"]
        assert [c["commandId"] for c in of_contract(listed, cid)] == [told[0]["commandId"]]


def test_the_feed_is_owner_scoped(worker: WorkerProcess, client: TestClient) -> None:
    """Two owners' daemons may share an id: each owner reads only its own contracts' commands,
    a stranger reads none, an admin reads all."""
    daemon_id = f"shared-{uuid.uuid4().hex[:8]}"
    owners = [f"owner-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    sent: dict[str, int] = {}
    for owner in owners:
        api = ContractsAPI(token_for(owner, "supervisor"))
        cid = api.create_contract("scoped", "simple").id
        with unit_of_work(send_task) as uow:
            sent[owner] = queue_command(uow, cid, "restart_supervisor", {}, utcnow(), daemon_id=daemon_id).id

    for owner in owners:
        for role in ("user", "supervisor"):
            listed = feed_of(client, token_for(owner, role), daemon_id, 1)["commands"]
            assert [c["commandId"] for c in listed] == [sent[owner]], (owner, role)
    stranger = feed(client, token_for(f"stranger-{uuid.uuid4().hex[:8]}", "supervisor"), daemon_id)
    assert stranger == {"daemonId": daemon_id, "commands": [], "nextAfter": 0, "truncated": False}
    admin = feed_of(client, token_for("operators", "admin"), daemon_id, 2)["commands"]
    assert sorted(c["commandId"] for c in admin) == sorted(sent.values())


def test_two_owners_using_the_same_daemon_id_never_see_each_others_commands_on_the_broker(
    worker: WorkerProcess, client: TestClient
) -> None:
    """Daemon ids are chosen by clients: each owner's daemon of that id reads its own queue
    (as `GET /daemons/{id}/queue` names it), which carries its owner's commands only, named or
    not."""
    daemon_id = f"gpu-{uuid.uuid4().hex[:8]}"
    owners = [f"owner-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    sent: dict[str, list[int]] = {}
    for owner in owners:
        api = ContractsAPI(token_for(owner, "supervisor"))
        cid = api.create_contract("same daemon id", "simple").id
        with unit_of_work(send_task) as uow:
            sent[owner] = [
                queue_command(
                    uow, cid, "remove_worktree", {"path": f"/{owner}"}, utcnow(), daemon_id=daemon_id
                ).id,
                queue_command(uow, cid, "restart_supervisor", {}, utcnow()).id,  # names no daemon
            ]

    for owner in owners:
        token = token_for(owner, "supervisor")
        answer = client.get(
            f"/api/v1/daemons/{daemon_id}/queue", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 200, answer.text
        where = answer.json()
        assert where == ContractsAPI(token).daemon_queue(daemon_id).model_dump(mode="json", by_alias=True)
        assert where["queue"] == daemon_queue(owner, daemon_id).name
        assert where["ownerQueue"] == daemon_queue(owner, None).name
        assert where["exchange"] == DAEMON_EXCHANGE.name and where["ownerId"] == owner
        named = wait_for(lambda o=owner: commands_received(daemon_id, owner=o), what=f"{owner}'s daemon")
        unnamed = wait_for(lambda o=owner: commands_received(None, owner=o), what=f"{owner}'s own queue")
        assert [c["commandId"] for c in named] == sent[owner][:1]
        assert named[0]["payload"] == {"path": f"/{owner}"}
        assert [c["commandId"] for c in unnamed] == sent[owner][1:]
    assert daemon_queue(owners[0], daemon_id).name != daemon_queue(owners[1], daemon_id).name


def test_a_command_committed_late_is_delivered_after_never_skipped(client: TestClient, make_caller) -> None:
    """Ids are taken before COMMIT: a command whose transaction took the lower id and commits
    last is not skipped by a daemon reading `after=<the higher id>`, because the higher one is
    held back until the lower one's transaction is over."""
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("horizon", "simple").id
    daemon_id = f"h-{uuid.uuid4().hex[:8]}"

    def queue(uow: Any, name: str) -> int:
        return queue_command(uow, cid, name, {}, utcnow(), daemon_id=daemon_id).id

    with unit_of_work() as slow:
        first = queue(slow, "first")  # the lower id, its transaction still open
        with unit_of_work() as fast:
            second = queue(fast, "second")
        assert first < second
        assert feed(client, token, daemon_id)["commands"] == []  # "second" waits for "first"
    page = feed_of(client, token, daemon_id, 2)
    assert [c["commandId"] for c in page["commands"]] == [first, second]
    assert feed(client, token, daemon_id, after=page["nextAfter"])["commands"] == []
    # Paging: one at a time, in the same order.
    one = feed(client, token, daemon_id, limit=1)
    assert [c["commandId"] for c in one["commands"]] == [first] and one["nextAfter"] == first
    assert [c["commandId"] for c in feed(client, token, daemon_id, after=first)["commands"]] == [second]


def test_another_databases_open_transaction_does_not_hold_the_feed_back(
    client: TestClient, make_caller
) -> None:
    """A transaction of another database on the same server (another application, another test
    run) cannot write our commands: a command committed while it is open is in the feed at once."""
    from sqlalchemy import create_engine, text

    from tests.isolation import PG_ADMIN_URL

    token, _ = make_caller(role="supervisor")
    cid = ContractsAPI(token).create_contract("elsewhere", "simple").id
    daemon_id = f"x-{uuid.uuid4().hex[:8]}"
    elsewhere = create_engine(PG_ADMIN_URL)
    try:
        with elsewhere.connect() as other, other.begin():
            other.execute(text("SELECT pg_current_xact_id()"))  # an open transaction with an id
            with unit_of_work() as uow:
                command_id = queue_command(
                    uow, cid, "restart_supervisor", {}, utcnow(), daemon_id=daemon_id
                ).id
            listed = feed(client, token, daemon_id)["commands"]
    finally:
        elsewhere.dispose()
    assert [c["commandId"] for c in listed] == [command_id]


def test_a_long_poll_answers_with_the_command_that_arrives_while_it_waits(
    client: TestClient, make_caller
) -> None:
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("long poll", "simple").id
    daemon_id = f"lp-{uuid.uuid4().hex[:8]}"
    polling = threading.Event()
    answer: dict[str, Any] = {}

    def poll() -> None:
        polling.set()
        answer.update(feed(client, token, daemon_id, wait=20))

    reader = threading.Thread(target=poll)
    reader.start()
    polling.wait()
    with unit_of_work() as uow:
        command_id = queue_command(uow, cid, "sync_supervisor_state", {}, utcnow(), daemon_id=daemon_id).id
    reader.join(timeout=30)
    assert [c["commandId"] for c in answer["commands"]] == [command_id]
    assert answer["commands"][0]["contractId"] == str(cid)


def largest_answer(i: int) -> dict[str, Any]:
    """An `answer_question` payload of the largest size, in 4-byte UTF-8 characters: the question
    and a free-text answer, about 56 KB of JSON."""
    wide = "\U0001d11e"  # 𝄞, four bytes in UTF-8
    return {
        "questionId": str(uuid.uuid4()),
        "taskId": None,
        "question": f"{i:03d}" + wide * (MAX_QUESTION - 3),
        "answer": wide * MAX_FREE_TEXT_ANSWER,
        "answeredAt": utcnow().isoformat(),
    }


def queue_largest_answers(cid: uuid.UUID, daemon_id: str, engine: Any = None) -> list[int]:
    """Eighty of them (4.5 MB), ten to a transaction."""
    queued: list[int] = []
    for batch in range(8):
        with unit_of_work(engine=engine) as uow:
            queued += [
                queue_command(
                    uow, cid, ANSWER_COMMAND, largest_answer(10 * batch + i), utcnow(), daemon_id=daemon_id
                ).id
                for i in range(10)
            ]
    return queued


def test_a_page_of_the_feed_is_bounded_by_size_and_reads_on_exactly_where_it_stopped(
    client: TestClient, make_caller
) -> None:
    """Eighty answers of the largest size are 4.5 MB: a page of up to 1000 commands stops before
    the one that would pass 4 MiB and says `truncated`; its `nextAfter` reads on, none lost or
    repeated."""
    token, _ = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("large answers", "simple").id
    daemon_id = f"big-{uuid.uuid4().hex[:8]}"
    queued = queue_largest_answers(cid, daemon_id)
    path = f"/api/v1/daemons/{daemon_id}/commands"
    pages: list[Any] = []
    seen: list[int] = []
    after = 0
    while len(seen) < len(queued) and len(pages) < 10:
        # `wait`: a command held back behind another transaction (the commit horizon) is waited for.
        resp = client.get(
            path,
            params={"after": after, "limit": MAX_FEED, "wait": 10},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert resp.status_code == 200, resp.text[:500]
        assert len(resp.content) <= FEED_PAGE_BYTES
        page = resp.json()
        pages.append(page)
        seen += [c["commandId"] for c in page["commands"]]
        assert page["nextAfter"] == (page["commands"][-1]["commandId"] if page["commands"] else after)
        after = page["nextAfter"]
    assert seen == queued
    assert pages[0]["truncated"] and 0 < len(pages[0]["commands"]) < len(queued)
    assert not pages[-1]["truncated"]
    assert feed(client, token, daemon_id, after=after) == {
        "daemonId": daemon_id,
        "commands": [],
        "nextAfter": after,
        "truncated": False,
    }
    # The API module reads the same page.
    first = api.daemon_commands(daemon_id, limit=MAX_FEED)
    assert [c.command_id for c in first.commands] == [c["commandId"] for c in pages[0]["commands"]]
    assert first.truncated and first.next_after == pages[0]["nextAfter"]


def test_a_page_longer_than_one_read_has_every_command_once_in_order(client: TestClient, make_caller) -> None:
    """Rows are read a hundred at a time; a page of 1000 reads on where each read stopped."""
    token, _ = make_caller(role="supervisor")
    cid = ContractsAPI(token).create_contract("many commands", "simple").id
    daemon_id = f"many-{uuid.uuid4().hex[:8]}"
    queued: list[int] = []
    for batch in range(5):
        with unit_of_work() as uow:
            queued += [
                queue_command(
                    uow, cid, "sync_supervisor_state", {"n": 50 * batch + i}, utcnow(), daemon_id=daemon_id
                ).id
                for i in range(50)
            ]
    page = feed_of(client, token, daemon_id, len(queued), limit=MAX_FEED)
    assert [c["commandId"] for c in page["commands"]] == queued
    assert (page["nextAfter"], page["truncated"]) == (queued[-1], False)
    first = feed(client, token, daemon_id, limit=150)
    rest = feed(client, token, daemon_id, after=first["nextAfter"], limit=150)
    assert [c["commandId"] for c in first["commands"] + rest["commands"]] == queued
    assert (len(first["commands"]), first["truncated"], rest["nextAfter"]) == (150, False, queued[-1])


def test_a_page_of_the_feed_is_bounded_by_size_on_sqlite_too(tmp_path: Any) -> None:
    """The embedded default reads in command id order; the same bound and the same cursor."""
    url = f"sqlite:///{tmp_path / 'makima.db'}"
    migrate(url)
    engine = get_engine(url)
    try:
        with unit_of_work(engine=engine) as uow:
            token = create_token(uow.session, "sqlite-owner", Role.SUPERVISOR)
        api = ContractsAPI(token, engine=engine, sender=lambda *args, **kwargs: "")
        cid = api.create_contract("large answers", "simple").id
        daemon_id = "big-sqlite"
        queued = queue_largest_answers(cid, daemon_id, engine)
        pages = [api.daemon_commands(daemon_id, limit=MAX_FEED)]
        while pages[-1].commands:
            pages.append(api.daemon_commands(daemon_id, after=pages[-1].next_after, limit=MAX_FEED))
        with unit_of_work(engine=engine) as uow:  # and a page longer than one read
            more = [
                queue_command(uow, cid, "sync_supervisor_state", {"n": i}, utcnow(), daemon_id=daemon_id).id
                for i in range(150)
            ]
        longer = api.daemon_commands(daemon_id, after=queued[-1], limit=MAX_FEED)
    finally:
        engine.dispose()
    assert [c.command_id for p in pages for c in p.commands] == queued
    assert max(len(p.model_dump_json(by_alias=True).encode("utf-8")) for p in pages) <= FEED_PAGE_BYTES
    assert [p.truncated for p in pages] == [True, False, False]
    assert pages[-1].next_after == queued[-1]
    assert [c.command_id for c in longer.commands] == more and not longer.truncated


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": -1}, "after"),
        ({"wait": 26}, "wait"),
        ({"wait": "soon"}, "wait"),
    ],
)
def test_bad_feed_queries_are_refused_naming_the_field(
    client: TestClient, make_caller, query: dict[str, Any], field: str
) -> None:
    token, _ = make_caller(role="supervisor")
    resp = client.get(
        "/api/v1/daemons/d-1/commands", params=query, headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 422, resp.text
    assert [p["field"] for p in resp.json()["error"]["details"]["problems"]] == [field]


def test_a_daemon_id_the_heartbeats_would_refuse_is_refused_by_the_feed(
    client: TestClient, make_caller
) -> None:
    token, _ = make_caller(role="supervisor")
    headers = {"Authorization": f"Bearer {token}"}
    too_long = client.get(f"/api/v1/daemons/{'x' * 201}/commands", headers=headers)
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "INVALID_REQUEST"
    blank = client.get("/api/v1/daemons/%20%20/commands", headers=headers)
    assert blank.status_code == 400 and blank.json()["error"]["code"] == "VALIDATION_FAILED"
    blank_words = "daemonId must not be blank (only spaces or zero-width characters)."
    assert blank.json()["error"]["message"] == blank_words
    zero_width = client.get("/api/v1/daemons/%E2%80%8B/commands", headers=headers)  # U+200B alone
    assert zero_width.status_code == 400, zero_width.text
    assert zero_width.json()["error"]["message"] == blank.json()["error"]["message"]
    assert client.get("/api/v1/daemons/d-1/commands").status_code == 401


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("%ff%fe", "U+FFFD"),
        ("%ED%A0%80", "U+FFFD"),
        ("gpu%ff", "U+FFFD"),
        ("gpu%07", "control characters"),
        ("gpu%091", "control characters"),
        ("%20", "must not be blank"),
    ],
)
def test_a_daemon_id_that_is_not_clean_text_is_refused_not_merged_with_another(
    client: TestClient, make_caller, raw: str, words: str
) -> None:
    """Bytes that are not UTF-8 would decode to U+FFFD, so two different ids would read one feed."""
    token, _ = make_caller(role="supervisor")
    for what in ("commands", "queue"):
        resp = client.get(f"/api/v1/daemons/{raw}/{what}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code in (400, 422), resp.text
        error = resp.json()["error"]
        assert "daemonId" in error["message"] and words in error["message"], error


def control(found: str) -> str:
    return (
        f"daemonId must not contain NUL or control characters (found {found}): a daemon id is 1 to 200 "
        "characters, not blank, not '.' or '..', with no NUL or other control character (newline, tab, "
        "...), no line or paragraph separator (U+2028, U+2029), no bidirectional control (U+061C, "
        "U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and no U+FFFD."
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("gpu%0A7", control("U+000A")),
        ("gpu%0A", control("U+000A")),
        ("%0Agpu", control("U+000A")),
        ("gpu%0D%0A", control("U+000D")),
        ("a/b%0Ac", control("U+000A")),
        ("a%0A" + "b" * 150, control("U+000A")),
        ("gpu%00", control("U+0000")),
        ("gpu%7F", control("U+007F")),
        ("gpu%C2%85", control("U+0085")),
        ("%0A", control("U+000A")),  # a newline alone is a newline, not blank
    ],
)
def test_a_daemon_id_with_a_newline_or_other_control_character_is_refused_naming_the_rule(
    client: TestClient, make_caller, raw: str, message: str
) -> None:
    """A newline too: routing must not read the id as no such endpoint (404), and a NUL is
    one more control character, not a schema problem."""
    token, _ = make_caller(role="supervisor")
    for what in ("commands", "queue"):
        resp = client.get(f"/api/v1/daemons/{raw}/{what}", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert (error["code"], error["message"]) == ("VALIDATION_FAILED", message)
        assert (error["details"]["field"], error["details"]["limit"]) == ("daemonId", 200)


def test_commands_are_published_once_each_with_their_daemon(worker: WorkerProcess, make_caller) -> None:
    """The outbox row is marked published; a second publish of the same contract sends nothing."""
    from app.daemon_commands import publish_pending
    from app.models import DaemonCommand

    token, me = make_caller(role="supervisor")
    api = ContractsAPI(token)
    cid = api.create_contract("published", "simple").id
    daemon_id = f"p-{uuid.uuid4().hex[:8]}"
    with unit_of_work() as uow:  # no sender: only the publisher below sends it
        command_id = queue_command(uow, cid, "restart_supervisor", {}, utcnow(), daemon_id=daemon_id).id
    assert publish_pending(cid) == 1
    assert publish_pending(cid) == 0
    with unit_of_work() as uow:
        published = uow.session.scalar(
            select(DaemonCommand.published_at).where(DaemonCommand.id == command_id)
        )
    assert published is not None
    got = wait_for(lambda: commands_received(daemon_id, owner=me.owner_id), what="the command on its queue")
    assert [c["commandId"] for c in got] == [command_id]
