"""The one place errors become exit codes and `error: ...` lines, for every command.

A script can tell "not found" from "conflict" without parsing text, and a person sees one
sentence to act on instead of a traceback: domain errors (the code, the sentence, the
details), configuration refused at start, database errors (naming the database, password
masked), and dead letters that cannot be replayed.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError, ProgrammingError
from typer.core import TyperGroup

from app.cli.console import err, fail
from app.config import ConfigError, Settings, get_settings, safe_url
from app.dead_letters import AlreadyReplayed, DeadLetterError, DeadLetterNotFound, NotReplayable
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
EXIT_FAILURE = 1
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

# Dead letters (`makima dead-letters ...`) are the CLI's own: their code and exit code.
DEAD_LETTER_CODES: dict[type[DeadLetterError], tuple[str, int]] = {
    DeadLetterNotFound: ("DEAD_LETTER_NOT_FOUND", EXIT_NOT_FOUND),
    NotReplayable: ("NOT_REPLAYABLE", EXIT_INVALID),
    AlreadyReplayed: ("ALREADY_REPLAYED", EXIT_CONFLICT),
}


def dead_letter_code_for(exc: DeadLetterError) -> tuple[str, int]:
    """The code and exit code of a dead-letter error (most specific class wins)."""
    for cls in type(exc).__mro__:
        if cls in DEAD_LETTER_CODES:
            return DEAD_LETTER_CODES[cls]
    return "DEAD_LETTER_ERROR", EXIT_FAILURE


def exit_code_for(exc: ContractError) -> int:
    """The most specific mapped class wins; an unmapped domain error is a plain failure."""
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_FAILURE


def load_settings() -> Settings:
    """The settings, or a `ConfigError` whose sentence names each invalid value."""
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _database_named() -> str:
    """The database the command used, password masked (or nothing if settings are unusable)."""
    try:
        return f" at {safe_url(get_settings().effective_database_url)}"
    except Exception:
        return ""


class ErrorMappingGroup(TyperGroup):
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
        except ConfigError as exc:
            raise fail(f"configuration: {exc}") from None
        except DeadLetterError as exc:
            code, exit_code = dead_letter_code_for(exc)
            raise fail(f"{code}: {exc}", exit_code) from None
        except (OperationalError, ProgrammingError) as exc:
            first = str(exc.orig if exc.orig is not None else exc).strip().splitlines()[0]
            raise fail(
                f"database error{_database_named()}: {first}. If the schema is missing, run "
                "'makima migrate' (or 'makima run', which applies it)."
            ) from None


__all__ = [
    "DEAD_LETTER_CODES",
    "EXIT_CODES",
    "EXIT_CONFLICT",
    "EXIT_FAILURE",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_UNAVAILABLE",
    "ErrorMappingGroup",
    "dead_letter_code_for",
    "exit_code_for",
    "load_settings",
]
