"""A suite's ``views:``: the pivot tables its leaderboard prints, checked against its runs.

A view names its rows, its columns and a metric (:class:`harness.layout.View`). It is
checked like the rest of the suite, with file:line, and against the expanded runs: every
dimension it names must be one the runs have, every ``where`` value one they take, and
each of its cells must hold one configuration, so that a cell's mean is over seeds and
never over, say, two learning rates the view does not show.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from harness.api import ResultColumns, RunSpec
from harness.canonical import canonical_json, describe
from harness.layout import BINS, View, dimension_label, run_dimensions
from harness.registry import did_you_mean
from harness.suite.checker import Loc, SuiteChecker, plain, quoted, yaml_value

__all__ = ["VIEW_KEYS", "read_views"]

#: Keys a ``views`` entry may have.
VIEW_KEYS = ("title", "rows", "columns", "metric", "phase", "where", "mean", "delta")
_PLAIN = ("method", "model", "task")


def read_views(checker: SuiteChecker, runs: Sequence[RunSpec],
               columns: ResultColumns | None) -> tuple[View, ...]:
    """The valid ``views:`` entries; ``columns`` is what the scenario declares (its quality
    metrics, their breakdowns and its cost columns), None when it declares nothing."""
    raw = checker.data.get("views")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        checker.error(("views",), "expected a list of views like {rows: [method], columns: "
                      f"buffer, metric: accuracy}}, got {describe(raw)}")
        return ()
    dims = [run_dimensions(r.method, r.model["ref"], r.task, r.params, r.task_params)
            for r in runs]
    names = sorted({d for run in dims for d in run})
    views = []
    for i, entry in enumerate(raw):
        view = _view(checker, ("views", i), entry, runs, dims, names, columns)
        if view is not None:
            views.append(view)
    return tuple(views)


def _view(checker: SuiteChecker, loc: Loc, entry: Any, runs: Sequence[RunSpec],
          dims: list[dict[str, Any]], names: list[str], declared: ResultColumns | None
          ) -> View | None:
    if not isinstance(entry, dict):
        checker.error(loc, f"expected a mapping with keys among {quoted(VIEW_KEYS)}, "
                      f"got {describe(entry)}")
        return None
    before = len(checker.issues)
    checker.check_keys(loc, entry, VIEW_KEYS, "view key")
    if "columns" not in entry:
        checker.error((*loc, "columns"), "missing: a view needs 'columns' (a param, 'task', "
                      f"'model' or '{BINS}')", at=loc)
    raw_rows = entry.get("rows", ["method"])
    if isinstance(raw_rows, str):
        raw_rows = [raw_rows]
    rows: list[str] = []
    if not isinstance(raw_rows, list) or not raw_rows:
        checker.error((*loc, "rows"), "expected a dimension or a non-empty list of them "
                      f"(e.g. [method, bits]), got {describe(raw_rows)}")
    else:
        for j, name in enumerate(raw_rows):
            where = (*loc, "rows", j) if isinstance(entry.get("rows"), list) else (*loc, "rows")
            dimension = _dimension(checker, where, name, names)
            if dimension is not None:
                rows.append(dimension)
    column = None
    if "columns" in entry:
        if entry["columns"] == BINS:
            column = BINS
        else:
            column = _dimension(checker, (*loc, "columns"), entry["columns"], names,
                                extra=(BINS,))
        if column is not None and column in rows:
            checker.error((*loc, "columns"), f"'{entry['columns']}' is already a row dimension")
    metric, phase = _metric(checker, loc, entry, declared, column == BINS)
    where = _where(checker, loc, entry.get("where"), dims, names)
    flags = {}
    for key in ("mean", "delta"):
        value = entry.get(key, False)
        if not isinstance(value, bool):
            checker.error((*loc, key), f"expected true or false, got {describe(value)}")
        flags[key] = value is True
    title = entry.get("title")
    if title is not None and (not isinstance(title, str) or not title.strip()):
        checker.error((*loc, "title"), f"expected a title (a string), got {describe(title)}")
    if len(checker.issues) > before or column is None or metric is None:
        return None
    view = View(
        title=title or f"{metric} by {column.rpartition('.')[2]}",
        rows=tuple(rows), columns=column, metric=metric, phase=phase, where=where,
        **flags,
    )
    _one_configuration_per_cell(checker, loc, view, runs, dims)
    return view


def _dimension(checker: SuiteChecker, loc: Loc, name: Any, names: list[str],
               extra: tuple[str, ...] = ()) -> str | None:
    """A dimension as written (``buffer``, ``params.buffer``, ``task``) -> its full name."""
    if not isinstance(name, str) or not name:
        checker.error(loc, f"expected a dimension name, got {describe(name)}")
        return None
    if name in names:
        return name
    matches = [n for n in names if n.partition(".")[2] == name]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        checker.error(loc, f"'{name}' is both a method param and a task param; write "
                      f"{' or '.join(matches)}")
        return None
    params = sorted({n.partition(".")[2] for n in names if "." in n})
    also = "".join(f", or '{e}'" for e in extra)
    checker.error(loc, f"no run of this suite has a dimension '{name}' (a view's rows and "
                  f"columns are {', '.join(_PLAIN)}, or a method or task param the runs "
                  f"have: {', '.join(params) or 'none'}{also})"
                  + did_you_mean(name, [*_PLAIN, *extra, *params]))
    return None


def _metric(checker: SuiteChecker, loc: Loc, entry: dict[str, Any],
            declared: ResultColumns | None, bins: bool) -> tuple[str | None, str | None]:
    declared = declared or ResultColumns()
    quality, costs = declared.headline_by_metric(), declared.cost_columns()
    metric = entry.get("metric")
    if metric is None:
        if not quality:
            checker.error((*loc, "metric"), "missing: this suite's scenario declares no "
                          "headline metric, so a view must name its metric", at=loc)
            return None, None
        metric = next(iter(quality))
    elif not isinstance(metric, str) or not metric:
        checker.error((*loc, "metric"), f"expected a metric name, got {describe(metric)}")
        return None, None
    elif quality and metric not in quality and metric not in costs:
        # A scenario may record more quality metrics than it declares: a warning, not an
        # error, but one that catches a typo.
        checker.warn((*loc, "metric"), f"'{metric}' is not a metric the scenario declares "
                     f"(quality: {', '.join(quality)}; costs: {', '.join(costs)})"
                     + did_you_mean(metric, [*quality, *costs])
                     + "; the view stays empty unless the runs record it")
    if bins and quality and (metric not in quality or not quality[metric].breakdown):
        with_bins = [q.metric for q in quality.values() if q.breakdown]
        checker.error((*loc, "columns"), f"'{BINS}' needs a metric recorded per bin; "
                      f"'{metric}' is not (these are: {', '.join(with_bins) or 'none'})")
        return None, None
    phase = entry.get("phase")
    if phase is not None and not isinstance(phase, str):
        checker.error((*loc, "phase"), f"expected a phase name, got {describe(phase)}")
        return None, None
    if phase is None and metric in quality:
        phase = quality[metric].phase
    return metric, phase


def _where(checker: SuiteChecker, loc: Loc, raw: Any, dims: list[dict[str, Any]],
           names: list[str]) -> dict[str, list[Any]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not raw:
        checker.error((*loc, "where"), "expected a mapping like {task: needle, context_len: "
                      f"1024}}, got {describe(raw)}")
        return {}
    where: dict[str, list[Any]] = {}
    for key, value in raw.items():
        dimension = _dimension(checker, (*loc, "where", key), key, names)
        if dimension is None:
            continue
        values = [plain(v) for v in value] if isinstance(value, list) else [plain(value)]
        taken = {canonical_json(run[dimension]) for run in dims if dimension in run}
        for v in values:
            if canonical_json(v) not in taken:
                shown = ", ".join(sorted(taken))
                checker.error((*loc, "where", key), f"no run has {key} {yaml_value(v)} "
                              f"(the runs have: {shown})")
        where[dimension] = values
    return where


def _one_configuration_per_cell(checker: SuiteChecker, loc: Loc, view: View,
                                runs: Sequence[RunSpec], dims: list[dict[str, Any]]) -> None:
    """A cell's seeds must all be one configuration: say which dimensions tell them apart."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for run, dimensions in zip(runs, dims, strict=True):
        if not view.matches(dimensions):
            continue
        column = None if view.columns == BINS else canonical_json(dimensions.get(view.columns))
        row = tuple(canonical_json(dimensions.get(d)) for d in view.rows)
        cells[(row, column, run.seed)].append(dimensions)
    if not cells:
        checker.error(loc, "no run of this suite matches the view's where")
        return
    for group in cells.values():
        if len(group) < 2:
            continue
        differing = sorted({d for dimensions in group for d in dimensions
                            if len({canonical_json(x.get(d)) for x in group}) > 1})
        shown = ", ".join(dict.fromkeys(dimension_label(d) for d in differing))
        checker.error(loc, f"a cell of this view would average runs that differ in {shown} "
                      "(not seeds); add them to rows, or pick one with where")
        return
