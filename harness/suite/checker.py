"""Reporting mistakes in a hand-written YAML file: where they are, what was expected.

A suite is read completely before anything runs, so its readers never stop at the first
mistake: they record each one on a :class:`SuiteChecker` and go on. The checker knows the
parsed YAML (ruamel's round-trip types remember the line of every key and item), so a
mistake is recorded against a field path such as ``methods[1].grid.bits`` and reported at
its line. :func:`validate` turns pydantic's errors into the same kind of issue, and the
helpers below word values the way a reader wrote them (``4``, ``'x'``, ``null``).

Nothing here knows what a suite means; :mod:`harness.suite.read` and
:mod:`harness.suite.resolve` decide what is a mistake.
"""

from __future__ import annotations

import contextlib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from harness.canonical import canonical_json, describe, shorten
from harness.registry import did_you_mean, suggest

#: Where a value is in the parsed YAML: keys and list indices from the top level down.
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class SuiteIssue:
    """One mistake in a suite file, where it is and what was expected."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class SuiteError(Exception):
    """Every issue found in a suite; ``str()`` lists them one per line, by line number."""

    def __init__(self, issues: Sequence[SuiteIssue]) -> None:
        self.issues: list[SuiteIssue] = sorted(issues, key=lambda issue: issue.line)
        super().__init__("\n".join(str(issue) for issue in self.issues))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


class SuiteChecker:
    """Collects issues and finds the line of any key path in the parsed YAML.

    Every reader of a suite field takes one (as ``checker``) and records its mistakes with
    :meth:`error`; :meth:`raise_if_any` ends a step with all of them. What still works but
    should change (a deprecated key) is a :meth:`warn`ing, kept in ``warnings``.
    """

    def __init__(self, file: str, data: Any) -> None:
        self.file = file
        self.data = data
        self.issues: list[SuiteIssue] = []
        self.warnings: list[SuiteIssue] = []
        self._seen: set[tuple[int, str, str]] = set()

    def warn(self, loc: Loc, message: str) -> None:
        """Record a warning for field ``loc``: the suite runs, but should be changed."""
        self.warnings.append(SuiteIssue(self.file, self.line(loc), field_name(loc), message))

    def line(self, loc: Loc) -> int:
        """The line of the deepest part of ``loc`` that exists (1-based)."""
        node = self.data
        line = node.lc.line + 1 if isinstance(node, (CommentedMap, CommentedSeq)) else 1
        for step in loc:
            try:
                if isinstance(node, CommentedMap) and step in node:
                    with contextlib.suppress(KeyError, IndexError, TypeError):
                        line = node.lc.key(step)[0] + 1
                    node = node[step]
                elif (isinstance(node, CommentedSeq) and isinstance(step, int)
                      and 0 <= step < len(node)):
                    with contextlib.suppress(KeyError, IndexError, TypeError):
                        line = node.lc.item(step)[0] + 1
                    node = node[step]
                else:
                    break
            except TypeError:  # an unhashable step
                break
        return line

    def earlier(self, first: Loc, again: Loc) -> str:
        """``already at line N`` for a repeated item, or ``listed twice`` on one line."""
        line = self.line(first)
        return "listed twice" if line == self.line(again) else f"already at line {line}"

    def error(self, loc: Loc, message: str, *, at: Loc | None = None) -> None:
        """Record an issue for field ``loc``, at the line of ``at`` (default ``loc``)."""
        line = self.line(loc if at is None else at)
        field = field_name(loc)
        if (line, field, message) in self._seen:
            return
        self._seen.add((line, field, message))
        self.issues.append(SuiteIssue(self.file, line, field, message))

    def check_keys(self, loc: Loc, mapping: Mapping[Any, Any], allowed: Sequence[str],
                   what: str) -> bool:
        """Flag keys of ``mapping`` not in ``allowed``, with near misses."""
        ok = True
        for key in mapping:
            if key not in allowed:
                message = f"unknown {what} '{key}'"
                if isinstance(key, str):
                    message += did_you_mean(key, list(allowed))
                self.error((*loc, key), f"{message} (allowed: {', '.join(allowed)})")
                ok = False
        return ok

    def raise_if_any(self) -> None:
        if self.issues:
            raise SuiteError(self.issues)


def field_name(loc: Loc) -> str:
    """``methods[1].grid.bits``: a location as the field it names, for an issue."""
    out = ""
    for depth, step in enumerate(loc):
        # the top level is a mapping, so an int there is a key, not an index
        if isinstance(step, int) and not isinstance(step, bool) and depth > 0:
            out += f"[{step}]"
        else:
            out += ("." if out else "") + str(step)
    return out or "(top level)"


def plain(value: Any) -> Any:
    """ruamel's round-trip types -> plain Python (dict, list, int, float, str, bool)."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def is_int(value: Any) -> bool:
    """An integer and not a boolean (YAML's ``true`` is an int to Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def safe_json(value: Any) -> str:
    """A value's canonical JSON, or its ``repr`` when it has none: a key for comparing."""
    try:
        return canonical_json(plain(value))
    except TypeError:
        return repr(value)


def yaml_value(value: Any) -> str:
    """A value as it would be written in the suite (``4``, ``'x'``, ``null``)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return shorten(canonical_json(plain(value)))
    except TypeError:
        return shorten(repr(value))


def quoted(names: Sequence[str]) -> str:
    """``'a', 'b'``: names quoted and listed."""
    return ", ".join(f"'{n}'" for n in names)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def did_you_mean_key(mapping: Mapping[Any, Any], wanted: list[str]) -> str:
    """`` ('rfe' looks like a typo of 'ref')`` for the first key of ``mapping`` close to one
    of ``wanted``, else an empty string."""
    for key in mapping:
        if isinstance(key, str) and suggest(key, wanted):
            return f" ('{key}' looks like a typo of {quoted(suggest(key, wanted))})"
    return ""


# --------------------------------------------------------------------------- pydantic


def validate(
    checker: SuiteChecker,
    schema: type[BaseModel],
    values: dict[str, Any],
    key_locs: Mapping[Any, Loc],
    value_locs: Mapping[Any, Loc],
    base_loc: Loc,
    owner: str,
) -> BaseModel | None:
    """Validate ``values`` with a pydantic schema, turning its errors into issues.

    ``key_locs`` say where each key is written (unknown keys point there), ``value_locs``
    where its value is (a grid key's value is one item of its list).
    """
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    except Exception as exc:  # a plugin's validator raising something else
        checker.error(base_loc, f"{owner}: {type(exc).__name__}: {exc}")
        return None
    fields = schema.model_fields
    for error in errors:
        loc, kind = error["loc"], error["type"]
        if not loc:
            shown = ", ".join(f"{k}={yaml_value(v)}" for k, v in values.items())
            checker.error(base_loc, f"{owner}: {_lower_first(error['msg'])} "
                          f"(params: {shown or 'none'})")
            continue
        key, rest = loc[0], tuple(loc[1:])
        if kind == "extra_forbidden" and not rest:
            names = list(fields)
            if names:
                message = (f"unknown parameter '{key}' for {owner}"
                           + did_you_mean(str(key), names)
                           + f" (its parameters: {', '.join(names)})")
            else:
                message = f"unknown parameter '{key}': {owner} takes no parameters"
            checker.error(key_locs.get(key, (*base_loc, key)), message)
            continue
        if kind == "missing" and not rest:
            expected = _type_name(fields[key].annotation) if key in fields else "a value"
            checker.error((*base_loc, key), f"required parameter of {owner} missing (expected "
                          f"{expected})", at=base_loc)
            continue
        where = (*value_locs.get(key, (*base_loc, key)), *rest)
        found = describe(error.get("input"))
        if _is_type_error(kind):
            if not rest and key in fields:
                expected = _type_name(fields[key].annotation)
            else:
                expected = _PYDANTIC_EXPECTED.get(kind, _lower_first(error["msg"]))
            checker.error(where, f"expected {expected}, got {found}")
        else:
            checker.error(where, f"{_lower_first(error['msg'])} (got {found})")
    return None


_PYDANTIC_EXPECTED = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "a boolean",
    "bool_type": "a boolean",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "none_required": "null",
}


def _is_type_error(kind: str) -> bool:
    return kind.endswith(("_type", "_parsing")) or kind in (
        "int_from_float", "literal_error", "enum", "is_instance_of",
    )


def _type_name(annotation: Any) -> str:
    """A reader's name for a type: ``an integer``, ``a number or null``, ``one of 'a', 'b'``."""
    simple = {
        int: "an integer", float: "a number", str: "a string", bool: "a boolean (true/false)",
        list: "a list", tuple: "a list", dict: "a mapping", type(None): "null",
    }
    if annotation in simple:
        return simple[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(yaml_value(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin in simple:
        return simple[origin]
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
