"""Pivot views: the tables a paper prints (method × buffer, method × task with a mean).

A suite's ``views:`` (:class:`harness.layout.View`, checked when the suite was resolved)
are rendered per hardware group from each run's own figure: a cell is the mean ± 95 % CI
over the seeds of one configuration, the mean column averages each seed over the columns
first (so its interval is over seeds too), and the best cell of each column among the
contenders is marked. References and bounds are pinned above the contenders, as on the
leaderboard, and never marked best.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import duckdb

from harness.canonical import canonical_json
from harness.columns import ResultColumns
from harness.layout import BINS, View, dimension_label, run_dimensions
from harness.report.names import UniqueNames, slugify
from harness.report.numbers import ci95, fmt_delta, fmt_mean, mean_sd
from harness.report.plots import Plot, Series, curves_plot
from harness.report.query import COMPARED_WITH, QUALITY_RUNS, ROLE_RANK, SiteData

__all__ = ["ViewRow", "ViewTable", "view_tables"]

#: A rendered cell, as on the leaderboard: (class, sort key, text, "± ci", unit, note, title).
Cell = tuple[str, str, str, str, str, str, str]


@dataclass(slots=True)
class ViewRow:
    labels: list[str]
    role: str  # "" for a contender
    cells: list[Cell]
    run_keys: str = ""


@dataclass(slots=True)
class ViewTable:
    """One view of one suite on one hardware group, ready to render or export."""

    title: str
    suite: str
    hardware: str
    metric: str  # the metric's label, its unit and which way is better
    higher_is_better: bool
    row_headers: list[str]
    column_title: str
    columns: list[str]
    mean: bool  # whether the cells end with a mean over the columns
    pinned: list[ViewRow] = field(default_factory=list)
    rows: list[ViewRow] = field(default_factory=list)
    stem: str = ""  # file name stem of its downloads, in the suite's folder
    note: str = ""
    plot: Plot | None = None  # its rows against its columns, where those are numbers


_RUNS_SQL = f"""
SELECT b.suite, b.hardware, b.run_key, b.seed, b.model, b.method, b.task_name, b.params,
       b.task_params, b.scenario, b.status = b.basis AS of_basis
FROM board_run AS b
WHERE {QUALITY_RUNS} AND b.suite = $1
ORDER BY b.hardware, b.run_key
"""


def view_tables(con: duckdb.DuckDBPyConnection, data: SiteData
                ) -> dict[tuple[str, str], list[ViewTable]]:
    """Every suite's views per hardware group, keyed by (suite, hardware). Needs the
    ``board_run`` table of :func:`harness.report.query.plan`."""
    tables: dict[tuple[str, str], list[ViewTable]] = defaultdict(list)
    taken = {board.path.rsplit("/", 1)[-1].removesuffix(".html") for board in data.boards}
    for suite, layout in data.layouts.items():
        if not layout.views:
            continue
        # Only the runs of the suite as it declared its views, not its earlier versions'.
        current = set(layout.runs)
        names = UniqueNames(taken)
        by_hardware: dict[str, list[tuple]] = defaultdict(list)
        for run in con.execute(_RUNS_SQL, [suite]).fetchall():
            if not current or run[2] in current:
                by_hardware[run[1]].append(run)
        for hardware, group in sorted(by_hardware.items()):
            declared = data.declared.get(group[0][9], ResultColumns())
            for view in layout.views:
                table = _table(con, suite, hardware, view, group, declared, layout.roles)
                if table is None:
                    continue
                table.stem = names.get(f"{suite}\0{hardware}\0{view.title}",
                                       f"view-{slugify(view.title)}-{slugify(hardware)}")
                tables[(suite, hardware)].append(table)
    return tables


def _values(con: duckdb.DuckDBPyConnection, view: View, run_keys: list[str],
            declared: ResultColumns
            ) -> tuple[dict[str, dict[str, float]], str, bool, str, bool]:
    """Per run, the view's figure per column stat (``value``, or each bin's stat), with the
    metric's unit, direction, label and whether it is a quality (not a cost)."""
    quality, costs = declared.headline_by_metric(), declared.cost_columns()
    is_cost = view.metric in costs and view.metric not in quality
    if is_cost:
        cost = costs[view.metric]
        rows = con.execute(
            "SELECT run_key, phase, 'value', value, unit, NULL FROM metrics "
            "WHERE metric = $1 AND stat = $2 AND value IS NOT NULL "
            "AND list_contains($3::VARCHAR[], run_key)",
            [cost.metric, cost.stat, run_keys]).fetchall()
        label, hib = cost.label, cost.higher_is_better
    else:
        prefix = quality[view.metric].breakdown if view.metric in quality else None
        rows = con.execute(
            "SELECT run_key, phase, stat, value, unit, higher_is_better FROM metrics "
            "WHERE metric = $1 AND value IS NOT NULL AND list_contains($2::VARCHAR[], run_key) "
            "AND (CASE WHEN $3 THEN starts_with(stat, $4) ELSE stat = 'value' END)",
            [view.metric, run_keys, view.columns == BINS, prefix or ""]).fetchall()
        label = view.metric.replace("_", " ")
        hib = (quality[view.metric].higher_is_better if view.metric in quality
               else any(r[5] for r in rows))
    phases = sorted({r[1] for r in rows})
    phase = view.phase if view.phase is not None else (phases[0] if phases else None)
    per_phase = view.metric not in costs or costs[view.metric].per_phase
    values: dict[str, dict[str, float]] = defaultdict(dict)
    unit = ""
    for run_key, row_phase, stat, value, row_unit, _ in rows:
        if per_phase and row_phase != phase:
            continue
        unit = row_unit or unit
        # A peak is the peak of the whole run: the maximum over its phases.
        values[run_key][stat] = max(value, values[run_key].get(stat, -math.inf))
    return values, unit, hib, label, not is_cost


def _table(con: duckdb.DuckDBPyConnection, suite: str, hardware: str, view: View,
           runs: list[tuple], declared: ResultColumns, roles: dict[str, str]
           ) -> ViewTable | None:
    matched, of_basis = [], set()
    for run in runs:
        _, _, run_key, seed, model, method, task, params, task_params, _, basis_seed = run
        dims = run_dimensions(method, model, task, json.loads(params), json.loads(task_params))
        if view.matches(dims):
            matched.append((run_key, seed, dims))
            if basis_seed:
                of_basis.add(run_key)
    if not matched:
        return None
    values, unit, hib, label, quality = _values(con, view, [m[0] for m in matched], declared)
    if not quality:  # runs whose timings alone are in doubt count for a quality, not a cost
        matched = [m for m in matched if m[0] in of_basis]
    bins = view.columns == BINS
    # cells[row][column] -> seed -> value
    cells: dict[tuple, dict[Any, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    row_labels: dict[tuple, list[str]] = {}
    row_roles: dict[tuple, str] = {}
    row_keys: dict[tuple, list[str]] = defaultdict(list)
    column_values: dict[Any, Any] = {}
    everywhere: dict[tuple, dict[int, float]] = defaultdict(dict)
    for run_key, seed, dims in matched:
        row = tuple(canonical_json(dims.get(d)) for d in view.rows)
        row_labels[row] = [_text(dims[d]) if d in dims else "—" for d in view.rows]
        row_keys[row].append(run_key)
        if run_key in roles:
            row_roles[row] = roles[run_key]
        figures = values.get(run_key, {})
        if bins:
            for stat, value in figures.items():
                cells[row][stat][seed] = value
                column_values[stat] = stat
        elif view.columns not in dims:
            # A run without the column's param (joint training has no replay buffer) holds
            # for every column.
            if "value" in figures:
                everywhere[row][seed] = figures["value"]
        else:
            column = canonical_json(dims[view.columns])
            column_values[column] = dims[view.columns]
            if "value" in figures:
                cells[row][column][seed] = figures["value"]
    columns = sorted(column_values, key=lambda c: _sort_key(column_values[c]))
    for row, by_seed in everywhere.items():
        for column in columns:
            cells[row][column].update(by_seed)
    if bins:
        headline = declared.headline_by_metric().get(view.metric)
        prefix = headline.breakdown if headline else ""
        headings = [c.removeprefix(prefix or "") for c in columns]
        column_title = (prefix or "bin").rstrip("_") + " bin"
    else:
        headings = [_text(column_values[c]) for c in columns]
        column_title = dimension_label(view.columns)
    keys = [*columns, *(["mean"] if view.mean else [])]
    stats: dict[tuple, dict[Any, tuple[float, float | None, int]]] = {}
    for row, by_column in cells.items():
        stats[row] = {c: _summary(list(by_column[c].values())) for c in columns
                      if by_column.get(c)}
        if view.mean:
            seeds = set.intersection(*(set(by_column.get(c, {})) for c in columns))
            per_seed = [statistics.fmean(by_column[c][s] for c in columns) for s in seeds]
            if per_seed:
                stats[row]["mean"] = _summary(per_seed)
    ordered = sorted(row_labels, key=lambda r: (
        ROLE_RANK[row_roles.get(r)],
        [_sort_key(json.loads(x)) for x in r]))
    contenders = [r for r in ordered if r not in row_roles]
    best = {}
    for key in keys:
        means = [stats[r][key][0] for r in contenders if key in stats[r]]
        if means:
            best[key] = max(means) if hib else min(means)
    reference = next((r for role in COMPARED_WITH for r in ordered
                      if row_roles.get(r) == role), None) if view.delta else None
    table = ViewTable(
        title=view.title, suite=suite, hardware=hardware,
        metric=f"{label}{f' ({unit})' if unit else ''}, "
               f"{'higher' if hib else 'lower'} is better",
        higher_is_better=hib, row_headers=[dimension_label(d) for d in view.rows],
        column_title=column_title, columns=headings, mean=view.mean,
    )
    most = max((n for row in stats.values() for _, _, n in row.values()), default=0)
    for row in ordered:
        role = row_roles.get(row, "")
        rendered = []
        for key in keys:
            against = (stats[reference].get(key)
                       if reference is not None and row != reference and not role else None)
            rendered.append(_cell(stats[row].get(key), unit, None if role else best.get(key),
                                  most, against, key == "mean", quality))
        target = table.pinned if role else table.rows
        target.append(ViewRow(row_labels[row], role.replace("-", " "), rendered,
                              " ".join(sorted(row_keys[row]))))
    notes = []
    if view.mean:
        notes.append("The mean column averages each seed over the columns, then over seeds "
                     "(rows missing a column have none).")
    if reference is not None:
        role = row_roles[reference].replace("-", " ")
        notes.append(f"Small print under a cell: its difference from "
                     f"{' '.join(row_labels[reference])} ({role}).")
    table.note = " ".join(notes)
    if not bins and all(_is_number(column_values[c]) for c in columns):
        table.plot = curves_plot(
            view.title, column_title, label, unit, hib,
            [Series(_series_name(table.row_headers, row_labels[row]), row_roles.get(row),
                    [(column_values[c], *stats[row][c][:2]) for c in columns
                     if c in stats[row]])
             for row in ordered])
    return table


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _series_name(headers: list[str], labels: list[str]) -> str:
    """A row's name in a legend: its first dimension, then the others as ``name=value``."""
    rest = [f"{h}={v}" for h, v in zip(headers[1:], labels[1:], strict=True) if v != "—"]
    return f"{labels[0]} ({', '.join(rest)})" if rest else labels[0]


def _summary(values: list[float]) -> tuple[float, float | None, int]:
    """(mean, 95 % CI half-width or None, n) of one cell's seeds."""
    mean, sd = mean_sd(values)
    return mean, ci95(sd, len(values)), len(values)


def _cell(stat: tuple[float, float | None, int] | None, unit: str, best: float | None,
          most: int, against: tuple[float, float | None, int] | None, mean: bool,
          quality: bool) -> Cell:
    if stat is None:
        reason = "a column is missing for this row" if mean else "no run for this cell"
        return ("num missing", "", "—", "", "", "", reason)
    value, ci, n = stat
    text, ci_text, unit_text = fmt_mean(value, ci, unit)
    notes = [fmt_delta(value, against[0], unit, quality)] if against else []
    if n != most:
        notes.append(f"n={n}")
    cls = "num best" if best is not None and value == best else "num"
    return (cls, repr(value), text, ci_text, unit_text, " · ".join(filter(None, notes)), "")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sort_key(value: Any) -> tuple:
    """Numbers in numeric order before text; JSON text for the rest."""
    return (0, value) if _is_number(value) else (1, _text(value))
