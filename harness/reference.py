"""Components in words: one line each for ``harness list``, a full reference for ``harness
show``, and the params tables of the README, all from the registered objects themselves.

A param's doc is its schema field's description (a docstring under the field, or
``Field(description=...)``), so a param is documented once, where it is declared, and every
place that shows it reads it from there.
"""

from __future__ import annotations

import inspect
import shutil
import textwrap
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any, Literal, Union

import annotated_types
from pydantic import BaseModel

from harness.canonical import canonical_json

__all__ = ["KINDS", "ParamDoc", "builtin_suites", "list_lines", "param_docs", "params_table",
           "reference"]

#: What ``harness show`` and ``harness list`` name, and the registry each reads.
KINDS = {"method": "methods", "scenario": "scenarios", "task": "tasks", "model": "models",
         "source": "model_sources"}


@dataclass(frozen=True)
class ParamDoc:
    """One param of a schema, as a reader needs it."""

    name: str
    type: str
    default: str
    allowed: str  # bounds or choices ("2 ≤ x ≤ 8", "one of 'a', 'b'"), "" if any value
    doc: str


def _type(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "choice"
    if origin is Union or origin is types.UnionType:
        return " | ".join(dict.fromkeys(_type(a) for a in args))
    if annotation is type(None):
        return "null"
    if origin is not None:
        inner = ", ".join(_type(a) for a in args if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _value(value: Any) -> str:
    try:
        return canonical_json(value)
    except TypeError:
        return repr(value)


def _allowed(annotation: Any, metadata: Iterable[Any]) -> str:
    choices = [a for a in _flatten(annotation) if typing.get_origin(a) is Literal]
    if choices:
        values = [v for a in choices for v in typing.get_args(a)]
        return "one of " + ", ".join(_value(v) for v in values)
    low = high = ""
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"{_value(item.ge)} ≤ "
        elif isinstance(item, annotated_types.Gt):
            low = f"{_value(item.gt)} < "
        elif isinstance(item, annotated_types.Le):
            high = f" ≤ {_value(item.le)}"
        elif isinstance(item, annotated_types.Lt):
            high = f" < {_value(item.lt)}"
    return f"{low}x{high}" if low or high else ""


def _flatten(annotation: Any) -> list[Any]:
    origin = typing.get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        return [a for arg in typing.get_args(annotation) for a in _flatten(arg)]
    return [annotation]


def param_docs(schema: Any) -> list[ParamDoc]:
    """Every field of a pydantic params schema, with its type, default, bounds and doc."""
    if not (isinstance(schema, type) and issubclass(schema, BaseModel)):
        return []
    docs = []
    for name, info in schema.model_fields.items():
        default = "required" if info.is_required() else _value(info.get_default(
            call_default_factory=True))
        docs.append(ParamDoc(name, _type(info.annotation), default,
                             _allowed(info.annotation, info.metadata),
                             (info.description or "").strip()))
    return docs


def builtin_suites() -> dict[str, Traversable]:
    """The suites that ship with harness, by name (the file name without ``.yaml``)."""
    folder = resources.files("harness_suites")
    found = {entry.name.removesuffix(".yaml"): entry for entry in folder.iterdir()
             if entry.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def _width() -> int:
    return shutil.get_terminal_size().columns


def _one_line(name: str, middle: str, description: str, name_width: int, width: int) -> str:
    """``name  middle  description``: the name whole, the description cut first."""
    head = f"{name.ljust(name_width)}  {middle}"
    room = width - len(head) - 2
    text = " ".join(description.split())
    if room < 8:  # not even a few words fit: the head alone, whole
        return head.rstrip()
    if len(text) > room:
        text = text[:room - 1].rstrip() + "…"
    return f"{head}  {text}".rstrip()


def list_lines(entries: Iterable[tuple[str, str, str]],
               width: int | None = None) -> Iterator[str]:
    """One line per component (name, what it belongs to, description), at most ``width``
    characters (the terminal's, or ``COLUMNS``) unless a name alone is longer."""
    width = width or _width()
    rows = list(entries)
    name_width = min(max((len(n) for n, _, _ in rows), default=0), max(width // 3, 12))
    middle_width = min(max((len(m) for _, m, _ in rows), default=0), max(width // 4, 10))
    for name, middle, description in rows:
        if len(middle) > middle_width:
            middle = middle[:middle_width - 1] + "…"
        yield _one_line(name, middle.ljust(middle_width), description, name_width, width)


def _section(title: str, body: str) -> str:
    return f"{title}\n{textwrap.indent(body.rstrip(), '  ')}" if body.strip() else ""


def params_block(schema: Any, width: int | None = None) -> str:
    """A schema's params, one paragraph each: ``name: type = default (bounds)``, doc."""
    width = width or _width()
    lines = []
    for p in param_docs(schema):
        allowed = f"  ({p.allowed})" if p.allowed else ""
        lines.append(f"{p.name}: {p.type} = {p.default}{allowed}")
        doc = p.doc or "(no description)"
        lines += textwrap.wrap(doc, max(width - 6, 30), initial_indent="    ",
                               subsequent_indent="    ")
    return "\n".join(lines) or "no params"


def reference(kind: str, name: str, item: Any, plugin: str, plugin_version: str,
              scenarios: Any, width: int | None = None) -> str:
    """The full reference of one component for ``harness show``: what it is, where it comes
    from, what it plugs into, and every param with its doc."""
    width = width or _width()
    head = [f"{kind} {name}", f"  plugin: {plugin}{f' {plugin_version}' if plugin_version else ''}"]
    for attribute in ("version", "role", "scenario"):
        value = getattr(item, attribute, None)
        if value:
            head.append(f"  {attribute}: {value}")
    if kind == "model":
        head.append(f"  kinds: {', '.join(getattr(item, 'kinds', ()))}")
    parts = ["\n".join(head), _section("description", textwrap.fill(
        " ".join(str(getattr(item, "description", "")).split()), max(width - 2, 30)))]
    if kind == "method":
        lines = []
        for scenario_name in getattr(item, "scenarios", ()):
            scenario = dict(scenarios).get(scenario_name)
            protocol = ", ".join(getattr(scenario, "method_protocol", ())) or "nothing extra"
            lines.append(f"{scenario_name}: provides {protocol}"
                         f"  (harness show scenario {scenario_name})")
        parts.append(_section("scenarios", "\n".join(lines)))
    if kind == "scenario":
        protocol = ", ".join(getattr(item, "method_protocol", ())) or "nothing extra"
        parts.append(_section("method protocol", protocol))
        columns = getattr(item, "columns", None)
        if columns is not None:
            parts.append(_section("leaderboard columns", "\n".join(columns.describe())))
        contract = getattr(item, "contract", None) or inspect.getdoc(type(item)) or ""
        parts.append(_section("method contract", inspect.cleandoc(contract)))
    if kind != "scenario" or getattr(item, "params", None) is not None:
        parts.append(_section("params", params_block(getattr(item, "params", None), width)))
    return "\n\n".join(p for p in parts if p) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def params_table(methods: Iterable[tuple[str, Any]]) -> str:
    """A Markdown table of the params of ``(name, schema)`` methods: one row per param, with
    its default, allowed values and doc (the README's tables are written from this)."""
    lines = ["| method | param | default | allowed | what |", "|---|---|---|---|---|"]
    for name, schema in methods:
        docs = param_docs(schema)
        if not docs:
            lines.append(f"| `{name}` | — | | | no params |")
        for i, p in enumerate(docs):
            method = f"`{name}`" if i == 0 else ""
            lines.append(f"| {method} | `{p.name}` | `{_cell(p.default)}` | {_cell(p.allowed)} "
                         f"| {_cell(p.doc)} |")
    return "\n".join(lines)
