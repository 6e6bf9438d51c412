"""`makima token ...`: bearer credentials, created by an operator on the server's database."""

from __future__ import annotations

from typing import Annotated

import typer

from app.cli.console import err
from app.cli.errors import load_settings

token_app = typer.Typer(help="API tokens (bearer credentials).", no_args_is_help=True)


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="Owner id: the principal sees this owner's contracts.")],
    role: Annotated[str, typer.Option(help="user, supervisor or admin (admin sees every owner).")],
    name: Annotated[str | None, typer.Option(help="A label for the principal.")] = None,
) -> None:
    """Create a principal and print its token once: only the token's hash is stored.

    The token alone goes to stdout, so `TOKEN=$(makima token create ...)` works.
    """
    load_settings()
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


__all__ = ["token_app"]
