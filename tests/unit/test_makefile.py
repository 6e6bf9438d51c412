"""The Makefile's promises that are not exercised by running it: `make flower`'s defaults.

Flower shows every task's arguments and can revoke tasks, and has no authentication unless
told to: it listens on loopback unless FLOWER_ADDRESS says otherwise, on FLOWER_PORT.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def flower_command(*overrides: str) -> str:
    """What `make flower` would run (`make -n`: printed, not run)."""
    result = subprocess.run(
        ["make", "-n", "--no-print-directory", "flower", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(line for line in result.stdout.splitlines() if " flower " in line)


@pytest.fixture(autouse=True)
def needs_make() -> None:
    if subprocess.run(["sh", "-c", "command -v make"], capture_output=True).returncode != 0:
        pytest.skip("make is not installed")


def test_flower_listens_on_loopback_port_5555_by_default() -> None:
    command = flower_command()
    assert re.search(r"celery -A workers\.celery_app flower --address=127\.0\.0\.1 --port=5555( |$)", command)


def test_flower_takes_a_port_and_an_address() -> None:
    command = flower_command("FLOWER_PORT=5556", "FLOWER_ADDRESS=0.0.0.0")
    assert "flower --address=0.0.0.0 --port=5556 " in f"{command} "
