"""`makima dead-letters ...` errors carry a code and an exit code, like every other CLI error.

The README promises `error: CODE: message` lines: DEAD_LETTER_NOT_FOUND (exit 3),
NOT_REPLAYABLE (exit 2), ALREADY_REPLAYED (exit 4). Runs the real `makima` process on this
run's database (env from conftest), as an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.dead_letters import RejectedMessage, record_dead_letter
from app.models import DeadLetter, utcnow

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def makima(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def park(raw_body: str) -> int:
    message = RejectedMessage(
        queue="contracts",
        task_name="contracts.task_started",
        message_id=str(uuid.uuid4()),
        headers={"task": "contracts.task_started", "id": str(uuid.uuid4())},
        raw_body=raw_body,
        content_type="application/json",
        content_encoding="utf-8",
        error="message body does not decode: ValueError",
    )
    with unit_of_work() as uow:
        record_dead_letter(uow.session, message, utcnow())
    with unit_of_work() as uow:
        return int(
            uow.session.scalars(
                select(DeadLetter.id).where(DeadLetter.fingerprint == message.fingerprint())
            ).one()
        )


@pytest.mark.parametrize("command", ["show", "replay"])
def test_an_unknown_dead_letter_is_DEAD_LETTER_NOT_FOUND_exit_3(command: str) -> None:
    result = makima("dead-letters", command, "987654321")
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("error: DEAD_LETTER_NOT_FOUND: no dead letter with id 987654321")
    assert "Traceback" not in result.stderr


def test_a_dead_letter_that_does_not_decode_is_NOT_REPLAYABLE_exit_2() -> None:
    dead_letter_id = park("\x80 not json {" + str(uuid.uuid4()))
    result = makima("dead-letters", "replay", str(dead_letter_id))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: NOT_REPLAYABLE: dead letter {dead_letter_id} cannot be replayed")
    assert "until it is fixed" in result.stderr and "Traceback" not in result.stderr
    # Nothing was marked: it is still listed as not replayed.
    listed = makima("dead-letters", "list", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert dead_letter_id in {row["id"] for row in json.loads(listed.stdout)}
