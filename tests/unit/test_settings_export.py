"""The `makima run` banner gives a second terminal this run's settings as a line to paste.

The CLI and a Python daemon read the same `MAKIMA_*` settings as the service, so the banner
prints `export NAME=value ...`, quoted for a POSIX shell, not only the names. The data
directory is among them, as an absolute path, so every command pasted later in that terminal
finds this run's database; a password in a URL is masked: a banner ends up in logs.
"""

from __future__ import annotations

import shlex
import subprocess

from app.service_runner import settings_export


def test_no_makima_setting_gives_no_export() -> None:
    assert settings_export({"HOME": "/root", "PATH": "/usr/bin"}) == (None, [])


def test_the_data_dir_is_exported_as_an_absolute_path() -> None:
    import os

    assert settings_export({"MAKIMA_DATA_DIR": "/tmp/makima-data"}) == (
        "export MAKIMA_DATA_DIR=/tmp/makima-data",
        [],
    )
    export, _ = settings_export({"MAKIMA_DATA_DIR": "data/run one"})
    assert export == "export MAKIMA_DATA_DIR=" + shlex.quote(os.path.join(os.getcwd(), "data/run one"))


def test_each_setting_is_exported_with_its_value_in_name_order() -> None:
    export, masked = settings_export(
        {
            "MAKIMA_HTTP_PORT": "8123",
            "MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES": "0.1",
            "MAKIMA_DATA_DIR": "/tmp/makima-data",
            "PATH": "/usr/bin",
        }
    )

    assert export == (
        "export MAKIMA_CONTRACTS__COMPLETION_GRACE_PERIOD_MINUTES=0.1 MAKIMA_DATA_DIR=/tmp/makima-data "
        "MAKIMA_HTTP_PORT=8123"
    )
    assert masked == []


def test_the_line_pasted_into_a_shell_sets_each_value_exactly() -> None:
    values = {"MAKIMA_CONFIG": "/srv/my config/makima.toml", "MAKIMA_BROKER_KEY_PREFIX": "it's;$HOME"}
    export, _ = settings_export(values)
    assert export is not None

    shown = subprocess.run(
        ["sh", "-c", f'{export}; printf \'%s\\n\' "$MAKIMA_CONFIG" "$MAKIMA_BROKER_KEY_PREFIX"'],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()

    assert shown == [values["MAKIMA_CONFIG"], values["MAKIMA_BROKER_KEY_PREFIX"]]


def test_a_password_in_a_url_is_masked_and_named() -> None:
    export, masked = settings_export(
        {
            "MAKIMA_DATABASE_URL": "postgresql://makima:s3cret@db:5432/makima",
            "MAKIMA_BROKER_URL": "redis://cache:6379/0",
        }
    )

    assert export is not None
    assert "s3cret" not in export
    assigned = dict(part.split("=", 1) for part in shlex.split(export)[1:])
    assert assigned == {
        "MAKIMA_BROKER_URL": "redis://cache:6379/0",
        "MAKIMA_DATABASE_URL": "postgresql://makima:***@db:5432/makima",
    }
    assert masked == ["MAKIMA_DATABASE_URL"]
