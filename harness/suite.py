"""Suite YAML -> validated spec -> expanded runs.

A suite is data written by hand, so it is validated completely before anything runs and
every mistake is reported at once: each :class:`SuiteIssue` names the file and line, the
field (a dotted path such as ``methods[1].grid.bits``), what was expected and, for unknown
names, the near misses. Reading happens in two steps because a suite's ``plugins:`` can add
the very scenarios, methods and tasks the rest of the file names: :func:`read_suite` parses
the YAML and extracts the plugin list, the caller loads those plugins, and
:func:`resolve_suite` validates everything else against the loaded components and expands
the matrix models × tasks × methods (× grid) × seeds into :class:`~harness.api.RunSpec`\\ s.

A run's key hashes its fully resolved config (defaults filled in, method plugin and
version, device and hardware, measure settings) as canonical JSON, so reordering keys in
the YAML, renaming the suite or changing its timeout never invalidates stored results.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from harness.api import RESERVED_MODEL_KEYS, MeasureSettings, RunSpec
from harness.executors import EXECUTORS
from harness.registry import Components, RegistryError, did_you_mean, suggest

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ISOLATIONS",
    "Suite",
    "SuiteError",
    "SuiteFile",
    "SuiteIssue",
    "canonical_json",
    "read_suite",
    "resolve_suite",
    "run_key",
]

#: Worker isolation modes (``isolation:``): reuse a worker process, or a fresh one per run.
ISOLATIONS = ("worker", "run")
#: Per-run time limit when ``limits.timeout`` is not given.
DEFAULT_TIMEOUT_S = 1800.0

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
    "measure",
    "limits",
    "executor",
    "isolation",
    "workers",
    "device",
)
TASK_KEYS = ("name", "params")
METHOD_KEYS = ("name", "params", "grid")
EXCLUDE_KEYS = ("model", "task", "method", "seed", "params", "task_params")
LIMIT_KEYS = ("timeout",)
MAX_SEED = 2**32 - 1

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_LOCAL_PREFIXES = ("./", "../", "/")

Loc = tuple[str | int, ...]


# --------------------------------------------------------------------------- public types


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


@dataclass(frozen=True)
class Suite:
    """A validated suite and its expanded runs (after ``exclude``)."""

    name: str
    description: str
    path: Path
    text: str
    scenario: str
    executor: str
    isolation: str
    #: Worker processes on a CPU device, each with an equal share of the cores as torch
    #: threads (a CUDA device gets one worker per visible GPU).
    workers: int
    #: The resolved device (``cpu``, ``cuda``, ``cuda:1``), not the ``auto`` written.
    device: str
    measure: MeasureSettings
    timeout_s: float | None
    plugins: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    #: How many runs of the full matrix ``exclude`` removed.
    excluded: int


# --------------------------------------------------------------------------- run keys


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no spaces and shortest round-trip floats: one text per value.

    Non-finite floats become the strings ``"nan"``, ``"inf"`` and ``"-inf"`` (JSON has
    none); ``-0.0`` becomes ``0.0``. Raises :class:`TypeError` for values JSON can't hold.
    """
    return json.dumps(
        _canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        allow_nan=False,
    )


def run_key(config: Mapping[str, Any]) -> str:
    """The run key: the first 16 hex digits of the SHA-256 of ``canonical_json(config)``."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:16]


def _canonical(obj: Any) -> Any:
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "nan"
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
        return float(obj) + 0.0  # -0.0 + 0.0 == 0.0
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, BaseModel):
        return _canonical(obj.model_dump(mode="json"))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"mapping keys must be strings, got {_describe(key)}")
            out[str(key)] = _canonical(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(value) for value in obj]
    raise TypeError(f"cannot turn {type(obj).__name__} {obj!r} into canonical JSON")


# --------------------------------------------------------------------------- reading


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
        found = "an empty document" if data is None else _describe(data)
        raise SuiteError([SuiteIssue(
            file, line, "(top level)",
            f"expected a mapping of suite keys ({', '.join(TOP_KEYS[:6])}, …), got {found}",
        )])
    checker = _Checker(file, data)
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


def _read_plugins(c: _Checker, path: Path) -> tuple[str, ...]:
    """Check ``plugins:``: module names or ``.py`` paths (relative to the suite's folder)."""
    if "plugins" not in c.data or c.data["plugins"] is None:
        return ()
    raw = c.data["plugins"]
    if not isinstance(raw, list):
        c.error(("plugins",), "expected a list of plugin module names or .py paths, "
                f"got {_describe(raw)}")
        return ()
    plugins: list[str] = []
    for i, spec in enumerate(raw):
        loc: Loc = ("plugins", i)
        if not isinstance(spec, str) or not spec.strip():
            c.error(loc, f"expected a module name or a .py path, got {_describe(spec)}")
            continue
        if spec in plugins:
            c.error(loc, f"plugin '{spec}' is listed twice")
            continue
        if spec.endswith(".py") or "/" in spec:
            file = Path(spec) if Path(spec).is_absolute() else path.parent / spec
            if not file.is_file():
                c.error(loc, f"no plugin file {file} (relative paths start at the suite's "
                        "folder)")
                continue
        elif not all(part.isidentifier() for part in spec.split(".")):
            c.error(loc, f"'{spec}' is neither a module name (like 'my_pkg.plugin') "
                    "nor a .py path")
            continue
        plugins.append(spec)
    return tuple(plugins)


# --------------------------------------------------------------------------- resolving


@dataclass
class _Variant:
    """One method entry with one grid combination applied."""

    name: str
    version: str
    plugin: str
    params: dict[str, Any]
    loc: Loc


def resolve_suite(
    suite_file: SuiteFile,
    components: Components,
    resolve_device: Callable[[str], tuple[str, str]],
) -> Suite:
    """Validate a parsed suite against the loaded components and expand its runs.

    ``resolve_device`` maps the suite's ``device`` to ``(device, hardware label)`` and may
    raise :class:`ValueError`. Raises :class:`SuiteError` with every issue found.
    """
    c = _Checker(str(suite_file.path), suite_file.data)
    data = c.data
    base_dir = suite_file.path.resolve().parent

    c.check_keys((), data, TOP_KEYS, "suite key")
    for key in ("name", "scenario", "models", "tasks", "methods"):
        if key not in data:
            c.error((key,), _MISSING[key](components), at=())

    name = _string(c, "name", required=True) or ""
    description = _string(c, "description", required=False) or ""
    scenario_name = _string(c, "scenario", required=True)
    scenario = None
    if scenario_name is not None:
        try:
            scenario = components.scenarios.get(scenario_name)
        except RegistryError as exc:
            c.error(("scenario",), str(exc))

    executor = _choice(c, "executor", EXECUTORS)
    isolation = _choice(c, "isolation", ISOLATIONS)
    workers = _workers(c)
    device, hardware = _device(c, resolve_device)
    measure = _measure(c)
    timeout_s = _timeout(c)
    seeds = _seeds(c)
    models = _models(c, components, base_dir)
    tasks = _tasks(c, components, scenario_name if scenario is not None else None)
    variants = _methods(c, components, scenario_name if scenario is not None else None, scenario)
    matrix_complete = not c.issues
    excludes = _excludes(c)

    runs: list[RunSpec] = []
    origins: dict[str, tuple[Loc, ...]] = {}
    for (model, model_loc), (task, task_params, task_loc), variant, (seed, seed_loc) in (
        itertools.product(models, tasks, variants, seeds)
    ):
        config = {
            "scenario": scenario_name,
            "model": copy.deepcopy(model),
            "task": {"name": task, "params": copy.deepcopy(task_params)},
            "method": {
                "name": variant.name,
                "version": variant.version,
                "plugin": variant.plugin,
                "params": copy.deepcopy(variant.params),
            },
            "seed": seed,
            "device": device,
            "hardware": hardware,
            "measure": measure.model_dump(mode="json"),
        }
        try:
            key = run_key(config)
        except TypeError as exc:  # options checked already; a plugin's params may not be
            c.error(variant.loc, f"run config is not plain data: {exc}")
            continue
        locs = (model_loc, task_loc, variant.loc, seed_loc)
        if key in origins:
            _duplicate(c, origins[key], locs)
            continue
        origins[key] = locs
        runs.append(RunSpec(
            run_key=key,
            suite=name,
            scenario=config["scenario"],
            model=config["model"],
            task=task,
            task_params=config["task"]["params"],
            method=variant.name,
            method_version=variant.version,
            method_plugin=variant.plugin,
            params=config["method"]["params"],
            seed=seed,
            device=device,
            measure=measure,
            timeout_s=timeout_s,
            config=config,
        ))

    kept = runs
    if matrix_complete and excludes:
        kept = _apply_excludes(c, runs, excludes)
    c.raise_if_any()
    return Suite(
        name=name,
        description=description,
        path=suite_file.path,
        text=suite_file.text,
        scenario=scenario_name or "",
        executor=executor,
        isolation=isolation,
        workers=workers,
        device=device,
        measure=measure,
        timeout_s=timeout_s,
        plugins=suite_file.plugins,
        runs=tuple(kept),
        excluded=len(runs) - len(kept),
    )


def _available(registry: Any) -> str:
    return ", ".join(registry.names()) or "none registered"


_MISSING: dict[str, Callable[[Components], str]] = {
    "name": lambda _: "missing: every suite needs a name (a string)",
    "scenario": lambda comp: (
        f"missing: expected the scenario every run uses (available: {_available(comp.scenarios)})"
    ),
    "models": lambda _: (
        "missing: expected a list of models, e.g. ['builtin:tiny-byte-lm', 'hf:gpt2']"
    ),
    "tasks": lambda comp: (
        f"missing: expected a list of tasks (available: {_available(comp.tasks)})"
    ),
    "methods": lambda comp: (
        f"missing: expected a list of methods (available: {_available(comp.methods)})"
    ),
}


def _string(c: _Checker, key: str, *, required: bool) -> str | None:
    if key not in c.data:
        return None
    value = c.data[key]
    if not isinstance(value, str) or (required and not value.strip()):
        found = "an empty string" if value == "" else _describe(value)
        c.error((key,), f"expected {'a non-empty' if required else 'a'} string, got {found}")
        return None
    return str(value)


def _choice(c: _Checker, key: str, choices: tuple[str, ...]) -> str:
    value = c.data.get(key, choices[0])
    if value not in choices or not isinstance(value, str):
        message = f"expected one of {_quoted(choices)}, got {_describe(value)}"
        if isinstance(value, str):
            message += did_you_mean(value, list(choices))
        c.error((key,), message)
        return choices[0]
    return value


def _workers(c: _Checker) -> int:
    value = c.data.get("workers", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        c.error(("workers",), f"expected a whole number of CPU worker processes >= 1, "
                              f"got {_describe(value)}")
        return 1
    return value


def _device(c: _Checker, resolve: Callable[[str], tuple[str, str]]) -> tuple[str, str]:
    spec = c.data.get("device", "auto")
    if not isinstance(spec, str) or not _DEVICE_RE.fullmatch(spec):
        c.error(("device",), f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {_describe(spec)}")
        return "cpu", "unknown"
    try:
        device, hardware = resolve(spec)
    except ValueError as exc:
        c.error(("device",), str(exc))
        return "cpu", "unknown"
    return device, hardware


def _measure(c: _Checker) -> MeasureSettings:
    raw = c.data.get("measure")
    if raw is None:
        return MeasureSettings()
    loc: Loc = ("measure",)
    fields = ", ".join(MeasureSettings.model_fields)
    if not isinstance(raw, dict):
        c.error(loc, f"expected a mapping of measure settings ({fields}), got {_describe(raw)}")
        return MeasureSettings()
    values = _plain(raw)
    key_locs = {k: (*loc, k) for k in raw}
    measure = _validate(c, MeasureSettings, values, key_locs, key_locs, loc, "measure settings")
    if measure is None:
        return MeasureSettings()
    ok = True

    def check(key: str, good: bool, expected: str) -> None:
        nonlocal ok
        if not good:
            ok = False
            c.error((*loc, key), f"expected {expected}, got {getattr(measure, key)}",
                    at=(*loc, key) if key in raw else loc)

    check("warmup", measure.warmup >= 0, "a number of warmup calls >= 0")
    check("min_repeats", measure.min_repeats >= 1, "at least 1 repeat")
    check("min_seconds", measure.min_seconds >= 0, "a number of seconds >= 0")
    check("max_seconds", measure.max_seconds > 0, "a positive number of seconds")
    check("max_cv", measure.max_cv is None or measure.max_cv > 0,
          "a positive coefficient of variation (e.g. 0.25) or null")
    if ok and measure.min_seconds > measure.max_seconds:
        key = "min_seconds" if "min_seconds" in raw else "max_seconds"
        c.error((*loc, key), f"min_seconds ({measure.min_seconds:g}) must not exceed "
                f"max_seconds ({measure.max_seconds:g})")
        return MeasureSettings()
    return measure if ok else MeasureSettings()


def _timeout(c: _Checker) -> float | None:
    raw = c.data.get("limits")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    if not isinstance(raw, dict):
        c.error(("limits",), f"expected a mapping like {{timeout: 600}}, got {_describe(raw)}")
        return DEFAULT_TIMEOUT_S
    c.check_keys(("limits",), raw, LIMIT_KEYS, "limits key")
    if "timeout" not in raw:
        return DEFAULT_TIMEOUT_S
    value = raw["timeout"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        c.error(("limits", "timeout"), "expected a positive number of seconds "
                f"(or null for no limit), got {_describe(value)}")
        return DEFAULT_TIMEOUT_S
    return float(value)


def _seeds(c: _Checker) -> list[tuple[int, Loc]]:
    if "seeds" not in c.data:
        return [(0, ())]
    raw = c.data["seeds"]
    if _is_int(raw):
        return [(int(raw), ("seeds",))] if _seed_ok(c, raw, ("seeds",)) else []
    if not isinstance(raw, list):
        c.error(("seeds",), f"expected a seed (an integer) or a list of them, got {_describe(raw)}")
        return []
    if not raw:
        c.error(("seeds",), "expected at least one seed, got an empty list")
        return []
    seeds: list[tuple[int, Loc]] = []
    seen: dict[int, Loc] = {}
    for i, seed in enumerate(raw):
        loc: Loc = ("seeds", i)
        if not _is_int(seed):
            c.error(loc, f"expected an integer seed, got {_describe(seed)}")
            continue
        if not _seed_ok(c, seed, loc):
            continue
        if seed in seen:
            c.error(loc, f"duplicate seed {seed} ({c.earlier(seen[seed], loc)})")
            continue
        seen[seed] = loc
        seeds.append((int(seed), loc))
    return seeds


def _seed_ok(c: _Checker, seed: int, loc: Loc) -> bool:
    if 0 <= seed <= MAX_SEED:
        return True
    c.error(loc, f"expected a seed between 0 and 2**32-1, got {seed}")
    return False


def _entries(c: _Checker, key: str, what: str) -> list[tuple[Any, Loc]]:
    """The items of a required non-empty list (``models``, ``tasks``, ``methods``)."""
    if key not in c.data:
        return []
    raw = c.data[key]
    if not isinstance(raw, list):
        c.error((key,), f"expected a non-empty list of {what}, got {_describe(raw)}")
        return []
    if not raw:
        c.error((key,), f"expected at least one entry ({what}), got an empty list")
        return []
    return [(entry, (key, i)) for i, entry in enumerate(raw)]


def _models(
    c: _Checker, components: Components, base_dir: Path
) -> list[tuple[dict[str, Any], Loc]]:
    models: list[tuple[dict[str, Any], Loc]] = []
    for entry, loc in _entries(c, "models", "model references 'SOURCE:ID' or {ref: ...} maps"):
        options: dict[str, Any] = {}
        if isinstance(entry, str):
            ref, ref_loc = entry, loc
        elif isinstance(entry, dict):
            if "ref" not in entry:
                keys = ", ".join(map(str, entry)) or "none"
                c.error(loc, "a model mapping needs 'ref: SOURCE:ID' (e.g. ref: hf:gpt2); "
                        f"found keys: {keys}" + _did_you_mean_key(entry, ["ref"]))
                continue
            ref, ref_loc = entry["ref"], (*loc, "ref")
            if not isinstance(ref, str):
                c.error(ref_loc, f"expected a model reference 'SOURCE:ID', got {_describe(ref)}")
                continue
            bad = False
            for key in entry:
                if key in RESERVED_MODEL_KEYS:
                    c.error((*loc, key), f"'{key}' is taken from ref (and a built-in model's "
                            "recipe); write 'ref: SOURCE:ID'")
                    bad = True
                elif not isinstance(key, str):
                    c.error((*loc, key), f"option names must be strings, got {_describe(key)}")
                    bad = True
            if bad:
                continue
            options = {k: _plain(v) for k, v in entry.items() if k != "ref"}
        else:
            c.error(loc, "expected a model reference 'SOURCE:ID' or a mapping with 'ref', "
                    f"got {_describe(entry)}")
            continue
        resolved = _resolve_ref(c, components, ref, ref_loc, base_dir)
        if resolved is None:
            continue
        source_name, ident, source = resolved
        schema = getattr(source, "params", None)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            key_locs = {k: (*loc, k) for k in options}
            validated = _validate(c, schema, options, key_locs, key_locs, loc,
                                  f"model source '{source_name}'")
            if validated is None:
                continue
            options = validated.model_dump(mode="json")
        else:
            try:
                canonical_json(options)
            except TypeError as exc:
                c.error(loc, f"model options must be plain data (strings, numbers, booleans, "
                        f"lists, mappings): {exc}")
                continue
        model = {"ref": ref, "source": source_name, "id": ident, **options}
        # A built-in model's version (its recipe hash) keys its runs: retrained, measured anew.
        if source_name == "builtin":
            version = getattr(components.models.get(ident), "version", None)
            if version is not None:
                model["version"] = version
        models.append((model, loc))
    return models


def _resolve_ref(
    c: _Checker, components: Components, ref: str, loc: Loc, base_dir: Path
) -> tuple[str, str, Any] | None:
    """``SOURCE:ID`` -> (source, resolved id, source object), or ``None`` after an issue."""
    source_name, sep, ident = ref.partition(":")
    if not sep:
        message = (f"expected 'SOURCE:ID' (e.g. 'builtin:tiny-byte-lm' or 'hf:gpt2'), "
                   f"got '{ref}' with no source")
        if ref in components.models:
            message += f"; did you mean 'builtin:{ref}'?"
        c.error(loc, message)
        return None
    try:
        source = components.model_sources.get(source_name)
    except RegistryError as exc:
        c.error(loc, f"in '{ref}': {exc}")
        return None
    if not ident:
        c.error(loc, f"'{ref}' has no ID after '{source_name}:'")
        return None
    if source_name == "builtin":
        if ident not in components.models:
            c.error(loc, components.models.unknown_message(ident))
            return None
    elif ident.startswith(_LOCAL_PREFIXES):
        path = Path(ident)
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if not path.exists():
            c.error(loc, f"no such local model path: {path}"
                    + (" (relative paths start at the suite's folder)" if ident[0] == "." else ""))
            return None
        ident = str(path)
    return source_name, ident, source


def _entry_name(
    c: _Checker, entry: Any, loc: Loc, keys: tuple[str, ...], kind: str
) -> tuple[str, Loc, dict[str, Any] | None] | None:
    """A ``name`` or ``{name: ..., ...}`` entry -> (name, where the name is, mapping)."""
    if isinstance(entry, str):
        if not entry.strip():
            c.error(loc, f"expected a {kind} name, got an empty string")
            return None
        return entry, loc, None
    if not isinstance(entry, dict):
        c.error(loc, f"expected a {kind} name or a mapping with {_quoted(keys)}, "
                f"got {_describe(entry)}")
        return None
    c.check_keys(loc, entry, keys, f"{kind} key")
    if "name" not in entry:
        c.error((*loc, "name"), f"missing: a {kind} mapping needs 'name'", at=loc)
        return None
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        c.error((*loc, "name"), f"expected a {kind} name, got {_describe(name)}")
        return None
    return name, (*loc, "name"), entry


def _params_mapping(c: _Checker, entry: dict[str, Any] | None, loc: Loc, key: str) -> Any:
    """The mapping under ``entry[key]`` (``{}`` when absent or null), or ``None`` if bad."""
    if entry is None or entry.get(key) is None:
        return {}
    raw = entry[key]
    if not isinstance(raw, dict):
        example = "{bits: [4, 8]}" if key == "grid" else "{bits: 4}"
        c.error((*loc, key), f"expected a mapping like {example}, got {_describe(raw)}")
        return None
    bad = [k for k in raw if not isinstance(k, str)]
    for k in bad:
        c.error((*loc, key, k), f"parameter names must be strings, got {_describe(k)}")
    return None if bad else raw


def _tasks(
    c: _Checker, components: Components, scenario: str | None
) -> list[tuple[str, dict[str, Any], Loc]]:
    tasks: list[tuple[str, dict[str, Any], Loc]] = []
    for entry, loc in _entries(c, "tasks", "task names or {name: ..., params: {...}} maps"):
        parsed = _entry_name(c, entry, loc, TASK_KEYS, "task")
        if parsed is None:
            continue
        name, name_loc, mapping = parsed
        try:
            task = components.tasks.get(name)
        except RegistryError as exc:
            c.error(name_loc, str(exc))
            continue
        if scenario is not None and task.scenario != scenario:
            same = [n for n, t in components.tasks if t.scenario == scenario]
            c.error(name_loc, f"task '{name}' belongs to scenario '{task.scenario}', not "
                    f"'{scenario}' (tasks of '{scenario}': {', '.join(same) or 'none'})")
            continue
        raw = _params_mapping(c, mapping, loc, "params")
        schema = _schema(c, task, name_loc, f"task '{name}'", components.tasks.plugin_of(name))
        if raw is None or schema is None:
            continue
        key_locs = {k: (*loc, "params", k) for k in raw}
        params = _validate(c, schema, _plain(raw), key_locs, key_locs,
                           (*loc, "params") if raw else loc, f"task '{name}'")
        if params is not None:
            tasks.append((name, params.model_dump(mode="json"), loc))
    return tasks


def _methods(
    c: _Checker, components: Components, scenario_name: str | None, scenario: Any
) -> list[_Variant]:
    variants: list[_Variant] = []
    for entry, loc in _entries(c, "methods", "method names or {name: ..., params: ..., grid: ...} "
                               "maps"):
        parsed = _entry_name(c, entry, loc, METHOD_KEYS, "method")
        if parsed is None:
            continue
        name, name_loc, mapping = parsed
        try:
            method = components.methods.get(name)
        except RegistryError as exc:
            c.error(name_loc, str(exc))
            continue
        plugin = components.methods.plugin_of(name)
        supported = tuple(getattr(method, "scenarios", ()))
        if scenario_name is not None and scenario_name not in supported:
            c.error(name_loc, f"method '{name}' does not support scenario '{scenario_name}' "
                    f"(it supports: {', '.join(supported) or 'none'})")
            continue
        if scenario is not None:
            protocol = tuple(getattr(scenario, "method_protocol", ()))
            missing = [attr for attr in protocol if not hasattr(method, attr)]
            if missing:
                c.error(name_loc, f"method '{name}' (plugin '{plugin}') lacks {_quoted(missing)}, "
                        f"which scenario '{scenario_name}' needs (its method protocol: "
                        f"{', '.join(protocol)})")
                continue
        fixed = _params_mapping(c, mapping, loc, "params")
        grid = _params_mapping(c, mapping, loc, "grid")
        schema = _schema(c, method, name_loc, f"method '{name}'", plugin)
        if fixed is None or grid is None or schema is None:
            continue
        axes: list[tuple[str, list[Any]]] = []
        ok = True
        for key, values in grid.items():
            key_loc: Loc = (*loc, "grid", key)
            if key in fixed:
                c.error(key_loc, f"'{key}' is set both in params (line "
                        f"{c.line((*loc, 'params', key))}) and in grid; keep one")
                ok = False
            elif not isinstance(values, list):
                c.error(key_loc, f"expected a list of values to sweep, got {_describe(values)}"
                        f" (for a single value write [{_yaml_value(values)}] or move it to "
                        "params)")
                ok = False
            elif not values:
                c.error(key_loc, "expected a list of values to sweep, got an empty list")
                ok = False
            else:
                seen: dict[str, int] = {}
                for i, value in enumerate(values):
                    text = _safe_json(value)
                    if text in seen:
                        c.error((*key_loc, i), f"duplicate grid value {_yaml_value(value)} "
                                f"({c.earlier((*key_loc, seen[text]), (*key_loc, i))})")
                        ok = False
                    seen.setdefault(text, i)
                axes.append((key, values))
        # Even when an axis is bad, validate the others so that all mistakes show at once.
        key_locs: dict[Any, Loc] = {k: (*loc, "params", k) for k in fixed}
        key_locs.update({k: (*loc, "grid", k) for k, _ in axes})
        base_loc: Loc = (*loc, "params") if fixed else loc
        version = str(getattr(method, "version", ""))
        combos = itertools.product(*(range(len(values)) for _, values in axes))
        entry_variants: list[_Variant] = []
        for combo in combos:
            values = _plain(fixed)
            value_locs: dict[Any, Loc] = {k: (*loc, "params", k) for k in fixed}
            for (key, choices), index in zip(axes, combo, strict=True):
                values[key] = _plain(choices[index])
                value_locs[key] = (*loc, "grid", key, index)
            params = _validate(c, schema, values, key_locs, value_locs, base_loc,
                               f"method '{name}'")
            if params is None:
                ok = False
                continue
            entry_variants.append(
                _Variant(name, version, plugin, params.model_dump(mode="json"), loc)
            )
        if ok:
            variants.extend(entry_variants)
    return variants


def _schema(
    c: _Checker, component: Any, loc: Loc, what: str, plugin: str
) -> type[BaseModel] | None:
    schema = getattr(component, "params", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    c.error(loc, f"{what} (plugin '{plugin}') declares no params schema: expected a "
            f"harness.api.Params subclass, got {schema!r}; this is a bug in the plugin")
    return None


@dataclass
class _Exclude:
    loc: Loc
    keys: dict[str, Any]


def _excludes(c: _Checker) -> list[_Exclude]:
    raw = c.data.get("exclude")
    if raw is None:
        return []
    if not isinstance(raw, list):
        c.error(("exclude",), "expected a list of mappings like {method: rtn, seed: 1}, "
                f"got {_describe(raw)}")
        return []
    entries: list[_Exclude] = []
    for i, entry in enumerate(raw):
        loc: Loc = ("exclude", i)
        if not isinstance(entry, dict):
            c.error(loc, f"expected a mapping with keys among {_quoted(EXCLUDE_KEYS)}, "
                    f"got {_describe(entry)}")
            continue
        ok = c.check_keys(loc, entry, EXCLUDE_KEYS, "exclude key")
        if not entry:
            c.error(loc, "an empty exclude entry would exclude every run; give "
                    f"{_quoted(EXCLUDE_KEYS)}")
            ok = False
        for key in ("model", "task", "method"):
            if key in entry and not isinstance(entry[key], str):
                c.error((*loc, key), f"expected a {key} name, got {_describe(entry[key])}")
                ok = False
        if "seed" in entry and not _is_int(entry["seed"]):
            c.error((*loc, "seed"), f"expected an integer seed, got {_describe(entry['seed'])}")
            ok = False
        for key, example in (("params", "{bits: 4}"), ("task_params", "{context_len: 1024}")):
            if key in entry and not isinstance(entry[key], dict):
                c.error((*loc, key), f"expected a mapping like {example}, got "
                        f"{_describe(entry[key])}")
                ok = False
        if ok:
            entries.append(_Exclude(loc, {k: _plain(v) for k, v in entry.items()}))
    return entries


def _exclude_matches(run: RunSpec, key: str, value: Any) -> bool:
    if key == "model":
        return value in (run.model["ref"], f"{run.model['source']}:{run.model['id']}")
    if key == "task":
        return run.task == value
    if key == "method":
        return run.method == value
    if key == "seed":
        return run.seed == value
    params = run.task_params if key == "task_params" else run.params
    return all(k in params and params[k] == v for k, v in value.items())


def _apply_excludes(c: _Checker, runs: list[RunSpec], excludes: list[_Exclude]) -> list[RunSpec]:
    """Drop runs matched by an ``exclude`` entry; an entry matching none is an issue."""
    for entry in excludes:
        if any(all(_exclude_matches(run, k, v) for k, v in entry.keys.items()) for run in runs):
            continue
        _explain_no_match(c, runs, entry)
    kept = [
        run for run in runs
        if not any(all(_exclude_matches(run, k, v) for k, v in e.keys.items()) for e in excludes)
    ]
    if runs and not kept:
        c.error(("exclude",), f"excludes all {len(runs)} runs of the suite")
    return kept


def _explain_no_match(c: _Checker, runs: list[RunSpec], entry: _Exclude) -> None:
    """Say which key of an exclude entry matches nothing (probably a typo), or that the
    combination does."""
    values: dict[str, list[Any]] = {
        "model": [run.model["ref"] for run in runs],
        "task": [run.task for run in runs],
        "method": [run.method for run in runs],
        "seed": [run.seed for run in runs],
    }
    blamed = False
    for key, value in entry.keys.items():
        if key in ("params", "task_params"):
            for pkey, pvalue in value.items():
                loc: Loc = (*entry.loc, key, pkey)
                given = [run.task_params if key == "task_params" else run.params for run in runs]
                present = [params[pkey] for params in given if pkey in params]
                if not present:
                    kind = "task parameter" if key == "task_params" else "parameter"
                    names = sorted({k for params in given for k in params})
                    c.error(loc, f"no run of this suite has a {kind} '{pkey}'"
                            + did_you_mean(str(pkey), names)
                            + f" ({kind}s in this suite: {', '.join(names) or 'none'})")
                    blamed = True
                elif pvalue not in present:
                    shown = ", ".join(dict.fromkeys(_yaml_value(v) for v in present))
                    c.error(loc, f"no run has {pkey}={_yaml_value(pvalue)} "
                            f"(values in this suite: {shown})")
                    blamed = True
        elif not any(_exclude_matches(run, key, value) for run in runs):
            present = list(dict.fromkeys(values[key]))
            message = f"no run has {key} {_yaml_value(value)}"
            if isinstance(value, str):
                message += did_you_mean(value, [str(v) for v in present])
            shown = ", ".join(_yaml_value(v) for v in present)
            c.error((*entry.loc, key), f"{message} (this suite's {key}s: {shown})")
            blamed = True
    if not blamed:
        given = ", ".join(f"{k}={_yaml_value(v)}" for k, v in entry.keys.items())
        c.error(entry.loc, f"matches no run: no run combines {given}; fix or remove it")


def _duplicate(c: _Checker, first: tuple[Loc, ...], second: tuple[Loc, ...]) -> None:
    """Report a run that repeats an earlier one, at the entry that makes it repeat."""
    for was, now in zip(first, second, strict=True):
        if was != now:
            c.error(now, f"gives the same runs as {_field(was)} (line {c.line(was)}) once "
                    "defaults are filled in; remove one")
            return
    c.error(second[2], "two grid combinations resolve to the same params; remove one")


# --------------------------------------------------------------------------- validation


def _validate(
    c: _Checker,
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
        c.error(base_loc, f"{owner}: {type(exc).__name__}: {exc}")
        return None
    fields = schema.model_fields
    for error in errors:
        loc, kind = error["loc"], error["type"]
        if not loc:
            shown = ", ".join(f"{k}={_yaml_value(v)}" for k, v in values.items())
            c.error(base_loc, f"{owner}: {_lower_first(error['msg'])} (params: {shown or 'none'})")
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
            c.error(key_locs.get(key, (*base_loc, key)), message)
            continue
        if kind == "missing" and not rest:
            expected = _type_name(fields[key].annotation) if key in fields else "a value"
            c.error((*base_loc, key), f"required parameter of {owner} missing (expected "
                    f"{expected})", at=base_loc)
            continue
        where = (*value_locs.get(key, (*base_loc, key)), *rest)
        found = _describe(error.get("input"))
        if _is_type_error(kind):
            if not rest and key in fields:
                expected = _type_name(fields[key].annotation)
            else:
                expected = _PYDANTIC_EXPECTED.get(kind, _lower_first(error["msg"]))
            c.error(where, f"expected {expected}, got {found}")
        else:
            c.error(where, f"{_lower_first(error['msg'])} (got {found})")
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
        return "one of " + ", ".join(_yaml_value(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " or ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin in simple:
        return simple[origin]
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


# --------------------------------------------------------------------------- plumbing


class _Checker:
    """Collects issues and finds the line of any key path in the parsed YAML."""

    def __init__(self, file: str, data: Any) -> None:
        self.file = file
        self.data = data
        self.issues: list[SuiteIssue] = []
        self._seen: set[tuple[int, str, str]] = set()

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
        field = _field(loc)
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


def _field(loc: Loc) -> str:
    out = ""
    for depth, step in enumerate(loc):
        # the top level is a mapping, so an int there is a key, not an index
        if isinstance(step, int) and not isinstance(step, bool) and depth > 0:
            out += f"[{step}]"
        else:
            out += ("." if out else "") + str(step)
    return out or "(top level)"


def _plain(value: Any) -> Any:
    """ruamel's round-trip types -> plain Python (dict, list, int, float, str, bool)."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safe_json(value: Any) -> str:
    try:
        return canonical_json(_plain(value))
    except TypeError:
        return repr(value)


def _describe(value: Any) -> str:
    """``int 4``, ``string 'x'``, ``a list``: what was found, for "expected X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"int {int(value)}"
    if isinstance(value, float):
        return f"float {float(value)!r}"
    if isinstance(value, str):
        return "an empty string" if not value else f"string {_shorten(repr(str(value)))}"
    if isinstance(value, dict):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return f"{type(value).__name__} {_shorten(repr(value))}"


def _yaml_value(value: Any) -> str:
    """A value as it would be written in the suite (``4``, ``'x'``, ``null``)."""
    if isinstance(value, str):
        return repr(value)
    try:
        return _shorten(canonical_json(_plain(value)))
    except TypeError:
        return _shorten(repr(value))


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _did_you_mean_key(mapping: Mapping[Any, Any], wanted: list[str]) -> str:
    for key in mapping:
        if isinstance(key, str) and suggest(key, wanted):
            return f" ('{key}' looks like a typo of {_quoted(suggest(key, wanted))})"
    return ""
