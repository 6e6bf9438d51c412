"""`makima ... --help` reads cleanly at any terminal width.

- A docstring's paragraph is re-flowed to the terminal, not broken where the source line
  ended (no lone "Every" on a line of its own).
- A flag shows no type (no `<bool>` beside `--help`, `--all`, `--json`); an option that takes
  a value still shows what it takes.
"""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
import typer.main
from typer.testing import CliRunner

from app.cli import app


def command_paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group under `makima`, as the words a person types."""
    found = [path]
    for name, sub in getattr(command, "commands", {}).items():
        found += command_paths(sub, (*path, name))
    return found


COMMANDS = command_paths(typer.main.get_command(app))


def help_text(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="makima", terminal_width=width)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "makima")
def test_help_shows_no_bool_type_and_no_stray_line_break(path: tuple[str, ...], width: int) -> None:
    text = help_text(path, width)

    assert "<bool>" not in text
    assert all(len(line) <= width for line in text.splitlines()), text
    # Within a paragraph of the description, a line ends only where the next word would not fit.
    description = text.split("\n\n", 1)[1].split("\nOptions:", 1)[0].split("\nArguments:", 1)[0]
    for paragraph in description.split("\n\n"):
        lines = paragraph.splitlines()
        for line, following in pairwise(lines):
            assert len(line) + 1 + len(following.split()[0]) > width, (line, following)


def test_the_token_create_help_flows_its_paragraph_and_names_what_options_take() -> None:
    text = help_text(("token", "create"), 80)

    assert "works.\n  Every argument is checked" in text or "works. Every" in text
    assert re.search(r"--owner <str>\s+Owner id", text)
    assert re.search(r"--help\s+Show this message and exit\.", text)
