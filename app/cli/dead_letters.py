"""`makima dead-letters ...`: read and replay the messages workers could not apply.

The database work (listing, loading, decoding, replaying) is `app.dead_letters`; this module
chooses the fields a person sees, formats them as a table or JSON, and hands the replay the
Celery app as its sender.
"""

from __future__ import annotations

import json
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from app.cli.console import HELP_MARKUP, err, fail, out
from app.cli.errors import load_settings

if TYPE_CHECKING:
    from app.dead_letters import Replayable
    from app.models import DeadLetter

dead_letters_app = typer.Typer(
    help="Messages the workers could not apply, kept for a person to read and replay.",
    no_args_is_help=True,
    rich_markup_mode=HELP_MARKUP,
)


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


def summary(row: DeadLetter) -> dict[str, Any]:
    """The list view: what a person scans to decide which message to open.

    `senderMessageId` is the id the daemon chose (or was given) for its report, the one it
    asks `GET /api/v1/messages/{id}` about; `messageId` is Celery's task id.
    """
    from app.dead_letters import sender_of

    sent = sender_of(row.task_name, row.headers, row.raw_body)
    return {
        "id": row.id,
        "queue": row.queue,
        "task": row.task_name,
        "senderMessageId": sent.message_id if sent else None,
        "messageId": row.message_id,
        "attempts": row.attempts,
        "firstSeen": _iso(row.first_seen),
        "lastSeen": _iso(row.last_seen),
        "error": _first_line(row.error),
        "replayedAt": _iso(row.replayed_at),
    }


def full(row: DeadLetter) -> dict[str, Any]:
    """Everything stored, so a message can be read and fixed without opening the database."""
    return {
        **summary(row),
        "error": row.error,
        "fingerprint": row.fingerprint,
        "headers": row.headers,
        "contentType": row.content_type,
        "contentEncoding": row.content_encoding,
        "rawBody": row.raw_body,
    }


@dead_letters_app.command("list")
def dead_letters_list(
    all_: Annotated[bool, typer.Option("--all", help="Include messages already replayed.")] = False,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.TABLE,
    limit: Annotated[int, typer.Option(min=1, help="Newest N.")] = 100,
) -> None:
    """List dead letters, newest first (not yet replayed, unless --all)."""
    load_settings()
    from app.db import unit_of_work
    from app.dead_letters import list_dead_letters

    with unit_of_work() as uow:
        rows = [summary(r) for r in list_dead_letters(uow.session, include_replayed=all_, limit=limit)]
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
    table.add_column("sender's message id", overflow="fold")
    table.add_column("task id", overflow="fold")
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
            r["senderMessageId"] or "-",
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
    load_settings()
    from app.db import unit_of_work
    from app.dead_letters import get_dead_letter

    with unit_of_work() as uow:
        row = full(get_dead_letter(uow.session, dead_letter_id))
    if fmt is Format.JSON:
        print(json.dumps(row, indent=2, default=str))
        return
    for key in (
        "id",
        "queue",
        "task",
        "senderMessageId",
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


@dead_letters_app.command("replay")
def dead_letters_replay(
    dead_letter_id: Annotated[int, typer.Argument(metavar="ID")],
    force: Annotated[bool, typer.Option(help="Send it again even if it was replayed before.")] = False,
) -> None:
    """Send a dead letter's task again, with a new task id, and mark it replayed.

    Nothing is marked if the send fails; a replay sent twice is safe (tasks are idempotent).
    """
    settings = load_settings()
    from kombu.exceptions import OperationalError as BrokerError

    from app.broker import get_celery
    from app.config import safe_url
    from app.db import unit_of_work
    from app.dead_letters import replay
    from app.models import utcnow
    from app.queues import TaskName, queue_for

    def send(call: Replayable, task_id: str) -> str:
        queue = queue_for(call.task_name).value
        get_celery().send_task(
            call.task_name, args=call.args, kwargs=call.kwargs, task_id=task_id, queue=queue
        )
        return queue

    try:
        with unit_of_work() as uow:
            replayed = replay(
                uow.session,
                dead_letter_id,
                send=send,
                known_task=lambda name: name in set(TaskName),
                now=utcnow(),
                force=force,
            )
    except BrokerError as exc:
        raise fail(
            f"the broker at {safe_url(settings.effective_broker_url)} is not reachable ({exc}); "
            "is 'makima run' (or your Redis) running?"
        ) from None
    err.print(
        f"Replayed dead letter {dead_letter_id}: {replayed.task_name} on queue '{replayed.queue}' "
        f"as task {replayed.task_id}.",
        markup=False,
    )
    print(replayed.task_id)


__all__ = ["dead_letters_app", "full", "summary"]
