"""The `makima` command: run the embedded service, migrate, create tokens, inspect dead letters.

    makima run                                    # API + worker + beat (+ embedded Redis)
    makima migrate                                # schema to head
    makima token create --owner admin --role admin
    makima dead-letters list [--all] [--format table|json]
    makima dead-letters show ID
    makima dead-letters replay ID

Domain errors become exit codes in exactly one place (`_ErrorMappingGroup`), so a script
can tell "not found" from "conflict" without parsing text, and every command reports them
the same way: the code, the sentence, the details.
"""

from __future__ import annotations

import json
import sys
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, ProgrammingError
from typer.core import TyperGroup

from app.config import get_settings
from app.domain.errors import (
    ContractError,
    ContractNotFound,
    InvalidDeliverable,
    InvalidTransition,
    PhaseGuardRequired,
    SupervisorDead,
    SupervisorNotFound,
    ValidationFailed,
    VersionConflict,
)

# Exit codes of domain errors. 2 is also what the CLI parser uses for a malformed command
# line: both mean "the request is wrong, fix it", which is what a script needs to know.
EXIT_INVALID = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_CODES: dict[type[ContractError], int] = {
    ValidationFailed: EXIT_INVALID,
    InvalidTransition: EXIT_INVALID,
    InvalidDeliverable: EXIT_INVALID,
    ContractNotFound: EXIT_NOT_FOUND,
    SupervisorNotFound: EXIT_NOT_FOUND,
    VersionConflict: EXIT_CONFLICT,
    PhaseGuardRequired: EXIT_CONFLICT,
    SupervisorDead: EXIT_UNAVAILABLE,
}

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped output is not squeezed to 80 columns: a table cut to ellipses is useless to grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def exit_code_for(exc: ContractError) -> int:
    """The most specific mapped class wins; an unmapped domain error is a plain failure."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` to stderr and build the exit to raise (`raise fail(...)`)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


class _ErrorMappingGroup(TyperGroup):
    """The root command: every subcommand runs inside its `invoke`, so errors map here once."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except ContractError as exc:
            err.print(f"error: {exc.code}: {exc.message}", markup=False)
            details = {k: v for k, v in exc.details.items() if v not in (None, [], {}, "")}
            if details:
                err.print(f"details: {json.dumps(details, default=str)}", markup=False)
            raise typer.Exit(exit_code_for(exc)) from None
        except (OperationalError, ProgrammingError) as exc:
            first = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
            raise fail(
                f"database error: {first}. If the schema is missing, run 'makima migrate' "
                "(or 'makima run', which applies it)."
            ) from None


app = typer.Typer(
    cls=_ErrorMappingGroup,
    help="Contract management for AI-agent orchestration.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
token_app = typer.Typer(help="API tokens (bearer credentials).", no_args_is_help=True)
dead_letters_app = typer.Typer(
    help="Messages the workers could not apply, kept for a person to read and replay.",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
app.add_typer(dead_letters_app, name="dead-letters")


# -- run / migrate -------------------------------------------------------------------------------


@app.command()
def run(
    worker_concurrency: Annotated[
        int, typer.Option(min=1, help="Processes in the worker's prefork pool.")
    ] = 2,
    stop_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a child has to stop before it is killed.")
    ] = 10.0,
) -> None:
    """Run the API, a worker and beat; with no servers configured, on SQLite + embedded Redis.

    Stops everything on Ctrl-C. Exits non-zero if a process dies on its own.
    """
    from app.run import RunOptions
    from app.run import run as run_service

    code = run_service(
        get_settings(), RunOptions(worker_concurrency=worker_concurrency, stop_timeout=stop_timeout)
    )
    raise typer.Exit(code)


@app.command()
def migrate(
    revision: Annotated[str, typer.Option(help="Alembic revision to upgrade to.")] = "head",
) -> None:
    """Upgrade the database schema (safe to repeat)."""
    from app.db import migrate as upgrade
    from app.run import ensure_sqlite_directory, safe_url

    url = get_settings().effective_database_url
    ensure_sqlite_directory(url)
    upgrade(url, revision)
    err.print(f"Database {safe_url(url)} is at {revision}.", markup=False)


# -- tokens -------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Owner id: the principal sees this owner's contracts.")],
    role: Annotated[str, typer.Option(help="user, supervisor or admin (admin sees every owner).")],
    name: Annotated[str | None, typer.Option(help="A label for the principal.")] = None,
) -> None:
    """Create a principal and print its token once: only the token's hash is stored.

    The token alone goes to stdout, so `TOKEN=$(makima token create ...)` works.
    """
    from app.auth import create_token, parse_role
    from app.db import unit_of_work

    parsed = parse_role(role)
    with unit_of_work() as uow:
        token = create_token(uow.session, owner, parsed, name)
    err.print(
        f"Token for owner '{owner}' (role {parsed.value}). Keep it now: it cannot be shown again.",
        markup=False,
    )
    print(token)


# -- dead letters -------------------------------------------------------------------------------


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _short_time(iso: str | None) -> str:
    """`2026-01-02 03:04:05` for a table cell; the JSON keeps the full ISO timestamp."""
    return iso[:19].replace("T", " ") if iso else "-"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _summary(row: Any) -> dict[str, Any]:
    """The list view: what a person scans to decide which message to open."""
    return {
        "id": row.id,
        "queue": row.queue,
        "task": row.task_name,
        "messageId": row.message_id,
        "attempts": row.attempts,
        "firstSeen": _iso(row.first_seen),
        "lastSeen": _iso(row.last_seen),
        "error": _first_line(row.error),
        "replayedAt": _iso(row.replayed_at),
    }


def _full(row: Any) -> dict[str, Any]:
    """Everything stored, so a message can be read and fixed without opening the database."""
    return {
        **_summary(row),
        "error": row.error,
        "fingerprint": row.fingerprint,
        "headers": row.headers,
        "contentType": row.content_type,
        "contentEncoding": row.content_encoding,
        "rawBody": row.raw_body,
    }


def _load_dead_letter(session: Any, dead_letter_id: int, *, lock: bool = False) -> Any:
    """The row, locked when replaying so two replays of one message cannot both send it."""
    from app.models import DeadLetter

    query = select(DeadLetter).where(DeadLetter.id == dead_letter_id)
    if lock:
        query = query.with_for_update()
    row = session.scalars(query).first()
    if row is None:
        raise fail(
            f"no dead letter with id {dead_letter_id}; list them with 'makima dead-letters list --all'."
        )
    return row


@dead_letters_app.command("list")
def dead_letters_list(
    all_: Annotated[bool, typer.Option("--all", help="Include messages already replayed.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.TABLE,
    limit: Annotated[int, typer.Option(min=1, help="Newest N.")] = 100,
) -> None:
    """List dead letters, newest first (not yet replayed, unless --all)."""
    from app.db import unit_of_work
    from app.dead_letters import list_dead_letters

    with unit_of_work() as uow:
        rows = [_summary(r) for r in list_dead_letters(uow.session, include_replayed=all_, limit=limit)]
    if fmt is Format.JSON:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print("No dead letters." if all_ else "No dead letters waiting (use --all for replayed ones).")
        return
    table = Table()
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("queue")
    table.add_column("task", overflow="fold")
    table.add_column("message id", overflow="fold")
    table.add_column("attempts", justify="right")
    table.add_column("first seen (UTC)")
    table.add_column("last seen (UTC)")
    table.add_column("error", min_width=20, ratio=1)
    table.add_column("replayed")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["queue"] or "-",
            r["task"] or "-",
            r["messageId"] or "-",
            str(r["attempts"]),
            _short_time(r["firstSeen"]),
            _short_time(r["lastSeen"]),
            r["error"],
            _short_time(r["replayedAt"]) if r["replayedAt"] else "no",
        )
    out.print(table)


@dead_letters_app.command("show")
def dead_letters_show(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    fmt: Annotated[Format, typer.Option("--format", help="table (readable) or json.")] = Format.TABLE,
) -> None:
    """Show one dead letter whole: headers, full error and the raw body as received."""
    from app.db import unit_of_work

    with unit_of_work() as uow:
        row = _full(_load_dead_letter(uow.session, dead_letter_id))
    if fmt is Format.JSON:
        print(json.dumps(row, indent=2, default=str))
        return
    for key in (
        "id",
        "queue",
        "task",
        "messageId",
        "attempts",
        "firstSeen",
        "lastSeen",
        "replayedAt",
        "fingerprint",
        "contentType",
        "contentEncoding",
    ):
        print(f"{key + ':':<17}{row[key] if row[key] is not None else '-'}")
    print(f"{'headers:':<17}{json.dumps(row['headers'], default=str)}")
    print("error:")
    print("  " + "\n  ".join((row["error"] or "").splitlines()))
    print("raw body:")
    print(row["rawBody"])


@dataclass(frozen=True, slots=True)
class Replayable:
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]


class NotReplayable(Exception):
    """The stored message cannot be turned back into a task call as it is."""


def decode_for_replay(task_name: str | None, headers: dict[str, Any] | None, raw_body: str) -> Replayable:
    """Recover (task, args, kwargs) from a stored dead letter.

    Two shapes are written: `workers.dead_letter.park_task` stores
    `{"args": [...], "kwargs": {...}}` with the task name; `workers.consumer` stores the
    broker message as received, whose Celery protocol-2 body is `[args, kwargs, embed]`
    (the task name is in the headers) and whose protocol-1 body is a dict naming the task.
    """
    name = task_name or (headers or {}).get("task")
    try:
        body = json.loads(raw_body)
    except ValueError as exc:
        raise NotReplayable(f"its body is not JSON ({exc})") from None
    args: Any
    kwargs: Any
    if isinstance(body, dict) and "args" in body and "kwargs" in body and set(body) <= {"args", "kwargs"}:
        args, kwargs = body["args"], body["kwargs"]
    elif isinstance(body, list) and len(body) == 3:
        args, kwargs = body[0], body[1]
    elif isinstance(body, dict) and "task" in body:
        name = name or body.get("task")
        args, kwargs = body.get("args", []), body.get("kwargs", {})
    else:
        raise NotReplayable(
            "its body is JSON but not a Celery task call ([args, kwargs, embed] or {args, kwargs})"
        )
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise NotReplayable("its args are not a list or its kwargs are not an object")
    if not name:
        raise NotReplayable("it names no task (no task name, no 'task' header)")
    return Replayable(str(name), args, kwargs)


@dead_letters_app.command("replay")
def dead_letters_replay(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    force: Annotated[bool, typer.Option(help="Send it again even if it was replayed before.")] = False,
) -> None:
    """Send a dead letter's task again, with a new task id, and mark it replayed.

    The message is sent inside the transaction that marks the row: if sending fails nothing
    is marked; if the commit fails after sending, a second replay sends it again, which is
    safe because every task is idempotent (daemon reports carry their own message id).
    """
    from kombu.exceptions import OperationalError as BrokerError

    from app.db import unit_of_work
    from app.dead_letters import mark_replayed
    from app.models import utcnow
    from workers.celery_app import celery_app
    from workers.queues import queue_for

    with unit_of_work() as uow:
        row = _load_dead_letter(uow.session, dead_letter_id, lock=True)
        if row.replayed_at is not None and not force:
            raise fail(
                f"dead letter {dead_letter_id} was already replayed at {row.replayed_at.isoformat()}; "
                "pass --force to send it again."
            )
        try:
            call = decode_for_replay(row.task_name, row.headers, row.raw_body)
        except NotReplayable as exc:
            raise fail(
                f"dead letter {dead_letter_id} cannot be replayed: the body does not decode as a task "
                f"call: {exc}. It cannot be replayed until it is fixed."
            ) from None
        celery_app.loader.import_default_modules()
        if call.task_name not in celery_app.tasks:
            raise fail(
                f"dead letter {dead_letter_id} names task '{call.task_name}', which no worker defines; "
                "it cannot be replayed until it is fixed."
            )
        task_id = str(uuid.uuid4())
        queue = queue_for(call.task_name).value
        try:
            celery_app.send_task(
                call.task_name, args=call.args, kwargs=call.kwargs, task_id=task_id, queue=queue
            )
        except BrokerError as exc:
            raise fail(
                f"the broker at {get_settings().effective_broker_url} is not reachable ({exc}); "
                "is 'makima run' (or your Redis) running?"
            ) from None
        mark_replayed(uow.session, dead_letter_id, utcnow())
    err.print(
        f"Replayed dead letter {dead_letter_id}: {call.task_name} on queue '{queue}' as task {task_id}.",
        markup=False,
    )
    print(task_id)


def main() -> None:
    """Console script `makima`."""
    app(prog_name="makima")


if __name__ == "__main__":
    main()
