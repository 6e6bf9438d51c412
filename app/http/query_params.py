"""The query parameters a route takes, read from FastAPI's own description of it, and what is
wrong with a query string it was sent.

Why: FastAPI reads the parameters a handler declares and passes over everything else, so
`?contractID=x` (a misspelt filter) was answered as if it were absent, with every contract;
`?taskId=A&taskId=B` acted on whichever one FastAPI picked; and `?contractIds=` (empty) meant
"every contract". A caller who sent a filter must never get an answer that ignored it. So a
query string is judged against the route before anything runs (`app.http.deps.strict_query`,
the one dependency `create_app` gives every route), and refused, naming the parameter, when it
holds:

- a parameter the route does not declare (`type: extra_forbidden`, as the live stream's query
  model already refused one): the route's parameters are listed in `allowed`, `[]` when it
  takes none;
- a single-valued parameter more than once (`type: repeated`): neither value is picked;
- an empty value the parameter's schema would take (`type: empty`), which at best meant the
  parameter's default and at worst everything: a number, a boolean or an id refuses `""` in
  its own words already, so those are left to the schema. A parameter whose empty value is
  documented (`?cursor=`: the first page) is marked `EMPTY_MEANS_DEFAULT` beside its `Query`,
  and keeps that meaning.

The live monitor's WebSocket (`WS /api/v1/contracts/monitor`) is held to the same rule: its
handshake is no request a dependency can answer with 422, so the endpoint judges its query
string itself (`query_problems` on its route) and closes with 4400 after an `error` naming the
parameter (`app.http.monitor_ws`). It declares no query parameter, so any is refused.

What a route takes comes from its dependant (its own parameters, its dependencies' and the
fields of a query model, by the names the API spells them), worked out once per route, so a
new endpoint is covered by declaring its parameters, and this rule and the published schema
cannot disagree. No import from `app.http` here: `app.http.problems` lists the same names next
to a schema's complaint about an unknown parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import UnionType
from typing import Any, Final, Union, get_args, get_origin

# FastAPI's own helpers (its version is pinned): a parameter counts as a sequence, and a query
# model's fields are read, exactly as FastAPI itself does when it reads the query string.
from fastapi._compat import ModelField, field_annotation_is_sequence, get_cached_model_fields
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from pydantic import BaseModel

# A route whose query string is judged: an HTTP one, or the live monitor's WebSocket.
QueryRoute = APIRoute | APIWebSocketRoute

# Where a route keeps what it takes, worked out on its first request with a query string
# (routes compare by path and endpoint, so they cannot be the keys of a cache).
_SPEC_ATTRIBUTE: Final = "_makima_query_spec"
# At most this many characters of a refused value are echoed back (as a schema problem does).
_GIVEN_CHARACTERS: Final = 200
# At most this many parameters are named in one refusal: a URL of thousands of made-up names
# would otherwise be answered with thousands of problems, each listing the known parameters.
MOST_PROBLEMS: Final = 20


class EmptyMeansDefault:
    """Marks a query parameter whose empty value is documented to mean its default
    (`GET /api/v1/contracts?cursor=`: the first page), so the empty-value rule lets it through:
    `Annotated[str | None, Query(...), EMPTY_MEANS_DEFAULT]`. Pydantic and the published schema
    pass over it."""

    def __repr__(self) -> str:
        return "EMPTY_MEANS_DEFAULT"


EMPTY_MEANS_DEFAULT: Final = EmptyMeansDefault()


@dataclass(frozen=True, slots=True)
class QuerySpec:
    """What one route takes: its parameters' names as the API spells them, in declaration
    order; those that take several values; those whose empty value is refused."""

    names: tuple[str, ...]
    repeatable: frozenset[str]
    empty_refused: frozenset[str]
    whole_numbers: frozenset[str] = frozenset()


def _model(annotation: Any) -> type[BaseModel] | None:
    """The query model a parameter stands for (`StreamQuery`), None for a plain parameter."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _fields(dependant: Dependant) -> list[ModelField]:
    """The route's query fields: its own, then its dependencies', depth first, a query
    model's (`StreamQuery`) replaced by the model's own fields."""
    fields: list[ModelField] = []
    pending = [dependant]
    while pending:
        current = pending.pop(0)
        for field in current.query_params:
            model = _model(field.field_info.annotation)
            fields += get_cached_model_fields(model) if model is not None else [field]
        pending[:0] = current.dependencies
    return fields


def _takes_empty(field: ModelField) -> bool:
    """Whether the field's schema would take `""`: a text would; a number, a boolean or an id
    would not, and says so itself."""
    _, errors = field.validate("")
    return not errors


def _is_whole_number(annotation: Any) -> bool:
    """An `int` parameter, optional or not (a bool is its own kind)."""
    return annotation is int or (
        get_origin(annotation) in (Union, UnionType)
        and int in get_args(annotation)
        and set(get_args(annotation)) <= {int, type(None)}
    )


# A whole number as the published schema means one. Python's `int()`, which reads the value
# otherwise, also takes `3_0` (30), ` 3` and `+3`: each would be answered as if it said 30 or 3.
_DIGITS: Final = re.compile(r"-?[0-9]+")


def spec_of(route: QueryRoute) -> QuerySpec:
    """What `route` takes, worked out from its dependant on the first call, then kept on it."""
    known = route.__dict__.get(_SPEC_ATTRIBUTE)
    if isinstance(known, QuerySpec):
        return known
    fields = _fields(route.dependant)
    spec = QuerySpec(
        names=tuple(dict.fromkeys(field.alias for field in fields)),
        repeatable=frozenset(
            field.alias for field in fields if field_annotation_is_sequence(field.field_info.annotation)
        ),
        empty_refused=frozenset(
            field.alias
            for field in fields
            if not any(mark is EMPTY_MEANS_DEFAULT for mark in field.field_info.metadata)
            and _takes_empty(field)
        ),
        whole_numbers=frozenset(
            field.alias for field in fields if _is_whole_number(field.field_info.annotation)
        ),
    )
    setattr(route, _SPEC_ATTRIBUTE, spec)
    return spec


def query_parameter_names(route: QueryRoute) -> list[str]:
    """The query parameters `route` takes, as the API spells them, to list beside a refusal."""
    return list(spec_of(route).names)


def _unknown(name: str, given: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if allowed:
        problem = f"is not a query parameter of this request; known parameters: {', '.join(allowed)}"
    else:
        problem = "is not a query parameter of this request, which takes none"
    return {
        "field": name,
        "in": "query",
        "type": "extra_forbidden",
        "problem": problem,
        "given": given[:_GIVEN_CHARACTERS],
        "allowed": list(allowed),
    }


def _repeated(name: str, count: int) -> dict[str, Any]:
    return {
        "field": name,
        "in": "query",
        "type": "repeated",
        "problem": f"appears {count} times; it takes one value, so send it once",
        "count": count,
        "limit": 1,
    }


def _empty(name: str) -> dict[str, Any]:
    return {
        "field": name,
        "in": "query",
        "type": "empty",
        "problem": "is empty; give it a value, or leave it out",
        "given": "",
    }


def _not_digits(name: str, given: str) -> dict[str, Any]:
    return {
        "field": name,
        "in": "query",
        "type": "int_parsing",
        "problem": "is not a whole number written in digits (0-9, an optional leading minus; "
        "no sign +, space or underscore)",
        "given": given[:_GIVEN_CHARACTERS],
    }


def query_problems(route: QueryRoute, items: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
    """What is wrong with a query string (its `(name, value)` pairs, in order) for `route`: one
    problem per parameter, the first rule it breaks of unknown, repeated, empty, and at most
    MOST_PROBLEMS of them."""
    spec = spec_of(route)
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name, []).append(value)
    problems: list[dict[str, Any]] = []
    for name, given in values.items():
        if name not in spec.names:
            problems.append(_unknown(name, given[0], spec.names))
        elif len(given) > 1 and name not in spec.repeatable:
            problems.append(_repeated(name, len(given)))
        elif name in spec.empty_refused and any(value == "" for value in given):
            problems.append(_empty(name))
        elif name in spec.whole_numbers and not all(_DIGITS.fullmatch(value) for value in given):
            problems.append(_not_digits(name, next(v for v in given if not _DIGITS.fullmatch(v))))
    return problems[:MOST_PROBLEMS]


__all__ = [
    "EMPTY_MEANS_DEFAULT",
    "MOST_PROBLEMS",
    "EmptyMeansDefault",
    "QueryRoute",
    "QuerySpec",
    "query_parameter_names",
    "query_problems",
    "spec_of",
]
