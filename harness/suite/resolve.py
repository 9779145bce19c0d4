"""Resolving a suite: a parsed file + the loaded components -> validated, expanded runs.

The second of a suite's two steps (the first, :mod:`harness.suite.read`, parsed the YAML
and found its plugins). :func:`resolve_suite` checks every field against the components the
plugins registered: each scenario, model, task and method named must exist and fit the
others, and every parameter must pass its schema, with all mistakes reported at once. It
then expands the matrix models × tasks × methods (× grid) × seeds into
:class:`~harness.api.RunSpec`\\ s, each keyed by :mod:`harness.suite.keys`, and drops the
cells ``exclude:`` names (:mod:`harness.suite.exclude`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.api import RESERVED_MODEL_KEYS, ROLES, MeasureSettings, MemoryLimit, RunSpec
from harness.canonical import canonical_json, describe
from harness.executors import EXECUTORS, Placement, RaySettings, Resources, SlurmSettings
from harness.layout import Layout
from harness.registry import Components, RegistryError, did_you_mean
from harness.suite.checker import (
    Loc,
    SuiteChecker,
    SuiteIssue,
    did_you_mean_key,
    field_name,
    is_int,
    plain,
    quoted,
    safe_json,
    validate,
    yaml_value,
)
from harness.suite.exclude import apply_excludes, read_excludes
from harness.suite.keys import run_config, run_key
from harness.suite.read import TOP_KEYS, SuiteFile
from harness.suite.views import read_views

#: Worker isolation modes (``isolation:``): reuse a worker process, or a fresh one per run.
ISOLATIONS = ("worker", "run")
#: Per-run time limit when ``limits.timeout`` is not given.
DEFAULT_TIMEOUT_S = 1800.0

TASK_KEYS = ("name", "params")
METHOD_KEYS = ("name", "params", "grid", "role")
LIMIT_KEYS = ("timeout", "memory")
MAX_SEED = 2**32 - 1

_DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")
_LOCAL_PREFIXES = ("./", "../", "/")


@dataclass(frozen=True)
class Suite:
    """A validated suite and its expanded runs (after ``exclude``)."""

    name: str
    description: str
    path: Path
    text: str
    scenario: str
    #: The executor and its settings (``executor``, ``isolation``, ``workers``,
    #: ``resources``, ``ray``, ``slurm``).
    placement: Placement
    #: The resolved device (``cpu``, ``cuda``, ``cuda:1``), not the ``auto`` written.
    device: str
    measure: MeasureSettings
    timeout_s: float | None
    plugins: tuple[str, ...]
    runs: tuple[RunSpec, ...]
    #: What still works but should change (deprecated keys), each where it is written.
    warnings: tuple[SuiteIssue, ...]
    #: How many runs of the full matrix ``exclude`` removed.
    excluded: int
    #: The leaderboard's roles and views (kept in the store with the suite).
    layout: Layout = field(default_factory=Layout)


@dataclass
class _Variant:
    """One method entry with one grid combination applied."""

    name: str
    version: str
    plugin: str
    params: dict[str, Any]
    loc: Loc
    role: str | None = None


def resolve_suite(
    suite_file: SuiteFile,
    components: Components,
    resolve_device: Callable[[str, Placement], tuple[str, str]],
    *,
    executor: str | None = None,
) -> Suite:
    """Validate a parsed suite against the loaded components and expand its runs.

    ``resolve_device`` maps the suite's ``device`` to ``(device, hardware label)`` where its
    runs will execute (a cluster's node for a remote executor, hence the placement) and may
    raise :class:`ValueError`. ``executor`` (the command line's ``--executor``) replaces the
    suite's. Raises :class:`SuiteError` with every issue found.
    """
    checker = SuiteChecker(str(suite_file.path), suite_file.data)
    data = checker.data
    base_dir = suite_file.path.resolve().parent

    checker.check_keys((), data, TOP_KEYS, "suite key")
    for key in ("name", "scenario", "models", "tasks", "methods"):
        if key not in data:
            checker.error((key,), _MISSING[key](components), at=())

    name = _string(checker, "name", required=True) or ""
    description = _string(checker, "description", required=False) or ""
    scenario_name = _string(checker, "scenario", required=True)
    scenario = None
    if scenario_name is not None:
        try:
            scenario = components.scenarios.get(scenario_name)
        except RegistryError as exc:
            checker.error(("scenario",), str(exc))

    placement = _placement(checker, executor)
    measure = _measure(checker)
    timeout_s = _timeout(checker)
    memory_limit = _settings(checker, ("limits", "memory"), MemoryLimit, "memory limits")
    if memory_limit.host_gb is not None and placement.executor == "inline":
        checker.warn(("limits", "memory", "host_gb"), "not enforced by the inline executor "
                     "(the run shares the driver's process); the others stop a run past it")
    seeds = _seeds(checker)
    models = _models(checker, components, base_dir)
    known_scenario = scenario_name if scenario is not None else None
    tasks = _tasks(checker, components, known_scenario)
    variants = _methods(checker, components, known_scenario, scenario)
    # Last: for a cluster this asks a node (a probe task or job), worth it only for a suite
    # that is otherwise sound.
    if placement.remote and checker.issues:
        device, hardware = "cpu", "unknown"
    else:
        device, hardware = _device(checker, placement, resolve_device)
    matrix_complete = not checker.issues
    excludes = read_excludes(checker)

    runs: list[RunSpec] = []
    roles: dict[str, str] = {}
    origins: dict[str, tuple[Loc, ...]] = {}
    for (model, model_loc), (task, task_params, task_loc), variant, (seed, seed_loc) in (
        itertools.product(models, tasks, variants, seeds)
    ):
        config = run_config(
            scenario=scenario_name,
            model=model,
            task=task,
            task_params=task_params,
            method=variant.name,
            method_version=variant.version,
            method_plugin=variant.plugin,
            params=variant.params,
            seed=seed,
            device=device,
            hardware=hardware,
            measure=measure,
        )
        try:
            key = run_key(config)
        except TypeError as exc:  # options checked already; a plugin's params may not be
            checker.error(variant.loc, f"run config is not plain data: {exc}")
            continue
        locs = (model_loc, task_loc, variant.loc, seed_loc)
        if key in origins:
            _duplicate(checker, origins[key], locs)
            continue
        origins[key] = locs
        if variant.role is not None:
            roles[key] = variant.role
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
            memory_limit=memory_limit,
        ))

    kept = runs
    if matrix_complete and excludes:
        kept = apply_excludes(checker, runs, excludes)
    # Views are checked against the runs, so only once the matrix is sound.
    views = (read_views(checker, kept, getattr(scenario, "columns", None))
             if matrix_complete and kept else ())
    checker.raise_if_any()
    return Suite(
        name=name,
        description=description,
        path=suite_file.path,
        text=suite_file.text,
        scenario=scenario_name or "",
        placement=placement,
        device=device,
        measure=measure,
        timeout_s=timeout_s,
        plugins=suite_file.plugins,
        runs=tuple(kept),
        excluded=len(runs) - len(kept),
        warnings=tuple(checker.warnings),
        layout=Layout({s.run_key: roles[s.run_key] for s in kept if s.run_key in roles},
                      views, tuple(s.run_key for s in kept) if views else ()),
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


def _string(checker: SuiteChecker, key: str, *, required: bool) -> str | None:
    if key not in checker.data:
        return None
    value = checker.data[key]
    if not isinstance(value, str) or (required and not value.strip()):
        found = "an empty string" if value == "" else describe(value)
        checker.error((key,), f"expected {'a non-empty' if required else 'a'} string, got {found}")
        return None
    return str(value)


def _choice(checker: SuiteChecker, key: str, choices: tuple[str, ...]) -> str:
    value = checker.data.get(key, choices[0])
    if value not in choices or not isinstance(value, str):
        message = f"expected one of {quoted(choices)}, got {describe(value)}"
        if isinstance(value, str):
            message += did_you_mean(value, list(choices))
        checker.error((key,), message)
        return choices[0]
    return value


def _workers(checker: SuiteChecker) -> int:
    value = checker.data.get("workers", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        checker.error(("workers",), f"expected a whole number of CPU worker processes >= 1, "
                              f"got {describe(value)}")
        return 1
    return value


def _placement(checker: SuiteChecker, override: str | None) -> Placement:
    executor = override or _choice(checker, "executor", EXECUTORS)
    placement = Placement(
        executor=executor,
        isolation=_choice(checker, "isolation", ISOLATIONS),
        workers=_workers(checker),
        resources=_settings(checker, ("resources",), Resources, "resources per run"),
        ray=_settings(checker, ("ray",), RaySettings, "ray settings"),
        slurm=_settings(checker, ("slurm",), SlurmSettings, "slurm settings"),
    )
    for key, readers in (("resources", ("ray", "slurm")), ("ray", ("ray",)),
                         ("slurm", ("slurm",))):
        if key in checker.data and executor not in readers:
            checker.warn((key,), f"ignored: only the {' and '.join(readers)} executor"
                         f"{'s read' if len(readers) > 1 else ' reads'} it, and this suite's "
                         f"executor is {executor}")
    return placement


def _settings(checker: SuiteChecker, loc: Loc, schema: type[BaseModel], owner: str) -> Any:
    """The mapping at ``loc`` validated by ``schema`` (its defaults when absent or wrong)."""
    raw: Any = checker.data
    for key in loc:
        raw = raw.get(key) if isinstance(raw, dict) else None
    if raw is None:
        return schema()
    fields = ", ".join(schema.model_fields)
    if not isinstance(raw, dict):
        checker.error(loc, f"expected a mapping of {owner} ({fields}), got {describe(raw)}")
        return schema()
    key_locs = {k: (*loc, k) for k in raw}
    settings = validate(checker, schema, plain(raw), key_locs, key_locs, loc, owner)
    return settings if settings is not None else schema()


def _device(
    checker: SuiteChecker,
    placement: Placement,
    resolve: Callable[[str, Placement], tuple[str, str]],
) -> tuple[str, str]:
    spec = checker.data.get("device", "auto")
    if not isinstance(spec, str) or not _DEVICE_RE.fullmatch(spec):
        checker.error(("device",),
                      f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {describe(spec)}")
        return "cpu", "unknown"
    try:
        device, hardware = resolve(spec, placement)
    except ValueError as exc:
        checker.error(("device",), str(exc))
        return "cpu", "unknown"
    return device, hardware


def _measure(checker: SuiteChecker) -> MeasureSettings:
    raw = checker.data.get("measure")
    if raw is None:
        return MeasureSettings()
    loc: Loc = ("measure",)
    fields = ", ".join(MeasureSettings.model_fields)
    if not isinstance(raw, dict):
        checker.error(loc, f"expected a mapping of measure settings ({fields}), "
                      f"got {describe(raw)}")
        return MeasureSettings()
    values = plain(raw)
    key_locs = {k: (*loc, k) for k in raw}
    measure = validate(checker, MeasureSettings, values, key_locs, key_locs, loc,
                       "measure settings")
    if measure is None:
        return MeasureSettings()
    ok = True

    def check(key: str, good: bool, expected: str) -> None:
        nonlocal ok
        if not good:
            ok = False
            checker.error((*loc, key), f"expected {expected}, got {getattr(measure, key)}",
                          at=(*loc, key) if key in raw else loc)

    check("warmup", measure.warmup >= 0, "a number of warmup calls >= 0")
    check("min_repeats", measure.min_repeats >= 1, "at least 1 repeat")
    check("min_seconds", measure.min_seconds >= 0, "a number of seconds >= 0")
    check("max_seconds", measure.max_seconds > 0, "a positive number of seconds")
    check("rel_precision", measure.rel_precision is None or 0 < measure.rel_precision < 1,
          "a relative precision between 0 and 1 (e.g. 0.05 for ±5 %) or null")
    check("max_cv", measure.max_cv is None or measure.max_cv > 0,
          "a positive coefficient of variation (e.g. 0.25) or null")
    if "max_cv" in raw:
        read_as = ("ignored: rel_precision is set too" if "rel_precision" in raw
                   else f"read as rel_precision: {yaml_value(raw['max_cv'])}")
        checker.warn((*loc, "max_cv"), "max_cv is deprecated: the CV no longer decides "
                     "validity (one stall inflates it while the median barely moves); "
                     f"{read_as}. Write rel_precision (the median's 95 % CI half-width as a "
                     "share of the median, e.g. 0.05)")
    if ok and measure.min_seconds > measure.max_seconds:
        key = "min_seconds" if "min_seconds" in raw else "max_seconds"
        checker.error((*loc, key), f"min_seconds ({measure.min_seconds:g}) must not exceed "
                      f"max_seconds ({measure.max_seconds:g})")
        return MeasureSettings()
    return measure if ok else MeasureSettings()


def _timeout(checker: SuiteChecker) -> float | None:
    raw = checker.data.get("limits")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    if not isinstance(raw, dict):
        checker.error(("limits",), "expected a mapping like {timeout: 600, memory: {host_gb: 8}}, "
                      f"got {describe(raw)}")
        return DEFAULT_TIMEOUT_S
    checker.check_keys(("limits",), raw, LIMIT_KEYS, "limits key")
    if "timeout" not in raw:
        return DEFAULT_TIMEOUT_S
    value = raw["timeout"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        checker.error(("limits", "timeout"), "expected a positive number of seconds "
                      f"(or null for no limit), got {describe(value)}")
        return DEFAULT_TIMEOUT_S
    return float(value)


def _seeds(checker: SuiteChecker) -> list[tuple[int, Loc]]:
    if "seeds" not in checker.data:
        return [(0, ())]
    raw = checker.data["seeds"]
    if is_int(raw):
        return [(int(raw), ("seeds",))] if _seed_ok(checker, raw, ("seeds",)) else []
    if not isinstance(raw, list):
        checker.error(("seeds",), "expected a seed (an integer) or a list of them, "
                      f"got {describe(raw)}")
        return []
    if not raw:
        checker.error(("seeds",), "expected at least one seed, got an empty list")
        return []
    seeds: list[tuple[int, Loc]] = []
    seen: dict[int, Loc] = {}
    for i, seed in enumerate(raw):
        loc: Loc = ("seeds", i)
        if not is_int(seed):
            checker.error(loc, f"expected an integer seed, got {describe(seed)}")
            continue
        if not _seed_ok(checker, seed, loc):
            continue
        if seed in seen:
            checker.error(loc, f"duplicate seed {seed} ({checker.earlier(seen[seed], loc)})")
            continue
        seen[seed] = loc
        seeds.append((int(seed), loc))
    return seeds


def _seed_ok(checker: SuiteChecker, seed: int, loc: Loc) -> bool:
    if 0 <= seed <= MAX_SEED:
        return True
    checker.error(loc, f"expected a seed between 0 and 2**32-1, got {seed}")
    return False


def _entries(checker: SuiteChecker, key: str, what: str) -> list[tuple[Any, Loc]]:
    """The items of a required non-empty list (``models``, ``tasks``, ``methods``)."""
    if key not in checker.data:
        return []
    raw = checker.data[key]
    if not isinstance(raw, list):
        checker.error((key,), f"expected a non-empty list of {what}, got {describe(raw)}")
        return []
    if not raw:
        checker.error((key,), f"expected at least one entry ({what}), got an empty list")
        return []
    return [(entry, (key, i)) for i, entry in enumerate(raw)]


def _models(
    checker: SuiteChecker, components: Components, base_dir: Path
) -> list[tuple[dict[str, Any], Loc]]:
    models: list[tuple[dict[str, Any], Loc]] = []
    for entry, loc in _entries(checker, "models",
                               "model references 'SOURCE:ID' or {ref: ...} maps"):
        options: dict[str, Any] = {}
        if isinstance(entry, str):
            ref, ref_loc = entry, loc
        elif isinstance(entry, dict):
            if "ref" not in entry:
                keys = ", ".join(map(str, entry)) or "none"
                checker.error(loc, "a model mapping needs 'ref: SOURCE:ID' (e.g. ref: hf:gpt2); "
                              f"found keys: {keys}" + did_you_mean_key(entry, ["ref"]))
                continue
            ref, ref_loc = entry["ref"], (*loc, "ref")
            if not isinstance(ref, str):
                checker.error(ref_loc,
                              f"expected a model reference 'SOURCE:ID', got {describe(ref)}")
                continue
            bad = False
            for key in entry:
                if key in RESERVED_MODEL_KEYS:
                    checker.error((*loc, key), f"'{key}' is taken from ref (and a built-in model's "
                                  "recipe); write 'ref: SOURCE:ID'")
                    bad = True
                elif not isinstance(key, str):
                    checker.error((*loc, key), f"option names must be strings, got {describe(key)}")
                    bad = True
            if bad:
                continue
            options = {k: plain(v) for k, v in entry.items() if k != "ref"}
        else:
            checker.error(loc, "expected a model reference 'SOURCE:ID' or a mapping with 'ref', "
                          f"got {describe(entry)}")
            continue
        resolved = _resolve_ref(checker, components, ref, ref_loc, base_dir)
        if resolved is None:
            continue
        source_name, ident, source = resolved
        schema = getattr(source, "params", None)
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            key_locs = {k: (*loc, k) for k in options}
            validated = validate(checker, schema, options, key_locs, key_locs, loc,
                                 f"model source '{source_name}'")
            if validated is None:
                continue
            options = validated.model_dump(mode="json")
        else:
            try:
                canonical_json(options)
            except TypeError as exc:
                checker.error(loc, f"model options must be plain data (strings, numbers, booleans, "
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
    checker: SuiteChecker, components: Components, ref: str, loc: Loc, base_dir: Path
) -> tuple[str, str, Any] | None:
    """``SOURCE:ID`` -> (source, resolved id, source object), or ``None`` after an issue."""
    source_name, sep, ident = ref.partition(":")
    if not sep:
        message = (f"expected 'SOURCE:ID' (e.g. 'builtin:tiny-byte-lm' or 'hf:gpt2'), "
                   f"got '{ref}' with no source")
        if ref in components.models:
            message += f"; did you mean 'builtin:{ref}'?"
        checker.error(loc, message)
        return None
    try:
        source = components.model_sources.get(source_name)
    except RegistryError as exc:
        checker.error(loc, f"in '{ref}': {exc}")
        return None
    if not ident:
        checker.error(loc, f"'{ref}' has no ID after '{source_name}:'")
        return None
    if source_name == "builtin":
        if ident not in components.models:
            checker.error(loc, components.models.unknown_message(ident))
            return None
    elif ident.startswith(_LOCAL_PREFIXES):
        path = Path(ident)
        if not path.is_absolute():
            path = (base_dir / path).resolve()
        if not path.exists():
            relative = " (relative paths start at the suite's folder)" if ident[0] == "." else ""
            checker.error(loc, f"no such local model path: {path}" + relative)
            return None
        ident = str(path)
    return source_name, ident, source


def _entry_name(
    checker: SuiteChecker, entry: Any, loc: Loc, keys: tuple[str, ...], kind: str
) -> tuple[str, Loc, dict[str, Any] | None] | None:
    """A ``name`` or ``{name: ..., ...}`` entry -> (name, where the name is, mapping)."""
    if isinstance(entry, str):
        if not entry.strip():
            checker.error(loc, f"expected a {kind} name, got an empty string")
            return None
        return entry, loc, None
    if not isinstance(entry, dict):
        checker.error(loc, f"expected a {kind} name or a mapping with {quoted(keys)}, "
                      f"got {describe(entry)}")
        return None
    checker.check_keys(loc, entry, keys, f"{kind} key")
    if "name" not in entry:
        checker.error((*loc, "name"), f"missing: a {kind} mapping needs 'name'", at=loc)
        return None
    name = entry["name"]
    if not isinstance(name, str) or not name.strip():
        checker.error((*loc, "name"), f"expected a {kind} name, got {describe(name)}")
        return None
    return name, (*loc, "name"), entry


def _params_mapping(checker: SuiteChecker, entry: dict[str, Any] | None, loc: Loc, key: str) -> Any:
    """The mapping under ``entry[key]`` (``{}`` when absent or null), or ``None`` if bad."""
    if entry is None or entry.get(key) is None:
        return {}
    raw = entry[key]
    if not isinstance(raw, dict):
        example = "{bits: [4, 8]}" if key == "grid" else "{bits: 4}"
        checker.error((*loc, key), f"expected a mapping like {example}, got {describe(raw)}")
        return None
    bad = [k for k in raw if not isinstance(k, str)]
    for k in bad:
        checker.error((*loc, key, k), f"parameter names must be strings, got {describe(k)}")
    return None if bad else raw


def _tasks(
    checker: SuiteChecker, components: Components, scenario: str | None
) -> list[tuple[str, dict[str, Any], Loc]]:
    tasks: list[tuple[str, dict[str, Any], Loc]] = []
    for entry, loc in _entries(checker, "tasks", "task names or {name: ..., params: {...}} maps"):
        parsed = _entry_name(checker, entry, loc, TASK_KEYS, "task")
        if parsed is None:
            continue
        name, name_loc, mapping = parsed
        try:
            task = components.tasks.get(name)
        except RegistryError as exc:
            checker.error(name_loc, str(exc))
            continue
        if scenario is not None and task.scenario != scenario:
            same = [n for n, t in components.tasks if t.scenario == scenario]
            checker.error(name_loc, f"task '{name}' belongs to scenario '{task.scenario}', not "
                          f"'{scenario}' (tasks of '{scenario}': {', '.join(same) or 'none'})")
            continue
        raw = _params_mapping(checker, mapping, loc, "params")
        schema = _schema(checker, task, name_loc, f"task '{name}'",
                         components.tasks.plugin_of(name))
        if raw is None or schema is None:
            continue
        key_locs = {k: (*loc, "params", k) for k in raw}
        params = validate(checker, schema, plain(raw), key_locs, key_locs,
                          (*loc, "params") if raw else loc, f"task '{name}'")
        if params is not None:
            tasks.append((name, params.model_dump(mode="json"), loc))
    return tasks


def _methods(
    checker: SuiteChecker, components: Components, scenario_name: str | None, scenario: Any
) -> list[_Variant]:
    variants: list[_Variant] = []
    for entry, loc in _entries(checker, "methods",
                               "method names or {name: ..., params: ..., grid: ...} maps"):
        parsed = _entry_name(checker, entry, loc, METHOD_KEYS, "method")
        if parsed is None:
            continue
        name, name_loc, mapping = parsed
        try:
            method = components.methods.get(name)
        except RegistryError as exc:
            checker.error(name_loc, str(exc))
            continue
        plugin = components.methods.plugin_of(name)
        supported = tuple(getattr(method, "scenarios", ()))
        if scenario_name is not None and scenario_name not in supported:
            checker.error(name_loc, f"method '{name}' does not support scenario '{scenario_name}' "
                          f"(it supports: {', '.join(supported) or 'none'})")
            continue
        if scenario is not None:
            protocol = tuple(getattr(scenario, "method_protocol", ()))
            missing = [attr for attr in protocol if not hasattr(method, attr)]
            if missing:
                checker.error(name_loc, f"method '{name}' (plugin '{plugin}') lacks "
                              f"{quoted(missing)}, which scenario '{scenario_name}' needs (its "
                              f"method protocol: {', '.join(protocol)})")
                continue
        role = _role(checker, method, mapping, loc)
        fixed = _params_mapping(checker, mapping, loc, "params")
        grid = _params_mapping(checker, mapping, loc, "grid")
        schema = _schema(checker, method, name_loc, f"method '{name}'", plugin)
        if fixed is None or grid is None or schema is None:
            continue
        axes: list[tuple[str, list[Any]]] = []
        ok = True
        for key, values in grid.items():
            key_loc: Loc = (*loc, "grid", key)
            if key in fixed:
                checker.error(key_loc, f"'{key}' is set both in params (line "
                              f"{checker.line((*loc, 'params', key))}) and in grid; keep one")
                ok = False
            elif not isinstance(values, list):
                checker.error(key_loc, f"expected a list of values to sweep, got {describe(values)}"
                              f" (for a single value write [{yaml_value(values)}] or move it to "
                              "params)")
                ok = False
            elif not values:
                checker.error(key_loc, "expected a list of values to sweep, got an empty list")
                ok = False
            else:
                seen: dict[str, int] = {}
                for i, value in enumerate(values):
                    text = safe_json(value)
                    if text in seen:
                        checker.error((*key_loc, i), f"duplicate grid value {yaml_value(value)} "
                                      f"({checker.earlier((*key_loc, seen[text]), (*key_loc, i))})")
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
            values = plain(fixed)
            value_locs: dict[Any, Loc] = {k: (*loc, "params", k) for k in fixed}
            for (key, choices), index in zip(axes, combo, strict=True):
                values[key] = plain(choices[index])
                value_locs[key] = (*loc, "grid", key, index)
            params = validate(checker, schema, values, key_locs, value_locs, base_loc,
                              f"method '{name}'")
            if params is None:
                ok = False
                continue
            entry_variants.append(
                _Variant(name, version, plugin, params.model_dump(mode="json"), loc, role)
            )
        if ok:
            variants.extend(entry_variants)
    return variants


def _role(checker: SuiteChecker, method: Any, entry: dict[str, Any] | None,
          loc: Loc) -> str | None:
    """The entry's ``role`` (null: a contender), else the one the method declares."""
    if entry is None or "role" not in entry:
        role = getattr(method, "role", None)
        if role is not None and role not in ROLES:
            checker.error(loc, f"method '{method.name}' declares role {describe(role)}, not "
                          f"one of {quoted(ROLES)}; this is a bug in its plugin")
            return None
        return role
    role = entry["role"]
    if role is not None and role not in ROLES:
        message = f"expected one of {quoted(ROLES)} or null (a contender), got {describe(role)}"
        if isinstance(role, str):
            message += did_you_mean(role, list(ROLES))
        checker.error((*loc, "role"), message)
        return None
    return role


def _schema(
    checker: SuiteChecker, component: Any, loc: Loc, what: str, plugin: str
) -> type[BaseModel] | None:
    schema = getattr(component, "params", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return schema
    checker.error(loc, f"{what} (plugin '{plugin}') declares no params schema: expected a "
                  f"harness.api.Params subclass, got {schema!r}; this is a bug in the plugin")
    return None


def _duplicate(checker: SuiteChecker, first: tuple[Loc, ...], second: tuple[Loc, ...]) -> None:
    """Report a run that repeats an earlier one, at the entry that makes it repeat."""
    for was, now in zip(first, second, strict=True):
        if was != now:
            checker.error(now, f"gives the same runs as {field_name(was)} (line "
                          f"{checker.line(was)}) once defaults are filled in; remove one")
            return
    checker.error(second[2], "two grid combinations resolve to the same params; remove one")
