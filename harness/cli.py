"""The ``harness`` command: run | list | show | query | export | report | new-plugin."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from harness import __version__
from harness.api import RunSpec
from harness.executors import EXECUTORS, Placement

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

STATUS_STYLE = {
    "ok": "green",
    "invalid": "yellow",
    "oom": "magenta",
    "failed": "red",
    "timeout": "red",
    "crashed": "bold red",
    "unsupported": "dim",
}
DEFAULT_DB = "harness.duckdb"

#: Errors, warnings and progress. A message is one line however long (the terminal wraps it
#: where it must): in a log, at 80 columns, a hard wrap would split the words a user greps.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


# -- plugins --------------------------------------------------------------------------------


def _split_plugin_args(values: Sequence[str]) -> tuple[list[str], list[str]]:
    """``-p mod`` loads a plugin, ``-p no:name`` blocks one (pytest's convention)."""
    modules = [v for v in values if not v.startswith("no:")]
    blocked = [v[3:] for v in values if v.startswith("no:")]
    return modules, blocked


def _load(plugin_args: Sequence[str], extra: Sequence[str] = (), base_dir: Path | None = None):
    from harness.plugins import load_components, load_plugins

    modules, blocked = _split_plugin_args(plugin_args)
    plugins = load_plugins([*modules, *extra], blocked=blocked, base_dir=base_dir)
    components = load_components(plugins)
    for name, error in plugins.failures.items():
        console.print(f"[red]plugin '{escape(name)}' failed and is not loaded:[/] {escape(error)}")
    return plugins, components


# -- run ------------------------------------------------------------------------------------


class RichReporter:
    """A progress bar with ETA, one line per finished run, and a summary table at the end."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}"),
            console=console,
            transient=False,
        )
        self.task_id: Any = None

    def begin(self, suite, pending: Sequence[RunSpec], skipped: int) -> None:
        if skipped:
            console.print(f"resuming: {skipped} run(s) already in the store are skipped")
        self.progress.start()
        self.task_id = self.progress.add_task(suite.name, total=len(pending), current="")

    def run_started(self, spec: RunSpec) -> None:
        self.progress.update(self.task_id, current=escape(spec.label))

    def run_finished(self, spec: RunSpec, result: dict[str, Any]) -> None:
        status = result["status"]
        style = STATUS_STYLE.get(status, "white")
        line = (f"[{style}]{status:>7}[/] {escape(spec.label)} "
                f"[dim]{spec.run_key} {result['wall_s']:.1f}s[/]")
        if result.get("error"):
            line += f"\n         [{style}]{escape(result['error'].splitlines()[0][:300])}[/]"
        self.progress.console.print(line)
        self.progress.advance(self.task_id)

    def warn(self, message: str) -> None:
        self.progress.console.print(f"[yellow]warning:[/] {escape(message)}")

    def end(self) -> None:
        self.progress.update(self.task_id, current="")
        self.progress.stop()


def _first(metrics: list[dict], predicate) -> dict | None:
    return next((m for m in metrics if predicate(m)), None)


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "bytes":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.3g} {suffix}"
        return f"{value:.0f} B"
    text = f"{value:.4g}"
    return f"{text} {unit}".strip()


def busy_hosts(specs: dict[str, RunSpec], results: list[dict[str, Any]]) -> list[str]:
    """One line per run whose timed phases ran on a busy host, with the diagnosis."""
    from harness.probes.host_load import busy_host_reason

    lines = []
    for result in results:
        phases: dict[str, dict[str, float | None]] = {}
        timed = set()
        for m in result["metrics"]:
            if m["stat"] in ("value", "max"):
                phases.setdefault(m["phase"], {})[m["metric"]] = m["value"]
            if m["metric"] == "latency" and m["stat"] == "median":
                timed.add(m["phase"])
        found = [f"{phase}: {reason}" for phase in sorted(timed)
                 if (reason := busy_host_reason(phases.get(phase, {})))]
        if found:
            lines.append(f"{specs[result['run_key']].label}: {'; '.join(found)}")
    return lines


#: Summary columns dropped, in this order, until the table fits a narrow terminal.
OPTIONAL_SUMMARY_COLUMNS = ("wall", "peak VRAM", "peak host RSS", "seed")


def _varying_params(ran: list[RunSpec]) -> dict[str, set[str]]:
    """Per method, the params whose value differs between its runs: what tells them apart."""
    values: dict[tuple[str, str], set[str]] = {}
    for spec in ran:
        for key, value in spec.params.items():
            values.setdefault((spec.method, key), set()).add(repr(value))
    varying: dict[str, set[str]] = {spec.method: set() for spec in ran}
    for (method, key), seen in values.items():
        if len(seen) > 1:
            varying[method].add(key)
    return varying


def summary_table(
    specs: dict[str, RunSpec], results: list[dict[str, Any]], width: int | None = None
) -> Table:
    """One row per run executed now: status, quality metric, latency, peak memory.

    Readable in a log and at 80 columns: params show only those that tell a method's runs apart,
    model and task get columns only when the suite has more than one, a column nobody
    measured is left out, the quality's metric names its column when all runs share it, and
    no cell is wrapped. Where the table is still wider than ``width``, the
    :data:`OPTIONAL_SUMMARY_COLUMNS` go, in that order.
    """
    ran = [specs[r["run_key"]] for r in results]
    shown = _varying_params(ran)
    axes = [("model", lambda s: s.model["ref"]), ("task", lambda s: s.task)]
    varied = [(name, get) for name, get in axes if len({get(s) for s in ran}) > 1]
    rows = []
    for result, spec in zip(results, ran, strict=True):
        metrics = result["metrics"]
        qualities = [m for m in metrics
                     if m["higher_is_better"] is not None and m["value"] is not None]
        quality = min(qualities, key=lambda m: m["phase"] != "eval", default=None)
        latency = _first(metrics, lambda m: m["metric"] == "latency" and m["stat"] == "median")
        rss = [m["value"] for m in metrics if m["metric"] == "host_rss_peak" and m["value"]]
        vram = [m["value"] for m in metrics if m["metric"] == "cuda_allocated_peak" and m["value"]]
        style = STATUS_STYLE.get(result["status"], "white")
        rows.append({
            "method": escape(spec.method),
            "params": escape("\n".join(f"{k}={v}" for k, v in sorted(spec.params.items())
                                       if k in shown[spec.method])),
            **{name: escape(str(get(spec))) for name, get in varied},
            "seed": str(spec.seed),
            "status": f"[{style}]{result['status']}[/]",
            "quality": (quality["metric"], _fmt(quality["value"], quality["unit"]))
            if quality else None,
            "latency (median)": f"{latency['phase']} {_fmt(latency['value'], 'ms')}"
            if latency else "—",
            "peak host RSS": _fmt(max(rss), "bytes") if rss else "—",
            "peak VRAM": _fmt(max(vram), "bytes") if vram else "—",
            "wall": f"{result['wall_s']:.1f} s",
        })  # fmt: skip
    metric_names = {row["quality"][0] for row in rows if row["quality"]}
    quality_header = next(iter(metric_names)) if len(metric_names) == 1 else "quality"
    for row in rows:
        name_value = row.pop("quality")
        row[quality_header] = "—" if name_value is None else (
            name_value[1] if len(metric_names) == 1 else " ".join(name_value))
    columns = ["method", "params", *(name for name, _ in varied), "seed", "status",
               quality_header, "latency (median)", "peak host RSS", "peak VRAM", "wall"]
    columns = [c for c in columns if any(row[c] not in ("", "—") for row in rows)]
    for dropped in (None, *OPTIONAL_SUMMARY_COLUMNS):
        if dropped in columns:
            columns.remove(dropped)
        table = Table(title="summary")
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*(row[c] for c in columns))
        if width is None or natural_width(table) <= width:
            break
    return table


def natural_width(renderable: Any) -> int:
    """The width ``renderable`` takes when nothing limits it (a log has no edge)."""
    return Console(width=10**4).measure(renderable).maximum


def cmd_run(args: argparse.Namespace) -> int:
    """``harness run``: one driver per store (its lock), then the suite."""
    suite = _suite_path(args.suite)
    if suite is None:
        return 2
    args.suite = suite
    if args.dry_run:
        return _run_suite(args)  # writes nothing
    from harness.store import DriverLock, StoreInUse

    db = Path(args.db)
    lock = DriverLock(db)
    command = f"harness run {args.suite}"
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        try:
            notice = lock.acquire(command)
        except StoreInUse as exc:
            if not args.wait:
                raise
            with console.status(f"{escape(str(exc).split(';')[0])}; waiting…"):
                notice = lock.acquire(command, wait=True)
    except StoreInUse as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    except OSError as exc:
        return _unwritable(db, exc)
    if notice:
        console.print(f"[yellow]{escape(notice)}[/]")
    try:
        return _run_suite(args)
    finally:
        lock.release()


def _suite_path(given: Path) -> Path | None:
    """A suite file: the path when one exists there, else the built-in suite of that name
    (``harness run smoke``); None, after saying why, when neither exists."""
    if given.exists() or given.parent != Path("."):
        return given  # a path (reading it says what is wrong with it)
    entry = _builtin_suite(given.name, f"no suite file {given} here, and no built-in suite "
                                       "by that name")
    return None if entry is None else Path(str(entry))


def _builtin_suite(name: str, missing: str) -> Traversable | None:
    """The built-in suite ``name`` (``.yaml`` optional); None after printing ``missing``
    with the near misses and the suites there are."""
    from harness.reference import builtin_suites
    from harness.registry import did_you_mean

    suites = builtin_suites()
    stem = name.removesuffix(".yaml")
    if stem in suites:
        return suites[stem]
    console.print(f"[red]{escape(missing)}{escape(did_you_mean(stem, list(suites)))} "
                  f"(built-in: {escape(', '.join(suites))}; harness list suites)[/]")
    return None


def _unwritable(db: Path, exc: OSError) -> int:
    console.print(f"[red]cannot write the store {escape(str(db))}: "
                  f"{escape(exc.strerror or str(exc))}; pass --db in a folder you can write[/]")
    return 2


def _run_suite(args: argparse.Namespace) -> int:
    from harness.suite import SuiteError, read_suite, resolve_suite

    try:
        suite_file = read_suite(args.suite)
        plugins, components = _load(args.plugin, suite_file.plugins, suite_file.path.parent)
        suite = resolve_suite(
            suite_file, components,
            lambda spec, placement: _resolve_device(args, args.device or spec,
                                                    _placed(placement, args)),
            executor=args.executor,
        )
    except SuiteError as exc:
        console.print(f"[red]invalid suite {escape(str(args.suite))}:[/]")
        for issue in exc.issues:
            console.print(f"  {escape(str(issue))}")
        return 2
    except FileNotFoundError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    except IsADirectoryError:
        console.print(f"[red]{escape(str(args.suite))} is a directory: pass a suite's YAML "
                      f"file (e.g. {escape(str(args.suite / 'smoke.yaml'))})[/]")
        return 2
    except OSError as exc:
        console.print(f"[red]cannot read suite {escape(str(args.suite))}: "
                      f"{escape(exc.strerror or str(exc))}[/]")
        return 2
    for warning in suite.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(warning))}")
    placement = _placed(suite.placement, args)
    if args.address and placement.executor != "ray":
        console.print(f"[yellow]warning:[/] --address is read by the ray executor only; this "
                      f"run's executor is {placement.executor}")

    if args.dry_run:
        return _dry_run(suite, placement, args.db)

    from harness.models import cache_dir as default_cache_dir
    from harness.runner import Driver
    from harness.store import Store, StoreError

    try:
        store = Store(args.db)
    except StoreError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    except OSError as exc:
        return _unwritable(Path(args.db), exc)

    cache_dir = args.cache_dir or default_cache_dir()
    executor = _executor(placement, suite, plugins, components, cache_dir, Path(args.db))
    from harness.probes.host_load import host_busy_now

    busy = None if placement.remote else host_busy_now()  # a cluster's nodes aren't here
    if busy:
        console.print(f"[yellow]warning:[/] {escape(busy)} before the first run: timings will "
                      "be noisier, and runs that can't reach measure.rel_precision are stored "
                      "as invalid")
    scenario = components.scenarios.get(suite.scenario)
    driver = Driver(suite, store, plugins, executor, RichReporter(),
                    columns=getattr(scenario, "columns", None))
    try:
        outcome = driver.run(rerun=args.rerun, retry_failed=args.retry_failed)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: finished runs are stored; run again to resume[/]")
        return 130
    except StoreError as exc:  # the spool of an earlier run could not be stored either
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    specs = {spec.run_key: spec for spec in suite.runs}
    if outcome.results:
        # On a terminal, what fits in it; in a log, which has no edge, the table's own width.
        table = summary_table(specs, outcome.results, out.width if out.is_terminal else None)
        if not out.is_terminal:
            out.width = max(out.width, natural_width(table))
        out.print(table)
        busy = busy_hosts(specs, outcome.results)
        if busy:
            console.print(f"[yellow]{len(busy)} run(s) were timed on a busy host "
                          "(their timings are noisier; see each run's page):[/]")
            for line in busy:
                console.print(f"  {escape(line)}")
    counts: dict[str, int] = {}
    for result in outcome.results:
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    if outcome.skipped:
        parts.append(f"{outcome.skipped} resumed from the store")
    console.print(f"{suite.name}: {', '.join(parts) or 'nothing to do'} -> {args.db}")
    if outcome.stopped:
        full = "No space left" in outcome.stopped or "ENOSPC" in outcome.stopped
        console.print(f"[red]{'disk full' if full else 'store fault'}: {outcome.stored} run(s) "
                      f"stored, {len(outcome.unsaved)} spooled to {escape(str(driver.spool_dir))}"
                      f", {outcome.not_run} not run; {'free space' if full else 'mend it'} and "
                      "rerun (spooled results are stored first)[/]")
        console.print(f"  {escape(outcome.stopped)}")
        if outcome.lost:
            console.print(f"[red]  {len(outcome.lost)} result(s) could not be spooled either "
                          "and will run again[/]")
        return 1
    if outcome.failures and not args.keep_going_exit_0:
        return 1
    return 0


def _placed(placement: Placement, args: argparse.Namespace) -> Placement:
    """The suite's placement with the command line's ``--address``."""
    if args.address:
        placement = replace(placement, ray=placement.ray.model_copy(
            update={"address": args.address}))
    return placement


def _resolve_device(args: argparse.Namespace, spec: str, placement: Placement
                    ) -> tuple[str, str]:
    """Where the runs will execute: here, or a cluster's node asked by a probe task."""
    if placement.executor == "ray":
        from harness.executors.ray import probe_device

        return probe_device(spec, placement)
    if placement.executor == "slurm":
        from harness.executors.slurm import default_folder, probe_device

        console.print("[dim]asking a Slurm node for its hardware (one short job)…[/]")
        return probe_device(spec, placement, default_folder(Path(args.db), placement))
    from harness.environment import resolve_device

    return resolve_device(spec)


def _executor(placement: Placement, suite, plugins, components, cache_dir: str, db: Path):
    base_dir = suite.path.parent
    if placement.executor == "inline":
        from harness.executors.inline import InlineExecutor

        return InlineExecutor(plugins, components, suite.device, cache_dir)
    if placement.executor == "ray":
        from harness.executors.ray import RayExecutor

        return RayExecutor(plugins, suite.device, cache_dir, placement, base_dir=base_dir)
    if placement.executor == "slurm":
        from harness.executors.slurm import SlurmExecutor, default_folder

        return SlurmExecutor(plugins, suite.device, cache_dir, placement,
                             default_folder(db, placement), suite_name=suite.name,
                             base_dir=base_dir)
    from harness.executors.subprocess import SubprocessExecutor

    return SubprocessExecutor(plugins, suite.device, cache_dir, isolation=placement.isolation,
                              base_dir=base_dir, workers=placement.workers)


def _dry_run(suite, placement: Placement, db: str) -> int:
    from harness.store import StoreError, connect_readonly

    stored: dict[str, str] = {}
    if Path(db).exists():
        try:
            con = connect_readonly(db)
            try:
                stored = dict(con.execute("SELECT run_key, status FROM runs").fetchall())
            finally:
                con.close()
        except StoreError as exc:
            console.print(f"[yellow]could not read {escape(db)}: {escape(str(exc))}[/]")
    table = Table(title=f"{suite.name}: {len(suite.runs)} runs"
                  + (f" ({suite.excluded} excluded)" if suite.excluded else ""))
    for column in ("run key", "model", "task", "method", "params", "seed", "stored"):
        table.add_column(column)
    for spec in suite.runs:
        params = ", ".join(f"{k}={v}" for k, v in sorted(spec.params.items()))
        table.add_row(spec.run_key, escape(spec.model["ref"]), escape(spec.task),
                      escape(spec.method), escape(params), str(spec.seed),
                      stored.get(spec.run_key, "—"))
    out.print(table)
    first = suite.runs[0] if suite.runs else None
    if first is not None:
        if placement.remote:
            resources = placement.resources
            where = (f"{resources.cpus} CPU(s) and {resources.gpus_per_run(first.device):g} "
                     "GPU(s) per run")
        else:
            where = (f"isolation {placement.isolation}, workers "
                     f"{placement.workers if first.device == 'cpu' else 'one per GPU'}")
        out.print(f"device {first.device} ({escape(str(first.config['hardware']))}), "
                  f"executor {placement.executor}, {where}")
    return 0


# -- list -----------------------------------------------------------------------------------


def _list_entries(section: str, registry: Any) -> list[tuple[str, str, str]]:
    """(name, what it belongs to, description) per component of a ``harness list`` section."""
    middle = {
        "scenarios": lambda item: "protocol: " + (", ".join(item.method_protocol) or "—"),
        "methods": lambda item: ", ".join(getattr(item, "scenarios", ())),
        "tasks": lambda item: getattr(item, "scenario", ""),
        "models": lambda item: ", ".join(getattr(item, "kinds", ())),
        "sources": lambda item: "",
    }[section]
    return [(name, middle(item), str(getattr(item, "description", "")))
            for name, item in registry]


def _builtin_suite_entries(components: Any) -> list[tuple[str, str, str]]:
    """Each built-in suite: its name, how many runs it expands to, its description."""
    from harness.reference import builtin_suites
    from harness.suite import SuiteError, read_suite, resolve_suite

    entries = []
    for name, entry in builtin_suites().items():
        try:
            suite_file = read_suite(Path(str(entry)))
            # Counting runs needs no device: any stands in (a GPU suite counts on a CPU).
            suite = resolve_suite(suite_file, components,
                                  lambda spec, _: (spec.replace("auto", "cpu"), "any"))
            runs = f"{len(suite.runs)} runs"
            description = suite.description
        except (SuiteError, OSError) as exc:
            runs, description = "? runs", f"(cannot be resolved here: {str(exc).splitlines()[0]})"
        entries.append((name, runs, description))
    return entries


def cmd_list(args: argparse.Namespace) -> int:
    """One line per component at any width (like ``pip list``); ``harness show`` has more."""
    from harness.reference import list_lines

    plugins, components = _load(args.plugin)
    what = args.what
    registries = {"scenarios": components.scenarios, "methods": components.methods,
                  "tasks": components.tasks, "models": components.models,
                  "sources": components.model_sources}
    if what == "plugins":
        entries = [(name, plugins.versions.get(name, ""), "loaded")
                   for name, _ in plugins.manager.list_name_plugin()]
        entries += [(name, "", f"failed: {error}") for name, error in plugins.failures.items()]
        lines = list(list_lines(entries))
    elif what == "suites":
        lines = [*list_lines(_builtin_suite_entries(components)),
                 "harness run NAME runs one; harness show suite NAME prints it"]
    else:
        lines = []
        for section in (what,) if what != "all" else tuple(registries):
            if what == "all":
                lines += ["", f"{section}:"] if lines else [f"{section}:"]
            lines += list_lines(_list_entries(section, registries[section]))
        kind = "KIND" if what == "all" else what.removesuffix("s")
        lines.append(f"harness show {kind} NAME: its params and their docs")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The full reference of one component, or a built-in suite's YAML."""
    from harness.reference import KINDS, reference
    from harness.registry import RegistryError

    if args.kind == "suite":
        entry = _builtin_suite(args.name, f"no built-in suite '{args.name}'")
        if entry is None:
            return 2
        sys.stdout.write(entry.read_text(encoding="utf-8"))
        return 0
    plugins, components = _load(args.plugin)
    registry = getattr(components, KINDS[args.kind])
    try:
        item = registry.get(args.name)
    except RegistryError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    plugin = registry.plugin_of(args.name)
    sys.stdout.write(reference(args.kind, args.name, item, plugin,
                               plugins.versions.get(plugin, ""), components.scenarios))
    return 0


# -- query / export -------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    from harness.store import StoreError, query

    try:
        columns, rows = query(args.db, args.sql)
    except (StoreError, FileNotFoundError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    if args.format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    elif args.format == "json":
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], default=str,
                         indent=1))
    else:
        table = Table()
        for column in columns:
            table.add_column(escape(column))
        for row in rows:
            table.add_row(*(escape("NULL" if v is None else str(v)) for v in row))
        out.print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from harness.report import ReportError, export_tables
    from harness.store import StoreError, export_parquet

    if not (args.parquet or args.latex or args.markdown):
        console.print("[red]say what to export: --parquet DIR (every table of the store), "
                      "--latex DIR or --markdown DIR (every leaderboard and view)[/]")
        return 2
    paths = []
    try:
        if args.parquet:
            paths += export_parquet(args.db, args.parquet)
        if args.latex or args.markdown:
            columns, roles = _installed_layout(args.plugin)
            paths += export_tables(args.db, latex_dir=args.latex, markdown_dir=args.markdown,
                                   suites=args.suite, columns=columns, roles=roles)
    except (ReportError, StoreError, FileNotFoundError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    for path in paths:
        out.print(escape(str(path)))
    return 0


def _installed_layout(plugin_args: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """What the installed scenarios declare about their columns and the installed methods
    about their roles: they stand in for what a store written before stores kept them
    lacks (the store's own come first)."""
    _, components = _load(plugin_args)
    declared = {name: scenario.columns for name, scenario in components.scenarios
                if getattr(scenario, "columns", None) is not None}
    roles = {name: method.role for name, method in components.methods
             if getattr(method, "role", None) is not None}
    return declared, roles


def cmd_report(args: argparse.Namespace) -> int:
    from harness.report import ReportError, build_site, serve
    from harness.store import StoreError

    declared, roles = _installed_layout(args.plugin)
    try:
        summary = build_site(args.db, args.out, title=args.title, suites=args.suite,
                             columns=declared, roles=roles)
    except (ReportError, StoreError, FileNotFoundError) as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 1
    out.print(f"wrote {summary.pages} pages ({summary.leaderboards} leaderboards, "
              f"{summary.run_pages} run pages) to {escape(str(summary.out))} "
              f"in {summary.seconds:.1f} s; open {escape(str(summary.out / 'index.html'))}")
    if args.serve:
        serve(summary.out, args.port)
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from harness.scaffold import ScaffoldError, scaffold_plugin

    try:
        root = scaffold_plugin(args.name, Path(args.dir), scenario=args.scenario)
    except ScaffoldError as exc:
        console.print(f"[red]{escape(str(exc))}[/]")
        return 2
    out.print(f"created {root}\n\nnext:\n  pip install -e {root}\n"
              f"  pytest {root}\n  harness run {root / 'suite.yaml'}")
    return 0


# -- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Benchmark efficient deep-learning methods: quality and cost in one run.",
    )
    parser.add_argument("--version", action="version", version=f"harness {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also HARNESS_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    plugin_help = "load a plugin module or .py file (repeatable); -p no:NAME blocks one"

    run = sub.add_parser("run", help="run a suite (resumes: stored runs are skipped)")
    run.add_argument("suite", type=Path, help="suite YAML file")
    run.add_argument("--db", default=DEFAULT_DB, help=f"DuckDB store (default {DEFAULT_DB})")
    run.add_argument("-p", dest="plugin", action="append", default=[], help=plugin_help)
    run.add_argument("--dry-run", action="store_true", help="print the expanded runs and keys")
    run.add_argument("--rerun", action="store_true", help="run every run again, stored or not")
    run.add_argument("--retry-failed", action="store_true",
                     help="run again stored runs that failed, crashed, timed out or hit OOM")
    run.add_argument("--executor", choices=EXECUTORS, help="override the suite's executor")
    run.add_argument("--address", help="ray executor: the cluster to join ('auto', "
                     "'HOST:6379', 'local' for a new one; default: the suite's ray.address, "
                     "else Ray's default)")
    run.add_argument("--device", help="override the suite's device (auto, cpu, cuda, cuda:N)")
    run.add_argument("--cache-dir", help="built-in models and data (default: user cache dir)")
    run.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                     help="show the full traceback of an error (also HARNESS_DEBUG=1)")
    run.add_argument("--wait", action="store_true",
                     help="when another harness run holds the store, wait for it to finish")
    run.add_argument("--keep-going-exit-0", action="store_true",
                     help="exit 0 even when runs failed")
    run.set_defaults(func=cmd_run)

    lst = sub.add_parser("list", help="one line per scenario, method, task, model, source, "
                         "plugin or built-in suite")
    lst.add_argument("what", nargs="?", default="all",
                     choices=("all", "scenarios", "methods", "tasks", "models", "sources",
                              "plugins", "suites"))
    lst.add_argument("-p", dest="plugin", action="append", default=[], help=plugin_help)
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="a component's full reference (params with their "
                          "docs), or a built-in suite's YAML")
    show.add_argument("kind", choices=("method", "scenario", "task", "model", "source", "suite"))
    show.add_argument("name")
    show.add_argument("-p", dest="plugin", action="append", default=[], help=plugin_help)
    show.set_defaults(func=cmd_show)

    qry = sub.add_parser("query", help="run read-only SQL on the store")
    qry.add_argument("sql")
    qry.add_argument("--db", default=DEFAULT_DB)
    qry.add_argument("--format", choices=("table", "csv", "json"), default="table")
    qry.set_defaults(func=cmd_query)

    exp = sub.add_parser("export", help="export the store's tables (Parquet) or its "
                         "leaderboards and views for a paper (LaTeX, Markdown)")
    exp.add_argument("--parquet", metavar="DIR", help="write DIR/<table>.parquet")
    exp.add_argument("--latex", metavar="DIR",
                     help="write each leaderboard and view as booktabs LaTeX under DIR")
    exp.add_argument("--markdown", metavar="DIR",
                     help="write each leaderboard and view as GitHub Markdown under DIR")
    exp.add_argument("--suite", action="append", default=[],
                     help="only this suite (repeatable; default: every suite)")
    exp.add_argument("-p", dest="plugin", action="append", default=[], help=plugin_help)
    exp.add_argument("--db", default=DEFAULT_DB)
    exp.set_defaults(func=cmd_export)

    rep = sub.add_parser("report", help="build the static leaderboard site from the store")
    rep.add_argument("db", nargs="?", default=DEFAULT_DB,
                     help=f"DuckDB store (default {DEFAULT_DB})")
    rep.add_argument("--out", default="site", help="site folder (default: site)")
    rep.add_argument("--title", default="harness leaderboard", help="site title")
    rep.add_argument("--suite", action="append", default=[],
                     help="only this suite (repeatable; default: every suite)")
    rep.add_argument("--serve", action="store_true",
                     help="then preview it on http://127.0.0.1:PORT/ until Ctrl-C")
    rep.add_argument("--port", type=int, default=8000, help="preview port (default 8000)")
    rep.add_argument("-p", dest="plugin", action="append", default=[], help=plugin_help)
    rep.set_defaults(func=cmd_report)

    new = sub.add_parser("new-plugin", help="scaffold a plugin package that runs as generated")
    new.add_argument("name", help="plugin name, e.g. my-method")
    new.add_argument("--dir", default=".", help="parent folder (default: current)")
    new.add_argument("--scenario", default="perplexity",
                     help="the scenario whose method protocol the plugin implements "
                          "(default: perplexity; harness list scenarios)")
    new.set_defaults(func=cmd_new_plugin)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug or os.environ.get("HARNESS_DEBUG") == "1":
        return int(args.func(args) or 0)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # a fault is a sentence; --debug shows its traceback
        console.print(f"[red]error: {escape(type(exc).__name__)}: {escape(str(exc))}[/]\n"
                      "(run again with --debug, or HARNESS_DEBUG=1, for the traceback)")
        return 1


if __name__ == "__main__":
    sys.exit(main())
