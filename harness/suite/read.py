"""Reading a suite file: bytes -> YAML -> the ``plugins:`` it needs.

This is the first of a suite's two steps. A suite's ``plugins:`` can add the very
scenarios, methods and tasks the rest of the file names, so :func:`read_suite` only parses
the YAML (keeping ruamel's round-trip types, which know every line) and checks the plugin
list; the caller then loads those plugins and hands the :class:`SuiteFile` to
:func:`harness.suite.resolve.resolve_suite`, which checks everything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from harness.canonical import describe
from harness.suite.checker import Loc, SuiteChecker, SuiteError, SuiteIssue

#: Every key a suite's top level may have, in the order the docs list them.
TOP_KEYS = (
    "name",
    "description",
    "scenario",
    "plugins",
    "models",
    "tasks",
    "methods",
    "seeds",
    "exclude",
    "views",
    "measure",
    "limits",
    "executor",
    "isolation",
    "workers",
    "resources",
    "ray",
    "slurm",
    "device",
)


@dataclass(frozen=True)
class SuiteFile:
    """A parsed suite, before its plugins are loaded and the rest is validated.

    ``data`` is ruamel's round-trip mapping: it remembers where every key and item was
    written, which is how issues find their line.
    """

    path: Path
    text: str
    data: Any
    plugins: tuple[str, ...]


def read_suite(path: str | Path) -> SuiteFile:
    """Parse a suite file and extract its ``plugins:`` list.

    Raises :class:`SuiteError` for invalid YAML, a top level that is not a mapping, or a
    malformed ``plugins:`` list (the rest can't be checked before the plugins load).
    ``OSError`` from reading the file propagates.
    """
    path = Path(path)
    file = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        issue = SuiteIssue(file, line, "(file)", f"not UTF-8 text: {exc.reason}")
        raise SuiteError([issue]) from None
    try:
        data = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        raise SuiteError([_yaml_issue(file, exc)]) from None
    except YAMLError as exc:  # unmarked errors are rare; blame the first line
        raise SuiteError([SuiteIssue(file, 1, "(yaml)", f"invalid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        line = data.lc.line + 1 if isinstance(data, (CommentedMap, CommentedSeq)) else 1
        found = "an empty document" if data is None else describe(data)
        raise SuiteError([SuiteIssue(
            file, line, "(top level)",
            f"expected a mapping of suite keys ({', '.join(TOP_KEYS[:6])}, …), got {found}",
        )])
    checker = SuiteChecker(file, data)
    plugins = _read_plugins(checker, path)
    checker.raise_if_any()
    return SuiteFile(path=path, text=text, data=data, plugins=plugins)


def _yaml_issue(file: str, exc: MarkedYAMLError) -> SuiteIssue:
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    problem = exc.problem or exc.context or "cannot parse"
    message = f"invalid YAML: {problem}"
    if exc.problem and exc.context:
        context = exc.context
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            context += f" at line {exc.context_mark.line + 1}"
        message += f" ({context})"
    return SuiteIssue(file, line, "(yaml)", message)


def _read_plugins(checker: SuiteChecker, path: Path) -> tuple[str, ...]:
    """Check ``plugins:``: module names or ``.py`` paths (relative to the suite's folder)."""
    if "plugins" not in checker.data or checker.data["plugins"] is None:
        return ()
    raw = checker.data["plugins"]
    if not isinstance(raw, list):
        checker.error(("plugins",), "expected a list of plugin module names or .py paths, "
                      f"got {describe(raw)}")
        return ()
    plugins: list[str] = []
    for i, spec in enumerate(raw):
        loc: Loc = ("plugins", i)
        if not isinstance(spec, str) or not spec.strip():
            checker.error(loc, f"expected a module name or a .py path, got {describe(spec)}")
            continue
        if spec in plugins:
            checker.error(loc, f"plugin '{spec}' is listed twice")
            continue
        if spec.endswith(".py") or "/" in spec:
            file = Path(spec) if Path(spec).is_absolute() else path.parent / spec
            if not file.is_file():
                checker.error(loc, f"no plugin file {file} (relative paths start at the suite's "
                              "folder)")
                continue
        elif not all(part.isidentifier() for part in spec.split(".")):
            checker.error(loc, f"'{spec}' is neither a module name (like 'my_pkg.plugin') "
                          "nor a .py path")
            continue
        plugins.append(spec)
    return tuple(plugins)
