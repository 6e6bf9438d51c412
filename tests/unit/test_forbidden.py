"""A refusal by role reads the same wherever it is raised: one order of roles, the right person to ask."""

from __future__ import annotations

from app.domain.errors import Forbidden


def test_allowed_roles_are_listed_person_daemon_operator_however_the_caller_built_the_list() -> None:
    assert Forbidden("decide", "supervisor", ["admin", "user"]).details["allowedRoles"] == ["user", "admin"]
    assert Forbidden("save", "user", ("admin", "supervisor")).details["allowedRoles"] == [
        "supervisor",
        "admin",
    ]


def test_the_message_names_who_to_ask_a_person_a_daemon_or_an_operator() -> None:
    assert Forbidden("answer a question", "supervisor", ["user", "admin"]).message.endswith(
        "A person of the owner decides this (a user token)."
    )
    assert Forbidden("save a state", "user", ["supervisor", "admin"]).message.endswith(
        "It is the owner's daemon's call (a supervisor token)."
    )
    assert Forbidden("clean up worktrees", "user", ["admin"]).message.endswith("Ask an operator.")
    assert Forbidden("x", "user", ["admin"], hint="Use the CLI.").message.endswith("Use the CLI.")
