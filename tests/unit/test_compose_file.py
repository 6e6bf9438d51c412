"""docker-compose.yml is what the README promises: no Docker runs here, so read the file.

The six services, the commands each app service runs, both service URLs on every app
service, the published ports, and a worker that consumes every queue the code routes to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from app.queues import Queue

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("api", "worker", "worker-heartbeats", "worker-batch", "beat", "flower")
DATABASE_URL = "postgresql+psycopg2://makima:makima@postgres:5432/makima"
BROKER_URL = "redis://redis:6379/0"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def command_text(service: dict[str, Any]) -> str:
    """A service's command as one string, whether written as a list or a string."""
    command = service.get("command")
    assert command, "service has no command"
    return command if isinstance(command, str) else " ".join(str(part) for part in command)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def published(service: dict[str, Any]) -> set[str]:
    return {str(p) for p in service.get("ports", [])}


def test_the_six_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", *APP_SERVICES}
    assert compose["services"]["postgres"]["image"] == "postgres:15"
    assert compose["services"]["redis"]["image"] == "redis:7"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_app_services_are_built_here_and_point_at_postgres_and_redis(
    compose: dict[str, Any], name: str
) -> None:
    service = compose["services"][name]
    build = service["build"]
    context = build if isinstance(build, str) else build.get("context", ".")
    assert context == "."
    assert (ROOT / "Dockerfile").is_file()
    env = environment(service)
    assert env["MAKIMA_DATABASE_URL"] == DATABASE_URL
    assert env["MAKIMA_BROKER_URL"] == BROKER_URL
    assert "redis" in service["depends_on"]


def test_postgres_credentials_match_the_database_url(compose: dict[str, Any]) -> None:
    env = environment(compose["services"]["postgres"])
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        "makima",
        "makima",
        "makima",
    )


def test_api_migrates_then_serves_on_8000(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    command = command_text(api)
    assert "makima migrate" in command
    assert "uvicorn app.http:app --host 0.0.0.0 --port 8000" in command
    assert command.index("makima migrate") < command.index("uvicorn")
    # As `makima run` starts it: a WebSocket frame no larger than an HTTP body.
    from app.http.limits import MAX_BODY_BYTES
    from app.service_runner import WS_MAX_MESSAGE_BYTES

    assert WS_MAX_MESSAGE_BYTES == MAX_BODY_BYTES
    assert f"--ws-max-size {MAX_BODY_BYTES}" in command
    # The request-head deadline, as `makima run` starts the API (app.http.head_deadline).
    from app.service_runner import HTTP_PROTOCOL

    assert f"--http {HTTP_PROTOCOL}" in command
    assert "8000:8000" in published(api)
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Healthy means ready (database and broker answer), not merely alive: the workers and
    # beat wait for it.
    assert "/readyz" in " ".join(map(str, api["healthcheck"]["test"]))


def worker_queues(compose: dict[str, Any], name: str) -> list[str]:
    command = command_text(compose["services"][name])
    assert command.startswith("celery -A workers.celery_app worker -Q ")
    return command.split(" -Q ", 1)[1].split()[0].split(",")


def test_the_workers_together_consume_every_queue(compose: dict[str, Any]) -> None:
    workers = ("worker", "worker-heartbeats", "worker-batch")
    queues = [q for name in workers for q in worker_queues(compose, name)]
    assert sorted(queues) == sorted(q.value for q in Queue)  # each once


def test_batch_operations_have_a_worker_of_their_own(compose: dict[str, Any]) -> None:
    assert worker_queues(compose, "worker-batch") == ["batch"]
    assert "batch" not in worker_queues(compose, "worker")


def test_heartbeats_have_a_solo_pool_worker_of_their_own_as_makima_run_starts_it(
    compose: dict[str, Any],
) -> None:
    """One process per container, no pool process to hand each list to (README: Heartbeats)."""
    from app.config import Settings
    from app.service_commands import HEARTBEAT_QUEUES, WORKER_QUEUES, child_commands
    from app.service_runner import RunOptions

    assert worker_queues(compose, "worker-heartbeats") == ["heartbeats"]
    assert "heartbeats" not in worker_queues(compose, "worker")
    assert "--pool=solo" in command_text(compose["services"]["worker-heartbeats"]).split()
    children = {c.name: c.argv for c in child_commands(Settings(), RunOptions(), 1)}
    argv = children["heartbeat-worker"]
    assert argv[argv.index("-Q") + 1] == HEARTBEAT_QUEUES == "heartbeats"
    assert argv[argv.index("--pool") + 1] == "solo"
    main = children["worker"]
    assert main[main.index("-Q") + 1] == WORKER_QUEUES == ",".join(worker_queues(compose, "worker"))


FLOWER_OPTIONS = (
    "--natural_time",
    "--tasks_columns=name,state,routing_key,args,received,started,runtime,worker,retries",
    "--purge_offline_workers=600",
)


def test_beat_and_flower(compose: dict[str, Any]) -> None:
    assert command_text(compose["services"]["beat"]).startswith("celery -A workers.celery_app beat")
    flower = compose["services"]["flower"]
    assert command_text(flower) == " ".join(
        ("celery -A workers.celery_app flower --port=5555", *FLOWER_OPTIONS)
    )
    # Flower has no auth unless configured: reachable from this host only.
    assert published(flower) == {"127.0.0.1:5555:5555"}


def test_infrastructure_has_healthchecks_the_app_waits_for(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
    for name in APP_SERVICES:
        for dependency, spec in services[name]["depends_on"].items():
            assert spec["condition"] == "service_healthy", (name, dependency)


@pytest.mark.parametrize(
    ("name", "node"), [("worker", "worker"), ("worker-heartbeats", "heartbeats"), ("worker-batch", "batch")]
)
def test_workers_have_node_names_a_person_reads_and_the_healthcheck_pings(
    compose: dict[str, Any], name: str, node: str
) -> None:
    """Flower and `celery inspect` list `worker@<host>` and `batch@<host>`, not `celery@<host>`.

    `$$HOSTNAME` is compose's escape for the container's `$HOSTNAME` (what `%h` expands to).
    """
    service = compose["services"][name]
    assert f" -n {node}@%h " in f"{command_text(service)} "
    assert f"-d {node}@$$HOSTNAME " in " ".join(map(str, service["healthcheck"]["test"]))


def test_flower_shows_task_name_queue_args_and_worker_with_the_makefile_options() -> None:
    """Each task with its name, queue (routing key), argument and worker; `make flower` alike."""
    columns = next(o for o in FLOWER_OPTIONS if o.startswith("--tasks_columns=")).split("=", 1)[1]
    assert {"name", "routing_key", "args", "worker"} <= set(columns.split(","))
    assert "kwargs" not in columns and "result" not in columns  # one payload argument, no result
    makefile = (ROOT / "Makefile").read_text()
    assert f"FLOWER_OPTIONS ?= {' '.join(FLOWER_OPTIONS)}" in makefile
    assert "$(FLOWER_OPTIONS)" in makefile


def test_the_images_own_command_starts_the_api_as_makima_run_does() -> None:
    """`docker run` without the compose file: the same WebSocket frame limit and request-head
    deadline as `makima run` and the compose file give the API."""
    import json

    from app.service_runner import HTTP_PROTOCOL, WS_MAX_MESSAGE_BYTES

    cmd = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(cmd[4:])
    assert argv[:2] == ["uvicorn", "app.http:app"]
    assert argv[argv.index("--http") + 1] == HTTP_PROTOCOL
    assert argv[argv.index("--ws-max-size") + 1] == str(WS_MAX_MESSAGE_BYTES)
