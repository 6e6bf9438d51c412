"""What is wrong with a request, field by field: the `problems` list of an INVALID_REQUEST.

Why its own module: the schema's complaints (pydantic errors) and the service's own checks of
query mini-languages (`status=`, `threshold=`) must read alike to a caller, each problem with
its field, where it was (`body`, `query`, `path`), what was given and what would be allowed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, get_args

from fastapi import Request
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.http.query_params import query_parameter_names

_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")
_SURROGATE = re.compile("[\ud800-\udfff]")


class InvalidRequest(Exception):
    """A request the schema alone cannot judge (query mini-languages) but is still malformed."""

    def __init__(self, problems: Sequence[Mapping[str, Any]]) -> None:
        super().__init__(summary(problems))
        self.problems = [dict(p) for p in problems]


def summary(problems: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{p['field']}: {p['problem']}" for p in problems)


def json_type(value: Any) -> str:
    """The JSON type of a parsed JSON value, as a refusal names what was sent: object, array,
    string, number, boolean or null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def not_json_type(value: Any) -> str:
    """What was sent, to follow "must be ...": `not a JSON string`, `not JSON null`."""
    kind = json_type(value)
    return "not JSON null" if kind == "null" else f"not a JSON {kind}"


def _field_path(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _model_field_names(annotation: Any) -> list[str] | None:
    """The wire names of the model an annotation names (itself or a member of its union)."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [f.alias or name for name, f in candidate.model_fields.items()]
    return None


def _body_field_names(request: Request) -> list[str]:
    """The wire names of the route's body model, to list next to an unknown field."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return []
    return _model_field_names(route.body_field.field_info.annotation) or []


def _query_parameter_names(request: Request) -> list[str]:
    """The route's query parameters (a query model's fields included), to list next to an unknown one."""
    route = request.scope.get("route")
    return query_parameter_names(route) if isinstance(route, APIRoute) else []


def problem_from_pydantic(error: Mapping[str, Any], request: Request) -> dict[str, Any]:
    """One pydantic error as a caller-readable problem: where, what, and what would be allowed."""
    loc = tuple(error.get("loc", ()))
    where = str(loc[0]) if loc else "body"
    field = _field_path(loc[1:]) or where
    kind = str(error.get("type", "invalid"))
    problem: dict[str, Any] = {
        "field": field,
        "in": where,
        "type": kind,
        "problem": str(error.get("msg", "")),
    }
    given = error.get("input")
    if isinstance(given, str | int | float | bool) and kind not in ("missing", "json_invalid"):
        # Echo what was sent, at most 200 characters of it, and never what JSON cannot carry (NaN).
        if isinstance(given, float) and not math.isfinite(given):
            given = str(given)
        # A lone surrogate cannot be written as UTF-8: show U+FFFD in its place.
        problem["given"] = _SURROGATE.sub("\ufffd", given[:200]) if isinstance(given, str) else given
    ctx = error.get("ctx") or {}
    if kind in ("enum", "literal_error") and "expected" in ctx:
        problem["allowed"] = _QUOTED.findall(str(ctx["expected"]))
        problem["problem"] = f"must be one of: {', '.join(problem['allowed'])}"
    elif kind == "extra_forbidden" and where == "query":
        problem["field"] = str(loc[-1])  # as sent, even empty (`?=x`)
        problem["problem"] = "is not a query parameter of this request"
        known = _query_parameter_names(request)
        if known:
            problem["allowed"] = known
            problem["problem"] += f"; known parameters: {', '.join(known)}"
    elif kind == "extra_forbidden":
        problem["problem"] = "is not a field of this request"
        known = _body_field_names(request) if where == "body" and len(loc) == 2 else []
        if known:
            problem["allowed"] = known
            problem["problem"] += f"; known fields: {', '.join(known)}"
    elif kind == "missing":
        problem["problem"] = "is required"
    elif kind == "model_attributes_type" and loc == ("body",):
        if isinstance(given, bytes):
            # FastAPI hands the raw bytes over when the Content-Type is not JSON (or there is none).
            problem["problem"] = "must be a JSON object, sent with Content-Type: application/json"
        else:
            # Valid JSON of another type (`"x"`, `null`, `[...]`): the Content-Type was right,
            # so say what the body is instead.
            problem["problem"] = f"must be a JSON object, {not_json_type(given)}"
            problem["jsonType"] = json_type(given)
            problem["allowed"] = ["object"]
    elif kind == "uuid_parsing":
        problem["problem"] = "must be a UUID, like 2f1c7e8a-3b9d-4c6e-9a51-0d2b7f4e8c13"
    elif kind in ("too_long", "too_short", "string_too_long", "string_too_short") and isinstance(
        error.get("input"), str
    ):
        # pydantic counts a constrained text's length in "items": for a string they are characters.
        longest = kind.endswith("too_long")
        bound = ctx.get("max_length" if longest else "min_length")
        most = "at most" if longest else "at least"
        problem["problem"] = f"must be {most} {bound} characters (this one has {len(error['input'])})"
        problem["limit"] = bound
    return problem


# The shape a union member's tag names (`str`, `function-after[_no_nul(), str]`, `list[...]`).
_SHAPES: Final[Mapping[str, tuple[str, str]]] = {
    "str": ("a string", "strings"),
    "bool": ("a boolean", "booleans"),
    "int": ("an integer", "integers"),
    "float": ("a number", "numbers"),
    "none": ("null", "nulls"),
    "uuid": ("a UUID", "UUIDs"),
    "dict": ("an object", "objects"),
}
_WRAPPED = re.compile(r"^function-\w+\[.*, (?P<inner>[^,]+)\]$")
_LISTED = re.compile(r"^(?:list|tuple|set)\[(?P<inner>.*)\]$")


def _is_union_tag(part: int | str) -> bool:
    """A part of an error's location that names a union member, not a field (fields have no brackets)."""
    return isinstance(part, str) and ("[" in part or part in _SHAPES)


def _shape(tag: str, plural: bool = False) -> str:
    wrapped = _WRAPPED.match(tag)
    if wrapped:
        return _shape(wrapped["inner"], plural)
    listed = _LISTED.match(tag)
    if listed:
        return ("lists of " if plural else "a list of ") + _shape(listed["inner"], plural=True)
    known = _SHAPES.get(tag)
    if known is None:
        return tag
    return known[1] if plural else known[0]


def problems_from_pydantic(errors: Sequence[Mapping[str, Any]], request: Request) -> list[dict[str, Any]]:
    """Every pydantic error as a problem, a union's failed members as one problem on its field.

    pydantic reports a value that fits no member of `str | list[str] | bool` once per member,
    each located under the member's internal tag; a caller needs the field and the shapes it
    takes ("answer: must be a string, a list of strings or a boolean").
    """
    problems: list[dict[str, Any]] = []
    unions: dict[tuple[Any, ...], dict[str, Any]] = {}
    for error in errors:
        loc = tuple(error.get("loc", ()))
        # An unknown field's name is the caller's (`?[=x`, `{"str": 1}`), never a union's tag.
        tags = loc[:-1] if error.get("type") == "extra_forbidden" else loc
        at = next((i for i, part in enumerate(tags) if i > 0 and _is_union_tag(part)), None)
        if at is None:
            problems.append(problem_from_pydantic(error, request))
            continue
        head = loc[:at]
        shape = _shape(str(loc[at]))
        merged = unions.get(head)
        if merged is None:
            merged = problem_from_pydantic({**error, "loc": head, "type": "union_type"}, request)
            merged["allowed"] = []
            unions[head] = merged
            problems.append(merged)
        if shape not in merged["allowed"]:
            merged["allowed"].append(shape)
        shapes = merged["allowed"]
        listed = ", ".join(shapes[:-1]) + f" or {shapes[-1]}" if len(shapes) > 1 else shapes[0]
        merged["problem"] = f"must be {listed}"
    return problems


__all__ = [
    "InvalidRequest",
    "json_type",
    "not_json_type",
    "problem_from_pydantic",
    "problems_from_pydantic",
    "summary",
]
