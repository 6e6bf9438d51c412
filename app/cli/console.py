"""Where the CLI writes: results to stdout (so `$(makima ...)` captures them), everything a
person reads to stderr, and `fail` for the one shape of an error line."""

from __future__ import annotations

import sys
from typing import Final

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped output is not squeezed to 80 columns: a table cut to ellipses is useless to grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)


# `--help` in click's plain layout, not typer's Rich panels: Rich keeps a docstring's line
# breaks and then wraps again at the terminal's width (a lone "Every" on a line of its own),
# and shows a `<bool>` type beside every flag, `--help` included. Plain help re-flows each
# paragraph and shows a type only where a value is given.
HELP_MARKUP: Final = None


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and build the exit to raise (`raise fail(...)`)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


__all__ = ["HELP_MARKUP", "err", "fail", "out"]
