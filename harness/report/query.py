"""Reading the store: which leaderboards the site has, and every cell's mean over seeds.

DuckDB selects and groups (millions of metric rows never become Python objects one at a
time); each cell's handful of seed values is averaged here, exactly rounded. A cell is a
quality metric a run recorded with ``higher_is_better``, or a cost column (the core's
:data:`~harness.columns.CORE_COSTS` and the columns each scenario declares, matched only for
that scenario's runs).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb

from harness.api import ROLES, TIMING_ONLY_INVALID
from harness.columns import CORE_COSTS, CostColumn, ResultColumns, merged
from harness.layout import Layout
from harness.report.names import UniqueNames, slugify, when
from harness.report.numbers import mean_sd

__all__ = [
    "COMPARED_WITH",
    "QUALITY_RUNS",
    "ROLE_RANK",
    "Agg",
    "Board",
    "Column",
    "ReportError",
    "Row",
    "SiteData",
    "aggregate",
    "latency_interval",
    "plan",
    "stored_columns",
]


_RESERVED_DIRS = ("runs", "static")


class ReportError(Exception):
    """The site can't be built as asked (unknown suite, an output folder that isn't a site)."""


_MEMBER_SQL = """
CREATE OR REPLACE TEMP TABLE member AS
SELECT DISTINCT s.name AS suite, x.run_key
FROM (SELECT suite_id, run_key FROM suite_runs UNION SELECT suite_id, run_key FROM runs) AS x
JOIN suites AS s USING (suite_id)
JOIN runs AS r USING (run_key)
WHERE len($1::VARCHAR[]) = 0 OR list_contains($1::VARCHAR[], s.name)
"""

# One row per (suite, run); ``basis`` is which seeds a leaderboard row is averaged over:
# its ok seeds, or, when it has none, its invalid ones (shown, but never ranked).
# ``timing_only``: an invalid run whose timings alone are in doubt; beside ok seeds its
# quality figures count too, its costs do not (:data:`QUALITY_RUNS`).
_BOARD_RUN_SQL = f"""
CREATE OR REPLACE TEMP TABLE board_run AS
SELECT *,
       dense_rank() OVER (ORDER BY suite, task, hardware, model, method, version, params)
           AS row_id,
       CASE WHEN bool_or(status = 'ok') OVER cfg THEN 'ok'
            WHEN bool_or(status = 'invalid') OVER cfg THEN 'invalid' END AS basis
FROM (
    SELECT m.suite, coalesce(l.label, r.task) AS task,
           coalesce(r.hardware, 'unknown hardware') AS hardware,
           coalesce(r.model, '') AS model, r.method, coalesce(r.method_version, '') AS version,
           coalesce(CAST(r.params AS VARCHAR), '{{}}') AS params, r.seed, r.status, r.run_key,
           r.finished_at, r.error, r.scenario, r.task AS task_name,
           coalesce(CAST(r.task_params AS VARCHAR), '{{}}') AS task_params,
           r.run_key IN (SELECT run_key FROM metrics WHERE phase = '{TIMING_ONLY_INVALID[0]}'
                         AND metric = '{TIMING_ONLY_INVALID[1]}') AS timing_only
    FROM member AS m JOIN runs AS r USING (run_key)
    LEFT JOIN task_label AS l
        ON l.suite = m.suite AND l.task = r.task
       AND l.task_params = coalesce(CAST(r.task_params AS VARCHAR), '{{}}')
)
WINDOW cfg AS (PARTITION BY suite, task, hardware, model, method, version, params)
"""

_ROWS_SQL = """
SELECT row_id, suite, task, hardware, model, method, version, params, basis,
       list(run_key ORDER BY seed, run_key), list(seed ORDER BY seed, run_key),
       list(status ORDER BY seed, run_key),
       list(left(trim(coalesce(error, '')), 1000) ORDER BY seed, run_key),
       max(finished_at)
FROM board_run
GROUP BY ALL
ORDER BY row_id
"""

# Per run, the figure behind each column: quality metrics (``higher_is_better`` set) keep
# their phase; costs are matched against ``cost_spec``: the core's (``scenario`` null) for
# every run, a scenario's own only for that scenario's runs.
_CELL_SQL = """
CREATE OR REPLACE TEMP TABLE cell AS
WITH run_scenario AS (SELECT DISTINCT run_key, scenario FROM board_run),
cost_metric AS (SELECT DISTINCT scenario, metric FROM cost_spec)
SELECT m.run_key,
       coalesce(c.kind, 'quality') AS kind,
       CASE WHEN c.kind IS NULL OR c.per_phase THEN m.phase ELSE '' END AS phase,
       m.metric, m.stat,
       max(m.value) AS value,
       any_value(m.unit) AS unit,
       any_value(m.reason) FILTER (WHERE m.value IS NULL) AS reason,
       bool_or(m.higher_is_better) AS hib
FROM metrics AS m
JOIN run_scenario AS r USING (run_key)
LEFT JOIN cost_spec AS c
    ON m.metric = c.metric AND m.stat = c.stat
   AND (c.scenario IS NULL OR c.scenario = r.scenario)
WHERE c.kind IS NOT NULL
   OR (m.higher_is_better IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM cost_metric AS x WHERE x.metric = m.metric
                       AND (x.scenario IS NULL OR x.scenario = r.scenario)))
GROUP BY ALL
"""

#: Over ``board_run AS b``: the runs whose quality figures a leaderboard row averages, its
#: basis seeds and, beside ok seeds, the invalid ones whose timings alone are in doubt. Its
#: costs average the basis seeds alone.
QUALITY_RUNS = "(b.status = b.basis OR (b.basis = 'ok' AND b.timing_only))"

_AGG_SQL = f"""
SELECT b.row_id, c.kind, c.phase, c.metric, c.stat, any_value(c.unit), bool_or(c.hib),
       list(c.value ORDER BY c.value) FILTER (WHERE c.value IS NOT NULL), any_value(c.reason)
FROM cell AS c JOIN board_run AS b USING (run_key)
WHERE CASE WHEN c.kind = 'quality' THEN {QUALITY_RUNS} ELSE b.status = b.basis END
GROUP BY ALL
ORDER BY b.row_id
"""

_SUITES_SQL = """
SELECT name, arg_max(description, last_run), arg_max(text, last_run), max(last_run)
FROM suites WHERE name IN (SELECT suite FROM member)
GROUP BY name ORDER BY name
"""

_HARDWARE_SQL = """
SELECT coalesce(r.hardware, 'unknown hardware') AS hardware,
       count(*) AS runs,
       list_sort(list(DISTINCT e.gpu) FILTER (WHERE e.gpu IS NOT NULL)),
       list_sort(list(DISTINCT e.cpu) FILTER (WHERE e.cpu IS NOT NULL)),
       list_sort(list(DISTINCT e.torch) FILTER (WHERE e.torch IS NOT NULL)),
       list_sort(list(DISTINCT e.driver) FILTER (WHERE e.driver IS NOT NULL)),
       count(DISTINCT r.env_id)
FROM runs AS r LEFT JOIN environments AS e USING (env_id)
WHERE r.run_key IN (SELECT run_key FROM member)
GROUP BY 1 ORDER BY 1
"""


@dataclass
class Agg:
    """One cell before formatting: a mean over the row's basis seeds."""

    mean: float | None
    sd: float | None
    n: int
    unit: str
    reason: str | None


#: Where rows of each role are pinned, above the ranked rows (role None).
ROLE_RANK = {**{role: i for i, role in enumerate(ROLES)}, None: len(ROLES)}
#: The roles a ranked row is compared with, in order of preference.
COMPARED_WITH = ("reference", "upper-bound")


@dataclass
class Row:
    """One leaderboard row: a (model, method, version, params) configuration."""

    model: str
    method: str
    version: str
    params: str
    basis: str | None
    run_keys: list[str]
    seeds: list[int]
    statuses: list[str]
    errors: list[str]
    #: The row's role (:data:`harness.api.ROLES`) in its suite, or None for a contender.
    role: str | None = None
    cells: dict[tuple[str, str, str, str], Agg] = field(default_factory=dict)
    hib: dict[tuple[str, str, str, str], bool | None] = field(default_factory=dict)


@dataclass
class Board:
    """The rows of one suite × task × hardware group, where its page goes, and what its
    runs' scenarios declare about their columns."""

    suite: str
    task: str
    hardware: str
    columns: ResultColumns = field(default_factory=ResultColumns)
    rows: list[Row] = field(default_factory=list)
    last_update: datetime | None = None
    path: str = ""


@dataclass
class SiteData:
    boards: list[Board]
    suites: list[dict[str, Any]]
    hardware: list[dict[str, Any]]
    #: Each scenario's declaration, for the scenarios of the site's runs that have one.
    declared: dict[str, ResultColumns] = field(default_factory=dict)
    #: Each suite's leaderboard layout (roles and views) by suite name.
    layouts: dict[str, Layout] = field(default_factory=dict)
    #: Roles the installed methods declare, for suites with no stored layout.
    method_roles: dict[str, str] = field(default_factory=dict)


@dataclass
class Column:
    """A leaderboard column: its cell key ``(kind, phase, metric, stat)``, its CSV/JSON
    key, label, unit, direction, and whether it is a quality metric."""

    id: tuple[str, str, str, str]
    key: str
    label: str
    unit: str
    higher_is_better: bool
    quality: bool


#: Not columns: the latency IQR and the bounds of the median's 95 % confidence interval,
#: shown with the latency median of the same phase (the bounds also decide ties).
LATENCY_IQR = CostColumn("latency_iqr", "latency IQR", "latency", "ms", "iqr", per_phase=True)
LATENCY_CI = (
    CostColumn("latency_ci_lo", "latency CI low", "latency", "ms", "median_ci_lo",
               per_phase=True),
    CostColumn("latency_ci_hi", "latency CI high", "latency", "ms", "median_ci_hi",
               per_phase=True),
)


def latency_interval(row: Row, phase: str) -> tuple[float, float] | None:
    """The row's 95 % interval of the median latency of ``phase``: each bound averaged over
    the row's basis seeds; None where the runs recorded none (older stores)."""
    low = row.cells.get(("latency_ci_lo", phase, "", ""))
    high = row.cells.get(("latency_ci_hi", phase, "", ""))
    if low is None or high is None or low.mean is None or high.mean is None:
        return None
    if not (math.isfinite(low.mean) and math.isfinite(high.mean)):
        return None
    return low.mean, high.mean


def stored_columns(con: duckdb.DuckDBPyConnection) -> dict[str, ResultColumns]:
    """The declarations the store keeps (none in a store written before it kept them)."""
    (present,) = con.execute("SELECT count(*) FROM duckdb_tables() "
                             "WHERE table_name = 'scenario_columns'").fetchone()
    if not present:
        return {}
    return {scenario: ResultColumns.from_json(text) for scenario, text
            in con.execute("SELECT scenario, CAST(columns AS VARCHAR) "
                           "FROM scenario_columns").fetchall()}


def stored_layouts(con: duckdb.DuckDBPyConnection) -> dict[str, Layout]:
    """Each member suite's layout: its versions' roles (the latest first) and the latest
    version's views; none for a store written before stores kept layouts."""
    (present,) = con.execute("SELECT count(*) FROM duckdb_columns() "
                             "WHERE table_name = 'suites' AND column_name = 'layout'").fetchone()
    if not present:
        return {}
    layouts: dict[str, Layout] = {}
    for name, text in con.execute(
        "SELECT name, CAST(layout AS VARCHAR) FROM suites WHERE layout IS NOT NULL "
        "AND name IN (SELECT suite FROM member) ORDER BY last_run, suite_id"
    ).fetchall():
        layouts[name] = Layout.from_json(text).over(layouts.get(name, Layout()))
    return layouts


def plan(con: duckdb.DuckDBPyConnection, suites: Sequence[str],
         declared: Mapping[str, ResultColumns], roles: Mapping[str, str] | None = None
         ) -> tuple[SiteData, dict[str, list[tuple[str, str]]]]:
    """Which boards, suites and hardware groups the site has, where every page goes, and
    each run's leaderboards: all run pages need, so they can start before aggregation.

    ``declared`` maps a scenario to its columns; a board gets those of its runs' scenarios.
    ``roles`` maps a method to the role it declares, for the suites whose layout the
    store does not keep (written before stores kept layouts).
    """
    known = [n for (n,) in con.execute("SELECT DISTINCT name FROM suites ORDER BY 1").fetchall()]
    unknown = sorted(set(suites) - set(known))
    if unknown:
        raise ReportError(
            f"no suite named {', '.join(map(repr, unknown))} in the store "
            f"(it holds: {', '.join(known) or 'no suites'})"
        )
    con.execute(_MEMBER_SQL, [list(suites)])
    _label_task_settings(con)
    con.execute(_BOARD_RUN_SQL)
    scenarios: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for suite, task, hardware, scenario in con.execute(
        "SELECT DISTINCT suite, task, hardware, scenario FROM board_run ORDER BY ALL"
    ).fetchall():
        scenarios[(suite, task, hardware)].append(scenario)
    used = {s for names in scenarios.values() for s in names if s in declared}
    boards = {
        key: Board(*key, columns=merged([declared[s] for s in names if s in declared]))
        for key, names in scenarios.items()
    }
    suite_info = [
        {"name": name, "description": description or "", "text": text or "",
         "last_run": when(last_run)}
        for name, description, text, last_run in con.execute(_SUITES_SQL).fetchall()
    ]
    hardware = [
        {"name": name, "runs": runs, "gpus": gpus or [], "cpus": cpus or [],
         "torch": torch or [], "drivers": drivers or [], "environments": envs}
        for name, runs, gpus, cpus, torch, drivers, envs in con.execute(_HARDWARE_SQL).fetchall()
    ]
    data = SiteData(list(boards.values()), suite_info, hardware,
                    {s: declared[s] for s in sorted(used)}, stored_layouts(con),
                    dict(roles or {}))
    _plan_paths(data)
    links: dict[str, list[tuple[str, str]]] = defaultdict(list)
    targets = {key: (" · ".join(key), f"../{board.path}") for key, board in boards.items()}
    for run_key, *board in con.execute("SELECT run_key, suite, task, hardware FROM board_run "
                                       "ORDER BY ALL").fetchall():
        links[run_key].append(targets[tuple(board)])
    return data, links


def _label_task_settings(con: duckdb.DuckDBPyConnection) -> None:
    """Fill ``task_label``: where a suite runs one task with several params (e.g. three
    context lengths), each setting is its own leaderboard, named by the params that differ
    — ``needle (context_len=1024)`` — never averaged together as if they were seeds."""
    settings: dict[tuple[str, str], list[str]] = defaultdict(list)
    for suite, task, text in con.execute(
        "SELECT DISTINCT m.suite, r.task, coalesce(CAST(r.task_params AS VARCHAR), '{}') "
        "FROM member AS m JOIN runs AS r USING (run_key) ORDER BY ALL"
    ).fetchall():
        settings[(suite, task)].append(text)
    labels = []
    for (suite, task), texts in settings.items():
        if len(texts) < 2:
            continue
        parsed = [json.loads(text) for text in texts]
        differing = sorted(
            {k for p in parsed for k in p
             if len({json.dumps(q.get(k), sort_keys=True) for q in parsed}) > 1}
        )  # fmt: skip
        for text, params in zip(texts, parsed, strict=True):
            shown = ", ".join(f"{k}={json.dumps(params.get(k))}" for k in differing)
            labels.append((suite, task, text, f"{task} ({shown})"))
    con.execute("CREATE OR REPLACE TEMP TABLE task_label "
                "(suite VARCHAR, task VARCHAR, task_params VARCHAR, label VARCHAR)")
    if labels:
        con.executemany("INSERT INTO task_label VALUES (?, ?, ?, ?)", labels)


def aggregate(con: duckdb.DuckDBPyConnection, data: SiteData) -> None:
    """Fill every board's rows: per configuration, mean, SD and n of each column's figure
    over the row's basis seeds.

    DuckDB gathers each cell's values; their mean and SD are computed here, exactly rounded
    (:func:`~harness.report.numbers.mean_sd`), so a page's figures do not change with the
    order DuckDB's threads would have summed them in.
    """
    con.execute("CREATE OR REPLACE TEMP TABLE cost_spec "
                "(scenario VARCHAR, kind VARCHAR, metric VARCHAR, stat VARCHAR, "
                "per_phase BOOLEAN)")
    spec = [(None, c) for c in (*CORE_COSTS, LATENCY_IQR, *LATENCY_CI)]
    spec += [(scenario, c) for scenario, columns in data.declared.items() for c in columns.costs]
    con.executemany("INSERT INTO cost_spec VALUES (?, ?, ?, ?, ?)",
                    [(scenario, c.key, c.metric, c.stat, c.per_phase) for scenario, c in spec])
    con.execute(_CELL_SQL)
    boards = {(b.suite, b.task, b.hardware): b for b in data.boards}
    rows: dict[int, Row] = {}
    for (row_id, suite, task, hardware, model, method, version, params, basis, keys, seeds,
         statuses, errors, finished) in con.execute(_ROWS_SQL).fetchall():
        board = boards[(suite, task, hardware)]
        layout = data.layouts.get(suite)
        if layout is None:
            role = data.method_roles.get(method)
        else:
            role = next((layout.roles[k] for k in keys if k in layout.roles), None)
        row = Row(model, method, version, params, basis, keys, seeds, statuses, errors, role)
        board.rows.append(row)
        if finished and (board.last_update is None or finished > board.last_update):
            board.last_update = finished
        rows[row_id] = row
    for (row_id, kind, phase, metric, stat, unit, hib, values,
         reason) in con.execute(_AGG_SQL).fetchall():
        column = (kind, phase, metric, stat) if kind == "quality" else (kind, phase, "", "")
        rows[row_id].cells[column] = _agg(values or [], unit or "", reason)
        rows[row_id].hib[column] = hib


def _agg(values: list[float], unit: str, reason: str | None) -> Agg:
    """One cell: its values' mean and SD (:func:`~harness.report.numbers.mean_sd`)."""
    return Agg(*mean_sd(values), len(values), unit, reason)


def _plan_paths(data: SiteData) -> None:
    """Give every suite a folder and every board a page (unique, lowercase ascii names)."""
    suite_dirs = UniqueNames(_RESERVED_DIRS)
    folders = {s["name"]: suite_dirs.get(s["name"], slugify(s["name"])) for s in data.suites}
    pages: dict[str, UniqueNames] = defaultdict(UniqueNames)
    for board in data.boards:
        stem = pages[board.suite].get(
            f"{board.task}\0{board.hardware}",
            f"{slugify(board.task)}-{slugify(board.hardware)}",
        )
        board.path = f"{folders[board.suite]}/{stem}.html"
