"""The `makima` command.

    makima run                                    # API + workers + beat (+ embedded Redis)
    makima migrate                                # schema to head
    makima token create --owner admin --role admin
    makima dead-letters list [--all] [--format table|json]
    makima dead-letters show ID
    makima dead-letters replay ID
    makima simulate --supervisors 200 --duration 60 [--crash-rate 2] [--json]

The commands above are the operator's: they work on this machine's database and broker
(`service`, `tokens`, `dead_letters`); `simulate` drives a running service over HTTP like a
fleet of daemons, making its tokens on this machine's database when none are given. The
remote `makima contracts ...` client, which speaks HTTP only, gets a module of its own here
and is added to `app` the same way. Errors become
exit codes and `error: ...` lines in one place, `errors.ErrorMappingGroup`, for all of them.
"""

from __future__ import annotations

import typer

from app.cli import service, simulate
from app.cli.console import HELP_MARKUP
from app.cli.dead_letters import dead_letters_app
from app.cli.errors import ErrorMappingGroup
from app.cli.tokens import token_app

app = typer.Typer(
    cls=ErrorMappingGroup,
    help="Contract management for AI-agent orchestration.",
    no_args_is_help=True,
    rich_markup_mode=HELP_MARKUP,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
app.command()(service.run)
app.command()(service.migrate)
app.add_typer(token_app, name="token")
app.add_typer(dead_letters_app, name="dead-letters")
app.command()(simulate.simulate)


def main() -> None:
    """Console script `makima`."""
    app(prog_name="makima")


__all__ = ["app", "main"]
