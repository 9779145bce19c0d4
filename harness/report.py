"""The leaderboard site: a results store rendered to plain, self-contained HTML.

``harness report`` reads the DuckDB store read-only, aggregates in SQL (millions of metric
rows never become Python objects one at a time for the tables), and renders the jinja2
templates of ``harness_reports`` into static pages: an index, one leaderboard per suite ×
task setting × hardware group, and one page per run. A page needs nothing but itself, one small
stylesheet and one small script next to it (plots are inline SVG, downloads are files beside
the page), and every link is relative, so the site opens from ``file://`` and from a GitHub
Pages project path without a single network request.

Results are ranked only within one hardware group (``runs.hardware``): a CPU figure and a GPU
figure come from different machines, so a fast CPU run must never outrank a GPU run.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import hashlib
import http.server
import json
import math
import multiprocessing
import os
import re
import shutil
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from itertools import groupby
from pathlib import Path
from typing import Any

import duckdb
import jinja2
from markupsafe import Markup

from harness import __version__
from harness.api import STATUSES
from harness.store import connect_readonly

__all__ = [
    "MARKER",
    "ReportError",
    "SiteSummary",
    "build_site",
    "ci95",
    "fmt",
    "make_server",
    "run_page",
    "serve",
    "slugify",
    "t975",
]

#: Written into every site folder; a folder without it is never emptied by a rebuild.
MARKER = ".harness-site"
_RESERVED_DIRS = ("runs", "static")
#: Run pages are rendered in chunks of this many runs (one DuckDB read per chunk).
_CHUNK = 5000
#: Below this many runs, starting worker processes costs more than it saves.
_POOL_MIN_RUNS = 5000


class ReportError(Exception):
    """The site can't be built as asked (unknown suite, an output folder that isn't a site)."""


@dataclass(frozen=True)
class SiteSummary:
    """What a build wrote, for the command line and the benchmark."""

    out: Path
    runs: int
    leaderboards: int
    run_pages: int
    pages: int
    index_bytes: int
    seconds: float


# -- cost columns ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cost:
    """A cost column: which stored figure it shows and which way is better.

    ``per_phase`` costs (timed loops) get one column per phase that has them; the others
    are the maximum over phases (a peak is the peak of the whole run).
    """

    kind: str
    label: str
    metric: str
    stat: str
    per_phase: bool
    higher_is_better: bool = False


COSTS = (
    _Cost("latency", "latency", "latency", "median", True),
    _Cost("throughput", "throughput", "throughput", "median", True, True),
    _Cost("vram", "peak VRAM", "cuda_allocated_peak", "max", False),
    _Cost("host_ram", "peak host RAM", "host_rss_peak", "max", False),
    _Cost("energy", "energy per item", "energy_per_item", "value", True),
    _Cost("trainable", "trainable params", "params_trainable", "value", False),
    _Cost("storage", "storage", "storage_bytes", "value", False),
    _Cost("kv_resident", "KV resident", "resident_bytes", "value", False),
    _Cost("buffer", "memory buffer", "buffer_bytes", "value", False),
)
_COST_BY_KIND = {c.kind: c for c in COSTS}
#: Not a column: shown under the latency median of the same phase.
_IQR = _Cost("latency_iqr", "latency IQR", "latency", "iqr", True)


# -- numbers --------------------------------------------------------------------------------

# Two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """Student's t quantile for a two-sided 95 % interval (table, then Cornish-Fisher)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def ci95(sd: float | None, n: int) -> float | None:
    """Half-width of the 95 % CI of a mean of ``n`` seeds; ``None`` when ``n < 2``."""
    if n < 2 or sd is None:
        return None
    return t975(n - 1) * sd / math.sqrt(n)


_BINARY = ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB"))
_COUNT = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"))
_SI = ((1e9, "G"), (1e6, "M"), (1e3, "k"))
_TIME = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_TIME_STEPS = (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9))


@functools.lru_cache(maxsize=512)
def _ladder(unit: str) -> tuple[tuple[float, float, str], ...]:
    """(from size, divisor, unit text) rungs for ``unit``, largest first: bytes in
    KiB/MiB/GiB, counts in K/M/B, times in s…ns, anything else SI prefixes past 10 000."""
    if unit == "bytes":
        return (*((d, d, name) for d, name in _BINARY), (0.0, 1.0, "B"))
    if unit == "count":
        return (*((d, d, name) for d, name in _COUNT), (0.0, 1.0, ""))
    if unit in _TIME:
        base = _TIME[unit]
        return (*((f / base, f / base, name) for name, f in _TIME_STEPS), (0.0, 1.0, unit))
    return (*((10 * d, d, f"{p} {unit}".strip()) for d, p in _SI), (0.0, 1.0, unit))


def _scale(size: float, unit: str) -> tuple[float, str]:
    """The divisor and unit text that keep a number of this size short and readable."""
    size = abs(size)
    for start, divisor, text in _ladder(unit):
        if size >= start:
            return divisor, text
    return 1.0, unit


def fmt(value: float | None, unit: str = "", digits: int = 4) -> str:
    """``value`` with ``digits`` significant figures and a readable unit (``—`` if None).

    Bytes use KiB/MiB/GiB, counts K/M/B, times ns…s, anything else SI prefixes past 10 000.
    """
    if value is None:
        return "—"
    if not math.isfinite(value):
        return f"{value} {unit}".strip()
    divisor, text = _scale(value, unit)
    return f"{value / divisor:.{digits}g} {text}".strip()


def _fmt_mean(mean: float, ci: float | None, unit: str) -> tuple[str, str, str]:
    """(mean, "± ci", unit) with the CI in the mean's scale, so the two read together;
    the CI keeps two significant figures, written out (``± 130``, not ``± 1.3e+02``)."""
    if not math.isfinite(mean):
        return fmt(mean, unit), "", ""
    divisor, text = _scale(mean, unit)
    ci_text = ""
    if ci and math.isfinite(ci):
        half = ci / divisor
        places = 1 - math.floor(math.log10(half))
        ci_text = f"± {half:.2g}" if places > 6 else f"± {half:.{max(0, places)}f}"
    return f"{mean / divisor:.4g}", ci_text, text


# -- names ----------------------------------------------------------------------------------


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:n]


def slugify(text: str) -> str:
    """Lowercase ascii ``[a-z0-9-]`` for file names; never empty (falls back to a hash)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:60].strip("-")
    return slug or f"x-{_short_hash(text)}"


class _Names:
    """Hands out file names that stay unique: a clash gets a short hash of its key."""

    def __init__(self, reserved: Sequence[str] = ()) -> None:
        self._taken = set(reserved)
        self._given: dict[str, str] = {}

    def get(self, key: str, slug: str) -> str:
        if key not in self._given:
            if slug in self._taken:
                slug = f"{slug}-{_short_hash(key)}"
            self._taken.add(slug)
            self._given[key] = slug
        return self._given[key]


_SAFE_RUN_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,79}")


def run_page(run_key: str) -> str:
    """File name of a run's page: the key itself when it is file-safe (it is a hex hash)."""
    if _SAFE_RUN_KEY.fullmatch(run_key):
        return f"{run_key}.html"
    return f"run-{_short_hash(run_key, 16)}.html"


@functools.lru_cache(maxsize=8192)
def _params_items(params_json: str | None) -> tuple[str, ...]:
    """``{"bits": 4, "group_size": 64}`` as ``("bits=4", "group_size=64")`` (JSON values).

    Cached: a large store repeats a few hundred params objects across many runs.
    """
    try:
        params = json.loads(params_json or "{}")
    except ValueError:
        return (params_json or "",)
    if not isinstance(params, dict):
        return (json.dumps(params),)
    return tuple(f"{k}={v if isinstance(v, str) else json.dumps(v)}"
                 for k, v in sorted(params.items()))


def _params_text(params_json: str | None) -> str:
    return ", ".join(_params_items(params_json))


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _first_line(text: str | None, limit: int = 160) -> str:
    line = (text or "").strip().split("\n", 1)[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


# -- reading the store ----------------------------------------------------------------------

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
_BOARD_RUN_SQL = """
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
           coalesce(CAST(r.params AS VARCHAR), '{}') AS params, r.seed, r.status, r.run_key,
           r.finished_at, r.error
    FROM member AS m JOIN runs AS r USING (run_key)
    LEFT JOIN task_label AS l
        ON l.suite = m.suite AND l.task = r.task
       AND l.task_params = coalesce(CAST(r.task_params AS VARCHAR), '{}')
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
# their phase; costs are matched against ``cost_spec``.
_CELL_SQL = """
CREATE OR REPLACE TEMP TABLE cell AS
SELECT m.run_key,
       coalesce(c.kind, 'quality') AS kind,
       CASE WHEN c.kind IS NULL OR c.per_phase THEN m.phase ELSE '' END AS phase,
       m.metric, m.stat,
       max(m.value) AS value,
       any_value(m.unit) AS unit,
       any_value(m.reason) FILTER (WHERE m.value IS NULL) AS reason,
       bool_or(m.higher_is_better) AS hib
FROM metrics AS m
LEFT JOIN cost_spec AS c ON m.metric = c.metric AND m.stat = c.stat
WHERE m.run_key IN (SELECT run_key FROM board_run)
  AND (c.kind IS NOT NULL
       OR (m.higher_is_better IS NOT NULL
           AND m.metric NOT IN (SELECT metric FROM cost_spec)))
GROUP BY ALL
"""

_AGG_SQL = """
SELECT b.row_id, c.kind, c.phase, c.metric, c.stat, any_value(c.unit), bool_or(c.hib),
       avg(c.value), stddev_samp(c.value), count(c.value), any_value(c.reason)
FROM cell AS c JOIN board_run AS b USING (run_key)
WHERE b.status = b.basis
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
class _Agg:
    """One cell before formatting: a mean over the row's basis seeds."""

    mean: float | None
    sd: float | None
    n: int
    unit: str
    reason: str | None


@dataclass
class _Row:
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
    cells: dict[tuple[str, str, str, str], _Agg] = field(default_factory=dict)
    hib: dict[tuple[str, str, str, str], bool | None] = field(default_factory=dict)


@dataclass
class _Board:
    """The rows of one suite × task × hardware group, and where its page goes."""

    suite: str
    task: str
    hardware: str
    rows: list[_Row] = field(default_factory=list)
    last_update: datetime | None = None
    path: str = ""


@dataclass
class _Data:
    boards: list[_Board]
    suites: list[dict[str, Any]]
    hardware: list[dict[str, Any]]


def _plan(con: duckdb.DuckDBPyConnection, suites: Sequence[str]
          ) -> tuple[_Data, dict[str, list[tuple[str, str]]]]:
    """Which boards, suites and hardware groups the site has, where every page goes, and
    each run's leaderboards: all run pages need, so they can start before aggregation."""
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
    boards = {
        key: _Board(*key)
        for key in con.execute("SELECT DISTINCT suite, task, hardware FROM board_run "
                               "ORDER BY ALL").fetchall()
    }
    suite_info = [
        {"name": name, "description": description or "", "text": text or "",
         "last_run": _when(last_run)}
        for name, description, text, last_run in con.execute(_SUITES_SQL).fetchall()
    ]
    hardware = [
        {"name": name, "runs": runs, "gpus": gpus or [], "cpus": cpus or [],
         "torch": torch or [], "drivers": drivers or [], "environments": envs}
        for name, runs, gpus, cpus, torch, drivers, envs in con.execute(_HARDWARE_SQL).fetchall()
    ]
    data = _Data(list(boards.values()), suite_info, hardware)
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


def _aggregate(con: duckdb.DuckDBPyConnection, data: _Data) -> None:
    """Fill every board's rows: per configuration, mean, SD and n of each column's figure
    over the row's basis seeds, computed by DuckDB."""
    con.execute("CREATE OR REPLACE TEMP TABLE cost_spec "
                "(kind VARCHAR, metric VARCHAR, stat VARCHAR, per_phase BOOLEAN)")
    con.executemany("INSERT INTO cost_spec VALUES (?, ?, ?, ?)",
                    [(c.kind, c.metric, c.stat, c.per_phase) for c in (*COSTS, _IQR)])
    con.execute(_CELL_SQL)
    boards = {(b.suite, b.task, b.hardware): b for b in data.boards}
    rows: dict[int, _Row] = {}
    for (row_id, suite, task, hardware, model, method, version, params, basis, keys, seeds,
         statuses, errors, finished) in con.execute(_ROWS_SQL).fetchall():
        board = boards[(suite, task, hardware)]
        row = _Row(model, method, version, params, basis, keys, seeds, statuses, errors)
        board.rows.append(row)
        if finished and (board.last_update is None or finished > board.last_update):
            board.last_update = finished
        rows[row_id] = row
    for (row_id, kind, phase, metric, stat, unit, hib, mean, sd, n,
         reason) in con.execute(_AGG_SQL).fetchall():
        column = (kind, phase, metric, stat) if kind == "quality" else (kind, phase, "", "")
        rows[row_id].cells[column] = _Agg(mean, sd, n, unit or "", reason)
        rows[row_id].hib[column] = hib


# -- leaderboards ---------------------------------------------------------------------------


@dataclass
class _Column:
    id: tuple[str, str, str, str]
    key: str
    label: str
    unit: str
    higher_is_better: bool
    quality: bool


def _columns(board: _Board) -> tuple[list[_Column], list[tuple[str, str]]]:
    """The board's metric columns in display order, and the ones no row has a value for.

    Columns with no value anywhere (VRAM on a CPU) are listed with their reason below
    the table instead of filling it with dashes.
    """
    seen: dict[tuple[str, str, str, str], _Agg] = {}
    hib: dict[tuple[str, str, str, str], bool | None] = {}
    for row in board.rows:
        for column, agg in row.cells.items():
            if column not in seen or (seen[column].mean is None and agg.mean is not None):
                seen[column] = agg
            hib[column] = hib.get(column) or row.hib[column]
    quality = sorted((c for c in seen if c[0] == "quality"),
                     key=lambda c: (c[1] != "eval", c[2], c[1], c[3]))
    phases = Counter((c[0], c[2]) for c in seen)
    costs = sorted((c for c in seen if c[0] in _COST_BY_KIND),
                   key=lambda c: ([x.kind for x in COSTS].index(c[0]), c[1]))
    columns, missing, keys = [], [], set()
    for column in (*quality, *costs):
        kind, phase, metric, stat = column
        many_phases = phases[(kind, metric)] > 1
        if kind == "quality":
            label = metric.replace("_", " ")
            key = metric
            direction = bool(hib[column])
        else:
            label, key = _COST_BY_KIND[kind].label, kind
            direction = _COST_BY_KIND[kind].higher_is_better
        if many_phases:
            label, key = f"{label} · {phase}", f"{key}_{phase}"
        if stat not in ("", "value"):
            label, key = f"{label} ({stat})", f"{key}_{stat}"
        if all(row.cells.get(column) is None or row.cells[column].mean is None
               for row in board.rows):
            missing.append((label, seen[column].reason or "no value recorded"))
            continue
        key = re.sub(r"[^a-z0-9]+", "_", key.lower())
        while key in keys:  # a quality metric may share a cost column's name
            key += "_"
        keys.add(key)
        columns.append(_Column(column, key, label, seen[column].unit, direction,
                               kind == "quality"))
    return columns, missing


def _better(column: _Column, value: float) -> float:
    """A sort key where smaller is better, whichever way the column points."""
    return -value if column.higher_is_better else value


def _order(board: _Board, columns: list[_Column]) -> None:
    """Pre-sort rows: ok rows first, then by the first column, best first (nulls last)."""
    primary = columns[0] if columns else None
    basis_rank = {"ok": 0, "invalid": 1, None: 2}

    def key(row: _Row) -> tuple:
        agg = row.cells.get(primary.id) if primary else None
        value = agg.mean if agg and agg.mean is not None and math.isfinite(agg.mean) else None
        return (basis_rank[row.basis], value is None,
                _better(primary, value) if value is not None else 0.0,
                row.model, row.method, row.params)

    board.rows.sort(key=key)


def _best(board: _Board, columns: list[_Column]) -> dict[tuple[str, str, str, str], float]:
    """The best mean per column among rows whose seeds are ok (invalid rows never win)."""
    best: dict[tuple[str, str, str, str], float] = {}
    for column in columns:
        values = [row.cells[column.id].mean for row in board.rows
                  if row.basis == "ok" and column.id in row.cells
                  and row.cells[column.id].mean is not None
                  and math.isfinite(row.cells[column.id].mean)]
        if values:
            best[column.id] = min(values, key=functools.partial(_better, column))
    return best


#: A rendered cell: (class, sort key, text, "± ci", unit, note, title). Cells and run links
#: are tuples that the template unpacks, and rows are slotted dataclasses, not dicts:
#: jinja2 tries attributes before items, and a 100k-run site renders ~150k cells.
_Cell = tuple[str, str, str, str, str, str, str]
#: A run's link in its row: (seed, status, page, title).
_RunLink = tuple[int, str, str, str]


@dataclass(slots=True)
class _RowView:
    method: str
    version: str
    model: str
    params: str
    params_items: tuple[str, ...]
    basis: str
    seeds: int
    ok: int
    counts: list[tuple[str, int]]
    reasons: list[tuple[str, int, str]]
    runs: list[_RunLink]
    run_keys: str
    cells: list[_Cell]


@dataclass(slots=True)
class _Header:
    label: str
    type: str
    first: str
    title: str = ""


def _cell(row: _Row, column: _Column, best: float | None, seeds: int) -> _Cell:
    agg = row.cells.get(column.id)
    if agg is None or agg.mean is None:
        reason = agg.reason if agg else "not recorded for this configuration"
        return ("num missing", "", "—", "", "", "", reason or "")
    text, ci_text, unit = _fmt_mean(agg.mean, ci95(agg.sd, agg.n), column.unit)
    notes = []
    if agg.n != seeds:
        notes.append(f"n={agg.n}")
    if column.id[0] == "latency":
        iqr = row.cells.get(("latency_iqr", column.id[1], "", ""))
        if iqr and iqr.mean is not None:
            notes.append(f"IQR {fmt(iqr.mean, iqr.unit, 3)}")
    cls = "num best" if best is not None and agg.mean == best else "num"
    return (cls, repr(agg.mean), text, ci_text, unit, " · ".join(notes), "")


def _row_view(row: _Row, columns: list[_Column], best: dict, show_version: bool) -> _RowView:
    counts = Counter(row.statuses)
    seeds = counts.get(row.basis, 0) if row.basis else 0
    errors = [_first_line(error) for error in row.errors]
    reasons = Counter((status, error) for status, error in zip(row.statuses, errors, strict=True)
                      if status != "ok")
    return _RowView(
        method=row.method,
        version=row.version if show_version else "",
        model=row.model,
        params=_params_text(row.params),
        params_items=_params_items(row.params),
        basis=row.basis or "none",
        seeds=seeds,
        ok=counts.get("ok", 0),
        counts=[(s, counts[s]) for s in STATUSES if counts.get(s)],
        reasons=[(status, n, text) for (status, text), n in reasons.most_common()],
        runs=[(seed, status, run_page(key),
               "" if status == "ok" else f"{status}: {error}" if error else status)
              for key, seed, status, error
              in zip(row.run_keys, row.seeds, row.statuses, errors, strict=True)],
        run_keys=" ".join(row.run_keys),
        # Only rows averaged over ok seeds compete for best (invalid ones never win).
        cells=[_cell(row, c, best.get(c.id) if row.basis == "ok" else None, seeds)
               for c in columns],
    )


def _row_label(row: _Row, show_model: bool) -> str:
    params = _params_text(row.params)
    label = f"{row.method} ({params})" if params else row.method
    return f"{label} · {row.model}" if show_model else label


def _board_context(board: _Board, boards: list[_Board], suite_models: dict[str, set[str]],
                   suite: dict[str, Any]) -> tuple[dict[str, Any], list[_Column]]:
    columns, missing = _columns(board)
    _order(board, columns)
    best = _best(board, columns)
    versions: dict[str, set[str]] = defaultdict(set)
    for row in board.rows:
        versions[row.method].add(row.version)
    show_model = len(suite_models[board.suite]) > 1
    rows = [_row_view(row, columns, best, len(versions[row.method]) > 1) for row in board.rows]
    statuses = Counter(s for row in board.rows for s in row.statuses)
    identity = [("method", "str", "asc"), *([("model", "str", "asc")] if show_model else []),
                ("params", "str", "asc"), ("runs", "num", "desc")]
    headers = [_Header(*spec) for spec in identity]
    headers += [_Header(c.label, "num", "desc" if c.higher_is_better else "asc",
                        f"{'higher' if c.higher_is_better else 'lower'} is better")
                for c in columns]
    primary = columns[0] if columns else None
    stem = board.path.rsplit("/", 1)[-1].removesuffix(".html")
    return {
        "root": "../",
        "board": board,
        "suite": suite,
        "show_model": show_model,
        "headers": headers,
        "rows": rows,
        "missing": missing,
        "primary": primary,
        "counts": [(s, statuses[s]) for s in STATUSES if statuses.get(s)],
        "runs": sum(statuses.values()),
        "last_update": _when(board.last_update),
        "siblings": [b for b in boards if (b.suite, b.task) == (board.suite, board.task)],
        "csv": f"{stem}.csv",
        "json": f"{stem}.json",
        "plots": _pareto_plots(board, columns, show_model),
    }, columns


def _board_records(board: _Board, columns: list[_Column]) -> list[dict[str, Any]]:
    """The leaderboard as plain records (the JSON download; the CSV flattens them).

    Units live once in the column list; a ``reason`` appears only where a mean is null.
    """
    records = []
    for row in board.rows:
        counts = Counter(row.statuses)
        values = {}
        for column in columns:
            agg = row.cells.get(column.id)
            if agg is None or agg.mean is None or not math.isfinite(agg.mean):
                reason = (f"the mean is {agg.mean}" if agg and agg.mean is not None
                          else agg.reason if agg else None)
                values[column.key] = {"mean": None, "ci95": None, "n": agg.n if agg else 0,
                                      "reason": reason or "not recorded"}
            else:
                values[column.key] = {"mean": agg.mean, "ci95": ci95(agg.sd, agg.n),
                                      "n": agg.n}
        records.append({
            "model": row.model, "method": row.method, "method_version": row.version,
            "params": json.loads(row.params), "basis": row.basis,
            "statuses": {s: counts.get(s, 0) for s in STATUSES},
            "values": values,
            "runs": [{"run_key": k, "seed": s, "status": st, **({"error": e} if e else {})}
                     for k, s, st, e in zip(row.run_keys, row.seeds, row.statuses, row.errors,
                                            strict=True)],
        })
    return records


def _write_downloads(board: _Board, columns: list[_Column], folder: Path, stem: str) -> None:
    records = _board_records(board, columns)
    meta = {"suite": board.suite, "task": board.task, "hardware": board.hardware,
            "ci": "95 % CI of the mean over seeds (Student t); null when n < 2",
            "columns": [{"key": c.key, "label": c.label, "unit": c.unit,
                         "higher_is_better": c.higher_is_better, "quality": c.quality}
                        for c in columns]}
    with open(folder / f"{stem}.json", "w", encoding="utf-8") as fh:
        # No indent: json's C encoder only runs without one, and these files get large.
        fh.write(json.dumps({**meta, "rows": records}, separators=(",", ":"),
                            allow_nan=False))
    with open(folder / f"{stem}.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["suite", "task", "hardware", "model", "method", "method_version",
                         "params", "basis", *STATUSES,
                         *(f"{c.key}_{part}" for c in columns
                           for part in ("mean", "ci95", "n", "unit")),
                         "run_keys"])
        for record in records:
            writer.writerow([
                board.suite, board.task, board.hardware, record["model"], record["method"],
                record["method_version"], json.dumps(record["params"], sort_keys=True),
                record["basis"] or "", *record["statuses"].values(),
                *(value for c in columns for value in (
                    _csv_number(record["values"][c.key]["mean"]),
                    _csv_number(record["values"][c.key]["ci95"]),
                    record["values"][c.key]["n"], c.unit)),
                " ".join(r["run_key"] for r in record["runs"]),
            ])


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)


# -- plots ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Frame:
    """Plot geometry in SVG units, shared by the Python that places points and by the
    templates (a jinja global, ``frame``) that draw axes and labels around them."""

    width: int = 640
    height: int = 360
    left: int = 76
    right: int = 620
    top: int = 18
    bottom: int = 308

    @property
    def tick_x(self) -> int:  # right edge of the y tick labels
        return self.left - 6

    @property
    def tick_y(self) -> int:  # baseline of the x tick labels
        return self.bottom + 17

    @property
    def x_mid(self) -> float:
        return (self.left + self.right) / 2

    @property
    def x_title_y(self) -> int:
        return self.height - 8

    @property
    def y_mid(self) -> float:  # rotated -90°: the y axis title's x is minus its height
        return -(self.top + self.bottom) / 2


FRAME = _Frame()


class _Axis:
    """Maps values (already divided into the display unit) onto pixels, linear or log."""

    __slots__ = ("_factor", "_offset", "log")

    def __init__(self, lo: float, hi: float, log: bool, start: float, end: float) -> None:
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        self._factor = (end - start) / (hi - lo)
        self._offset = start - lo * self._factor

    def __call__(self, value: float) -> float:
        if self.log:
            value = math.log10(value)
        return round(self._offset + value * self._factor, 1)

    def many(self, values: list[float]) -> list[str]:
        """Pixel coordinates of many values as path text (a run page plots every sample)."""
        offset, factor = self._offset, self._factor
        if self.log:
            values = [math.log10(v) for v in values]
        return [f"{offset + v * factor:.1f}" for v in values]


def _nice_step(span: float) -> float:
    raw = span / 5
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if raw <= m * power)


def _axis(values: list[float], start: float, end: float, *, allow_log: bool
          ) -> tuple[_Axis, list[float]]:
    """An axis that fits ``values`` with round ticks; log when they span ≥ 30×."""
    lo, hi = min(values), max(values)
    if allow_log and lo > 0 and hi / lo >= 30:
        lo, hi = lo / 1.3, hi * 1.3
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [10.0**d for d in decades if lo <= 10.0**d <= hi]
        if len(ticks) < 3:
            ticks = sorted(m * 10.0**d for d in decades for m in (1, 2, 5)
                           if lo <= m * 10.0**d <= hi)
        return _Axis(lo, hi, True, start, end), ticks
    pad = (hi - lo) * 0.08 or abs(lo) * 0.1 or 1.0
    lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    step = _nice_step(hi - lo)
    first = math.ceil(lo / step) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return _Axis(lo, hi, False, start, end), ticks


def _in(unit: str) -> str:
    return f" in {unit}" if unit else ""


def _frontier(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of points no other point beats on both cost (x, lower) and quality (y),
    in order of increasing cost."""
    sign = -1.0 if higher_is_better else 1.0
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    keep, best = [], math.inf
    for i in order:
        if sign * points[i][1] < best:
            keep.append(i)
            best = sign * points[i][1]
    return keep


@dataclass(slots=True)
class _Point:
    x: float
    y: float
    frontier: bool
    title: str
    label: str
    anchor: str
    dx: int


@dataclass(slots=True)
class _Plot:
    """An inline SVG plot, or (``skip``) the sentence that stands in for it."""

    title: str
    skip: str = ""  # the sentence shown instead of a plot
    grid: str = ""
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_label: str = ""
    y_label: str = ""
    points: list[_Point] = field(default_factory=list)  # Pareto: rows and frontier
    step: str = ""
    dots: str = ""  # samples: one dot per iteration and the median line
    median: float = 0.0
    note: str = ""


def _ticks(axis: _Axis, ticks: list[float]) -> list[tuple[float, str]]:
    """Tick positions with bare-number labels; the unit goes on the axis title."""
    return [(axis(t), f"{t:.4g}") for t in ticks]


def _grid(x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]) -> str:
    """All grid lines as one SVG path (one attribute to write instead of four per line)."""
    return "".join([f"M{FRAME.left},{y}H{FRAME.right}" for y, _ in y_ticks]
                   + [f"M{x},{FRAME.top}V{FRAME.bottom}" for x, _ in x_ticks])


def _pareto(title: str, rows: list[tuple[str, float, float]], x_column: _Column,
            y_column: _Column, x_label: str) -> _Plot:
    """Quality against one cost: every ok row a point, the frontier a step line."""
    x_div, x_unit = _scale(max(abs(r[1]) for r in rows), x_column.unit)
    y_div, y_unit = _scale(max(abs(r[2]) for r in rows), y_column.unit)
    xs = [r[1] / x_div for r in rows]
    ys = [r[2] / y_div for r in rows]
    x_axis, x_ticks = _axis(xs, FRAME.left, FRAME.right, allow_log=True)
    y_axis, y_ticks = _axis(ys, FRAME.bottom, FRAME.top, allow_log=False)
    frontier = _frontier(list(zip(xs, ys, strict=True)), y_column.higher_is_better)
    on_frontier = set(frontier)
    label_all = len(rows) <= 8
    points, placed = [], []
    for i in sorted(range(len(rows)), key=lambda i: (i not in on_frontier, i)):
        label, x, y = rows[i]
        px, py = x_axis(xs[i]), y_axis(ys[i])
        right = px > FRAME.width * 0.62
        text = label if len(label) <= 40 else label[:39] + "…"
        # Labels are ~6.5 px a character; one that would overlap a placed one is left to
        # the point's tooltip.
        box = (px - 8 - 6.5 * len(text), px - 8) if right else (px + 8, px + 8 + 6.5 * len(text))
        show = (label_all or i in on_frontier) and not any(
            abs(py - other_y) < 13 and box[0] < other[1] and other[0] < box[1]
            for other, other_y in placed)
        if show:
            placed.append((box, py))
        points.append(_Point(
            px, py, i in on_frontier,
            f"{label}: {fmt(y, y_column.unit)}, {fmt(x, x_column.unit)}",
            text if show else "", "end" if right else "start", -8 if right else 8,
        ))
    first = frontier[0]
    step = f"M{x_axis(xs[first])},{y_axis(ys[first])}" + "".join(
        f"H{x_axis(xs[i])}V{y_axis(ys[i])}" for i in frontier[1:]) + f"H{FRAME.right}"
    better = "higher" if y_column.higher_is_better else "lower"
    x_ticks, y_ticks = _ticks(x_axis, x_ticks), _ticks(y_axis, y_ticks)
    return _Plot(
        title, grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label=f"{x_label}{_in(x_unit)}{', log scale' if x_axis.log else ''}"
                " — lower is better",
        y_label=f"{y_column.label}{_in(y_unit)} — {better} is better",
        points=points, step=step,
        note="" if len(placed) == len(rows) else "Labels that would overlap are left out; "
                                                   "hover a point for its configuration.",
    )


def _pareto_plots(board: _Board, columns: list[_Column], show_model: bool) -> list[_Plot]:
    """Quality vs peak memory and quality vs latency (or a sentence saying why not), and
    quality vs KV bytes resident and vs storage bytes where the board has them."""
    by_kind = {c.id[0]: c for c in reversed(columns) if not c.quality}
    quality = next((c for c in columns if c.quality), None)
    memory_title, latency_title = "Quality vs peak memory", "Quality vs latency"
    if quality is None:
        reason = "No plot: this table has no quality metric."
        return [_Plot(memory_title, reason), _Plot(latency_title, reason)]
    memory = by_kind.get("vram")
    memory_label = "peak VRAM (torch allocated)"
    if memory is None and "host_ram" in by_kind:
        memory = by_kind["host_ram"]
        memory_label = "peak host RAM (no VRAM measured here)"
    axes = [
        (memory_title, memory, memory_label, "peak memory"),
        (latency_title, by_kind.get("latency"), "median latency", "latency"),
    ]
    if "kv_resident" in by_kind:  # KV-cache methods: the memory they are about
        axes.append(("Quality vs KV resident", by_kind["kv_resident"],
                     "KV bytes resident on the device", "KV bytes"))
    if "storage" in by_kind:  # what a method costs to keep per task or per model
        axes.append(("Quality vs storage", by_kind["storage"], "bytes stored", "storage bytes"))
    if "buffer" in by_kind:  # continual learners: the replay memory they are compared at
        axes.append(("Quality vs memory buffer", by_kind["buffer"], "bytes of the learner's memory",
                     "buffer bytes"))
    plots = []
    for title, cost, label, what in axes:
        if cost is None:
            plots.append(_Plot(title, f"No plot: no run here recorded {what}."))
            continue
        rows = []
        for row in board.rows:
            x, y = row.cells.get(cost.id), row.cells.get(quality.id)
            if (row.basis == "ok" and x and y and x.mean is not None and y.mean is not None
                    and math.isfinite(x.mean) and math.isfinite(y.mean)):
                rows.append((_row_label(row, show_model), x.mean, y.mean))
        if not rows:
            plots.append(_Plot(title, f"No plot: no row with ok runs has both "
                                      f"{quality.label} and {cost.label}."))
            continue
        plot = _pareto(f"{title}: {quality.label} vs {cost.label}", rows, cost, quality, label)
        left_out = sum(1 for row in board.rows if row.basis != "ok")
        if left_out:
            plot.note = f"{left_out} row(s) without an ok run are not plotted. {plot.note}"
        plots.append(plot)
    return plots


@functools.lru_cache(maxsize=64)
def _iterations(n: int) -> tuple[int, tuple[str, ...], list[tuple[float, str]]]:
    """The x side of a samples plot (stride, positions, ticks): it only depends on how many
    samples a run kept, and most runs of a suite keep the same number."""
    stride = max(1, math.ceil(n / 600))
    pad = max(n - 1, 1) * 0.04
    axis = _Axis(1 - pad, n + pad, False, FRAME.left, FRAME.right)
    xs = tuple(axis.many([1 + i * stride for i in range(math.ceil(n / stride))]))
    return stride, xs, _ticks(axis, [1.0, float(n)] if n > 1 else [1.0])


def _samples_plot(phase: str, metric: str, unit: str, values: list[float]) -> _Plot:
    """Raw timing samples in iteration order, with their median; long runs are thinned."""
    title = f"{metric} · {phase}"
    if not all(map(math.isfinite, values)):
        return _Plot(title, f"No plot: the samples of {metric} include non-finite values.")
    n = len(values)
    stride, xs, x_ticks = _iterations(n)
    ordered = sorted(values)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    divisor, text = _scale(median, unit)
    ys = [v / divisor for v in values[::stride]]
    y_axis, y_ticks = _axis(ys, FRAME.bottom, FRAME.top, allow_log=False)
    y_ticks = _ticks(y_axis, y_ticks)
    return _Plot(
        f"{title}: {n} samples, median {fmt(median, unit)}",
        grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label="iteration" + (f" (every {stride}th of {n} shown)" if stride > 1 else ""),
        y_label=f"{metric}{_in(text)}",
        dots="".join(map("M{},{}h0".format, xs, y_axis.many(ys))),
        median=y_axis(median / divisor),
    )


# -- run pages ------------------------------------------------------------------------------

#: A stat that names a cell of a matrix: ``after_2_task_1`` is row "after 2", column "task 1".
_MATRIX_STAT = re.compile(r"^([a-z]+)_(\d+)_([a-z]+)_(\d+)$")


@dataclass(frozen=True)
class _Matrix:
    """A metric whose stats are matrix cells, as a heat-map table; ``heat`` is the cell's
    place between the matrix's smallest and largest value (0..1), ``None`` for no value."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, float | None]]]]


def _matrices(rows: Sequence[tuple]) -> list[_Matrix]:
    """The run's metrics whose stats look like matrix cells (e.g. a continual-learning
    accuracy matrix, ``after_{i}_task_{j}``), read at a glance as a table rather than a list."""
    found: dict[tuple[str, str, str, str, str], dict[tuple[int, int], float]] = {}
    for _, phase, metric, stat, value, unit, _ in rows:
        match = _MATRIX_STAT.match(stat)
        if match and value is not None:
            key = (phase, metric, match[1], match[3], unit)
            found.setdefault(key, {})[int(match[2]), int(match[4])] = value
    matrices = []
    for (phase, metric, row_name, column_name, unit), cells in found.items():
        low, high = min(cells.values()), max(cells.values())
        size = (max(i for i, _ in cells) + 1, max(j for _, j in cells) + 1)
        matrices.append(_Matrix(
            f"{metric} · {phase}" + (f" ({unit})" if unit else ""),
            [f"{column_name} {j}" for j in range(size[1])],
            [(f"{row_name} {i}",
              [(fmt(cells[i, j]), (cells[i, j] - low) / (high - low) if high > low else 1.0)
               if (i, j) in cells else ("", None) for j in range(size[1])])
             for i in range(size[0])],
        ))
    return matrices


@contextlib.contextmanager
def _paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building.

    A build allocates millions of short-lived objects and makes no reference cycles worth
    collecting (a collection after 15k run pages finds none), while every full collection
    walks every live object: with a large store's rows in memory those walks cost more than
    the rendering (2.5× slower leaderboards measured on 100k runs).
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_RUN_SQL = """
SELECT r.run_key, r.scenario, r.model, r.task, CAST(r.task_params AS VARCHAR), r.method,
       r.method_version, r.method_plugin, CAST(r.params AS VARCHAR), r.seed, r.device,
       coalesce(r.hardware, 'unknown hardware'), json_pretty(r.config), r.status, r.error,
       r.traceback, coalesce(strftime(r.started_at, '%Y-%m-%d %H:%M:%S UTC'), '—'),
       coalesce(strftime(r.finished_at, '%Y-%m-%d %H:%M:%S UTC'), '—'), r.wall_s, r.env_id,
       r.harness_version
FROM runs AS r JOIN chunk USING (run_key) ORDER BY r.run_key
"""
_METRIC_SQL = """
SELECT m.run_key, m.phase, m.metric, m.stat, m.value, m.unit, m.reason
FROM metrics AS m JOIN chunk USING (run_key) ORDER BY m.run_key, m.phase, m.metric, m.stat
"""
_SAMPLE_SQL = """
SELECT s.run_key, s.phase, s.metric, s.unit, s."values"
FROM samples AS s JOIN chunk USING (run_key) ORDER BY s.run_key, s.phase, s.metric
"""
_ENV_COLUMNS = ("hostname", "platform", "python", "cpu", "cpu_count", "ram_bytes", "gpu",
                "gpu_count", "gpu_memory_bytes", "driver", "cuda", "torch", "transformers",
                "harness_version", "git_sha")


#: A worker process's read-only connection, opened once by ``_start_worker``.
_worker_con: duckdb.DuckDBPyConnection | None = None


def _start_worker(db: str) -> None:
    """Pool initializer: open the store once and compile the run template early."""
    global _worker_con
    _worker_con = connect_readonly(db)
    # Workers already run one per CPU; DuckDB's own threads would only compete.
    _worker_con.execute("SET threads = 1")
    _templates().get_template("run.html")


@dataclass(frozen=True)
class _RunJob:
    """One chunk of run pages: where to read, where to write, and each run's leaderboards."""

    db: str
    out: str
    title: str
    links: list[tuple[str, list[tuple[str, str]]]]


@functools.cache
def _templates() -> jinja2.Environment:
    """The jinja2 environment, compiled once per process; autoescape is always on."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness_reports", "templates"),
        autoescape=True,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals["frame"] = FRAME
    return env


def _grouped(rows: list[tuple]) -> Iterator[tuple[str, list[tuple]]]:
    for key, group in groupby(rows, key=lambda r: r[0]):
        yield key, list(group)


def _environment_html(con: duckdb.DuckDBPyConnection, env_ids: list[str]
                      ) -> dict[str, Markup]:
    """Each environment's table rendered once per chunk (many runs share one machine)."""
    macros = _templates().get_template("macros.html").module
    result = {}
    columns = ", ".join(_ENV_COLUMNS)
    for env_id, *values in con.execute(
        f"SELECT env_id, {columns} FROM environments "
        "WHERE list_contains(?::VARCHAR[], env_id)",
        [env_ids],
    ).fetchall():
        facts = []
        for name, value in zip(_ENV_COLUMNS, values, strict=True):
            if value is None:
                continue
            unit = "bytes" if name.endswith("_bytes") else ""
            facts.append((name, fmt(value, unit) if unit else str(value)))
        result[env_id] = macros.environment(env_id, facts)
    return result


@_paused_gc()
def _render_runs(job: _RunJob) -> int:
    """Render one chunk of run pages in this process; returns the number written.

    Reads the chunk's runs, metrics and samples with one ordered query each and walks
    them together, so a chunk costs three scans whatever its size.
    """
    template = _templates().get_template("run.html")
    links = dict(job.links)
    out = Path(job.out) / "runs"
    con = _worker_con or connect_readonly(job.db)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE chunk AS "
                    "SELECT unnest(?::VARCHAR[]) AS run_key", [list(links)])
        runs = con.execute(_RUN_SQL).fetchall()
        metrics = dict(_grouped(con.execute(_METRIC_SQL).fetchall()))
        samples = dict(_grouped(con.execute(_SAMPLE_SQL).fetchall()))
        environments = _environment_html(con, sorted({r[19] for r in runs if r[19]}))
    finally:
        if con is not _worker_con:
            con.close()
    for run in runs:
        _render_run(template, run, metrics, samples, environments, links, job.title, out)
    return len(runs)


def _render_run(template: jinja2.Template, run: tuple, metrics: dict, samples: dict,
                environments: dict[str, Markup], links: dict, title: str, out: Path) -> None:
    """Write one run's page from its rows (fetched for the whole chunk beforehand)."""
    (run_key, scenario, model, task, task_params, method, version, plugin, params, seed,
     device, hardware, config, status, error, traceback, started, finished, wall_s, env_id,
     harness_version) = run
    phases = [
        (phase, [(metric if stat == "value" else f"{metric} ({stat})", fmt(value, unit), reason)
                 for _, _, metric, stat, value, unit, reason in rows])
        for phase, rows in groupby(metrics.get(run_key, ()), key=lambda m: m[1])
    ]
    html = template.render(
        root="../", site_title=title, version=__version__, run_key=run_key, method=method,
        params=_params_text(params), status=status, hardware=hardware, device=device,
        task=task, task_params=_params_text(task_params), model=model, scenario=scenario,
        seed=seed, started=started,
        method_line=" · ".join(filter(None, (f"{method} {version or ''}".strip(), plugin))),
        finished=finished, wall=fmt(wall_s, "s"), harness_version=harness_version or "—",
        error=error or "", traceback=traceback or "", phases=phases,
        config=config or "",
        plots=[_samples_plot(phase, metric, unit, values)
               for _, phase, metric, unit, values in samples.get(run_key, ()) if values],
        matrices=_matrices(metrics.get(run_key, ())),
        leaderboards=links[run_key], environment=environments.get(env_id or ""),
    )
    _write_bytes(out / run_page(run_key), html.encode())


def _write_bytes(path: Path, data: bytes) -> None:
    """One open, write and close, without Python's buffered file object (100k pages)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _pool(db: str, runs: int, workers: int | None) -> ProcessPoolExecutor | None:
    """Worker processes for run pages, when there are enough runs to pay for starting them.

    spawn, not fork: the parent has used DuckDB, and a forked copy of a DuckDB client is
    not safe; every worker opens its own read-only connection, once.
    """
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        workers = cpus if runs >= _POOL_MIN_RUNS else 1
    if workers <= 1:
        return None
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(db,))
    for _ in range(workers):
        pool.submit(int)  # the pool starts a process per task while none is idle
    return pool


# -- the site -------------------------------------------------------------------------------


def _reset(out: Path) -> None:
    """Empty ``out`` for a fresh build, but only if an earlier build made it."""
    if out.exists():
        if not out.is_dir():
            raise ReportError(f"{out} exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise ReportError(
                f"{out} is not empty and was not written by harness report; "
                "choose an empty or new folder"
            )
        shutil.rmtree(out)
    (out / "runs").mkdir(parents=True)
    (out / "static").mkdir()
    (out / MARKER).write_text("written by harness report; rebuilt (emptied) on every build\n")
    # GitHub Pages: serve the files as they are, no Jekyll pass.
    (out / ".nojekyll").write_text("")


def _copy_static(out: Path) -> None:
    for name in ("site.css", "site.js"):
        source = resources.files("harness_reports").joinpath("static", name)
        (out / "static" / name).write_bytes(source.read_bytes())


def _plan_paths(data: _Data) -> None:
    """Give every suite a folder and every board a page (unique, lowercase ascii names)."""
    suite_dirs = _Names(_RESERVED_DIRS)
    folders = {s["name"]: suite_dirs.get(s["name"], slugify(s["name"])) for s in data.suites}
    pages: dict[str, _Names] = defaultdict(_Names)
    for board in data.boards:
        stem = pages[board.suite].get(
            f"{board.task}\0{board.hardware}",
            f"{slugify(board.task)}-{slugify(board.hardware)}",
        )
        board.path = f"{folders[board.suite]}/{stem}.html"


def build_site(
    db: str | Path,
    out: str | Path,
    *,
    title: str = "harness leaderboard",
    suites: Sequence[str] = (),
    workers: int | None = None,
) -> SiteSummary:
    """Render the store ``db`` into the static site folder ``out``.

    ``suites`` restricts the site to those suite names. ``out`` is emptied first, but only
    when a previous build wrote it. ``workers`` sets how many processes render run pages
    (default: one per CPU for large stores, none for small ones).
    """
    started = time.perf_counter()
    with _paused_gc():
        summary = _build(str(db), Path(out), title, suites, workers)
    return replace(summary, seconds=time.perf_counter() - started)


def _build(db: str, out: Path, title: str, suites: Sequence[str], workers: int | None
           ) -> SiteSummary:
    con = connect_readonly(db)
    pool = None
    try:
        (runs,) = con.execute("SELECT count(*) FROM runs").fetchone()
        pool = _pool(db, runs, workers)  # workers start up while DuckDB plans
        try:
            data, links = _plan(con, suites)
            _reset(out)
            _copy_static(out)
            keys = sorted(links)
            jobs = [_RunJob(db, str(out), title, [(k, links[k]) for k in keys[i:i + _CHUNK]])
                    for i in range(0, len(keys), _CHUNK)]
            # From here on, workers render run pages while this process aggregates and
            # writes the leaderboards and the index.
            pending = [pool.submit(_render_runs, job) for job in jobs] if pool else []
            _aggregate(con, data)
        finally:
            con.close()
        common = {"site_title": title, "version": __version__}
        summaries = _write_boards(data, out, common)
        _write_index(data, out, summaries, common, len(keys))
        run_pages = sum(f.result() for f in pending) if pool else sum(map(_render_runs, jobs))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return SiteSummary(
        out=out, runs=len(keys), leaderboards=len(data.boards), run_pages=run_pages,
        pages=run_pages + len(data.boards) + 1,
        index_bytes=(out / "index.html").stat().st_size, seconds=0.0,
    )


def _write_boards(data: _Data, out: Path, common: dict[str, Any]) -> list[dict[str, Any]]:
    """Each leaderboard page with its CSV and JSON; returns what the index says of them."""
    suite_by_name = {s["name"]: s for s in data.suites}
    suite_models: dict[str, set[str]] = defaultdict(set)
    for board in data.boards:
        suite_models[board.suite].update(row.model for row in board.rows)
    template = _templates().get_template("leaderboard.html")
    summaries = []
    for board in data.boards:
        context, columns = _board_context(board, data.boards, suite_models,
                                          suite_by_name[board.suite])
        folder = (out / board.path).parent
        folder.mkdir(exist_ok=True)
        (out / board.path).write_text(template.render(**common, **context), encoding="utf-8")
        _write_downloads(board, columns, folder, context["csv"].removesuffix(".csv"))
        summaries.append({
            "suite": board.suite, "task": board.task, "hardware": board.hardware,
            "path": board.path, "configs": len(board.rows), "counts": context["counts"],
            "leader": _leader(context), "last_update": context["last_update"],
        })
    return summaries


def _write_index(data: _Data, out: Path, summaries: list[dict[str, Any]],
                 common: dict[str, Any], runs: int) -> None:
    """The front page summarizes (suites, boards, hardware, counts); it never lists runs,
    so it stays small however large the store grows."""
    statuses = Counter(s for b in data.boards for r in b.rows for s in r.statuses)
    last = max((b.last_update for b in data.boards if b.last_update), default=None)
    index = _templates().get_template("index.html").render(
        **common, root="", suites=data.suites, boards=summaries, hardware=data.hardware,
        counts=[(s, statuses[s]) for s in STATUSES if statuses.get(s)], runs=runs,
        last_update=_when(last),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
    (out / "index.html").write_text(index, encoding="utf-8")


def _leader(context: dict[str, Any]) -> dict[str, str] | None:
    """The top row of a board for the index: its label and first-column value."""
    rows, primary = context["rows"], context["primary"]
    if not rows or primary is None or rows[0].basis != "ok" or not rows[0].cells[0][1]:
        return None
    top, (_, _, text, ci, unit, _, _) = rows[0], rows[0].cells[0]
    label = f"{top.method} ({top.params})" if top.params else top.method
    if context["show_model"]:
        label = f"{label} · {top.model}"
    return {"label": label, "metric": primary.label,
            "value": " ".join(p for p in (text, ci, unit) if p)}


# -- preview --------------------------------------------------------------------------------


def make_server(out: str | Path, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """An HTTP server for ``out`` bound to 127.0.0.1 only: a preview is for this machine."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(out))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve(out: str | Path, port: int = 8000) -> None:
    """Serve the built site on http://127.0.0.1:PORT/ until Ctrl-C."""
    with make_server(out, port) as server:
        print(f"serving {out} at http://127.0.0.1:{server.server_address[1]}/ "
              "(Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
