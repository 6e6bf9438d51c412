"""Where the CLI writes: results to stdout (so `$(makima ...)` captures them), everything a
person reads to stderr, and `fail` for the one shape of an error line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)
# Piped output is not squeezed to 80 columns: a table cut to ellipses is useless to grep.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr and build the exit to raise (`raise fail(...)`)."""
    err.print(f"error: {message}", markup=False)
    return typer.Exit(code)


__all__ = ["err", "fail", "out"]
