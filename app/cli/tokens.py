"""`makima token ...`: bearer credentials, managed by an operator on the server's database.

    makima token create --owner team-a --role user [--name ci] [--expires 30d]
    makima token list [--owner team-a] [--format table|json]
    makima token revoke ID

No API role manages tokens: whoever runs these commands has the database already. The
secret is printed once by `create` and never again (only its SHA-256 is stored), so `list`
shows everything else. A revocation reaches the HTTP front and the workers within
`app.auth.PRINCIPAL_CACHE_SECONDS`.
"""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from typing import Annotated

import typer
from rich.table import Table

from app.cli.console import HELP_MARKUP, err, fail, out
from app.cli.errors import EXIT_NOT_FOUND, load_settings

token_app = typer.Typer(
    help="API tokens (bearer credentials).", no_args_is_help=True, rich_markup_mode=HELP_MARKUP
)


class Format(StrEnum):
    TABLE = "table"
    JSON = "json"


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Owner id: the principal sees this owner's contracts.")],
    role: Annotated[str, typer.Option(help="user, supervisor or admin (admin sees every owner).")],
    name: Annotated[str | None, typer.Option(help="A label for the principal.")] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, like 90m, 12h or 30d; without it the token never expires.")
    ] = None,
) -> None:
    """Create a principal and print its token once: only the token's hash is stored.

    The token alone goes to stdout, so `TOKEN=$(makima token create ...)` works. Every
    argument is checked before the database is opened, so a bad one is an `error:` line.
    """
    from app.auth import check_principal_fields, create_token, parse_lifetime, parse_role
    from app.models import utcnow

    parsed = parse_role(role)
    check_principal_fields(owner, name)
    lifetime = parse_lifetime(expires) if expires is not None else None
    load_settings()
    from app.db import unit_of_work

    now = utcnow()
    with unit_of_work() as uow:
        token = create_token(uow.session, owner, parsed, name, expires_in=lifetime, now=now)
    until = f" It expires at {(now + lifetime).isoformat(timespec='seconds')}." if lifetime else ""
    err.print(
        f"Token for owner '{owner}' (role {parsed.value}).{until} Keep it now: it cannot be shown again.",
        markup=False,
    )
    print(token)


def _short_time(iso: str | None) -> str:
    return iso[:19].replace("T", " ") if iso else "-"


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="Only this owner's tokens.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="table or json.")] = Format.TABLE,
) -> None:
    """List tokens, newest first, revoked and expired ones included; never their secret."""
    from app.auth import check_principal_fields

    if owner is not None:  # by create's rule: an owner no token can have is an error, not "No tokens"
        check_principal_fields(owner, None)
    load_settings()
    from app.auth import list_tokens
    from app.db import unit_of_work
    from app.models import utcnow

    now = utcnow()
    with unit_of_work() as uow:
        rows = [t.to_json(now) for t in list_tokens(uow.session, owner)]
    if fmt is Format.JSON:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err.print(f"No tokens for owner '{owner}'." if owner else "No tokens.", markup=False)
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("owner", overflow="fold")
    table.add_column("role")
    table.add_column("name", overflow="fold")
    table.add_column("created (UTC)")
    table.add_column("last used (UTC)")
    table.add_column("expires (UTC)")
    table.add_column("revoked (UTC)")
    table.add_column("state")
    for r in rows:
        table.add_row(
            r["id"],
            r["owner"],
            r["role"],
            r["name"] or "-",
            _short_time(r["createdAt"]),
            _short_time(r["lastUsedAt"]),
            _short_time(r["expiresAt"]) if r["expiresAt"] else "never",
            _short_time(r["revokedAt"]),
            r["state"],
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[
        str, typer.Argument(metavar="ID", help="The token's id, as `makima token list` shows it.")
    ],
) -> None:
    """Revoke a token; repeating it changes nothing. An unknown id is an error (exit 3).

    The HTTP front refuses the token, and workers park the messages of a principal left with
    no live token, within the principal cache bound (5 s).
    """
    try:
        parsed = uuid.UUID(token_id)
    except ValueError:
        raise _not_found(token_id) from None
    load_settings()
    from app.auth import PRINCIPAL_CACHE_SECONDS, revoke_token
    from app.db import unit_of_work

    with unit_of_work() as uow:
        outcome = revoke_token(uow.session, parsed)
    if outcome is None:
        raise _not_found(token_id)
    info, newly = outcome
    when = info.revoked_at.isoformat(timespec="seconds") if info.revoked_at else "?"
    who = f"owner '{info.owner_id}', role {info.role}"
    if newly:
        err.print(
            f"Token {info.id} ({who}) revoked at {when}; every process refuses it within "
            f"{PRINCIPAL_CACHE_SECONDS:g} s.",
            markup=False,
        )
    else:
        err.print(f"Token {info.id} ({who}) was already revoked at {when}; nothing changed.", markup=False)


def _not_found(token_id: str) -> typer.Exit:
    """Prints the error line now; the caller raises the exit (`raise _not_found(...)`)."""
    return fail(
        f"TOKEN_NOT_FOUND: no token has id '{token_id}'; see the ids with 'makima token list'.",
        EXIT_NOT_FOUND,
    )


__all__ = ["token_app"]
