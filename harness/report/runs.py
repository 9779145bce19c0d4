"""Run pages: one page per run with its config, environment, every metric and its samples.

Pages are rendered in chunks (one DuckDB read per chunk), by worker processes on large stores.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path

import duckdb
import jinja2
from markupsafe import Markup

from harness import __version__
from harness.probes.host_load import busy_host_reason
from harness.report.names import params_text, run_page
from harness.report.numbers import fmt
from harness.report.plots import samples_plot
from harness.report.render import paused_gc, templates, write_bytes
from harness.store import connect_readonly

__all__ = ["RunJob", "render_runs", "start_pool"]

#: Below this many runs, starting worker processes costs more than it saves.
_POOL_MIN_RUNS = 5000

#: A stat that names a cell of a matrix: ``after_2_task_1`` is row "after 2", column "task 1".
_MATRIX_STAT = re.compile(r"^([a-z]+)_(\d+)_([a-z]+)_(\d+)$")


@dataclass(frozen=True)
class _Matrix:
    """A metric whose stats are matrix cells, as a heat-map table; ``heat`` is the cell's
    place between the matrix's smallest and largest value (0..1), ``None`` for no value."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[tuple[str, float | None]]]]


def matrices(rows: Sequence[tuple]) -> list[_Matrix]:
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


def timing_lines(rows: Sequence[tuple]) -> list[tuple[str, str, str]]:
    """Per timed phase: (phase, the median with its 95 % CI and spread, the host then).

    The host text is the busy-host diagnosis when the phase's readings show one, else the
    load and other processes' CPU share as measured (so a quiet host reads as quiet).
    """
    by_phase: dict[str, dict[tuple[str, str], tuple[float | None, str]]] = {}
    for _, phase, metric, stat, value, unit, _ in rows:
        by_phase.setdefault(phase, {})[(metric, stat)] = (value, unit)
    lines = []
    for phase, figures in by_phase.items():
        median = figures.get(("latency", "median"), (None, ""))[0]
        if median is None:
            continue

        def get(metric: str, stat: str = "value", figures: dict = figures) -> float | None:
            return figures.get((metric, stat), (None, ""))[0]

        parts = [f"median {fmt(median, 'ms')}"]
        low, high = get("latency", "median_ci_lo"), get("latency", "median_ci_hi")
        if low is not None and high is not None:
            parts.append(f"95 % CI {fmt(low, 'ms')} – {fmt(high, 'ms')} "
                         f"(±{(high - low) / 2 / median:.1%})")
        n, outliers = get("latency", "n"), get("latency", "outliers")
        if n is not None:
            parts.append(f"n={n:.0f}")
        if outliers:
            parts.append(f"{outliers:.0f} outlier{'s' if outliers != 1 else ''} (Tukey)")
        spread = get("latency", "rel_iqr")
        if spread is not None:
            parts.append(f"IQR/median {spread:.1%}")
        readings = {metric: value for (metric, stat), (value, _) in figures.items()
                    if stat in ("value", "max")}
        host = busy_host_reason(readings)
        if host is None and readings.get("host_load") is not None:
            host = f"host quiet (load {readings['host_load']:.1f}"
            if readings.get("host_cpus"):
                host += f" on {readings['host_cpus']:g} CPUs"
            if readings.get("other_cpu_share") is not None:
                host += f", {readings['other_cpu_share']:.0f} % CPU used by other processes"
            host += ")"
        lines.append((phase, ", ".join(parts), host or ""))
    return lines


def breakdown_tables(rows: Sequence[tuple], breakdowns: Sequence[tuple[str, str, str]]
                     ) -> list[_Matrix]:
    """A declared per-bin breakdown (e.g. exact match per needle-depth bin, stats
    ``depth_00``…) as a one-row heat-map table beside the matrices."""
    tables = []
    for metric, phase, prefix in breakdowns:
        cells = sorted((stat, value, unit) for _, p, m, stat, value, unit, _ in rows
                       if (m, p) == (metric, phase) and stat.startswith(prefix)
                       and value is not None)
        if not cells:
            continue
        values = [value for _, value, _ in cells]
        low, high = min(values), max(values)
        unit = cells[0][2]
        tables.append(_Matrix(
            f"{metric} · {phase} by {prefix.rstrip('_')}" + (f" ({unit})" if unit else ""),
            [stat.removeprefix(prefix) for stat, _, _ in cells],
            [(metric, [(fmt(v), (v - low) / (high - low) if high > low else 1.0)
                       for v in values])],
        ))
    return tables


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
    templates().get_template("run.html")


@dataclass(frozen=True)
class RunJob:
    """One chunk of run pages: where to read, where to write, and each run's leaderboards."""

    db: str
    out: str
    title: str
    links: list[tuple[str, list[tuple[str, str]]]]
    #: Per scenario, its declared per-bin breakdowns: (metric, phase, stat prefix).
    breakdowns: dict[str, list[tuple[str, str, str]]]


def _grouped(rows: list[tuple]) -> Iterator[tuple[str, list[tuple]]]:
    for key, group in groupby(rows, key=lambda r: r[0]):
        yield key, list(group)


def _environment_html(con: duckdb.DuckDBPyConnection, env_ids: list[str]
                      ) -> dict[str, Markup]:
    """Each environment's table rendered once per chunk (many runs share one machine)."""
    macros = templates().get_template("macros.html").module
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


@paused_gc()
def render_runs(job: RunJob) -> int:
    """Render one chunk of run pages in this process; returns the number written.

    Reads the chunk's runs, metrics and samples with one ordered query each and walks
    them together, so a chunk costs three scans whatever its size.
    """
    template = templates().get_template("run.html")
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
        _render_run(template, run, metrics, samples, environments, links, job.title, out,
                    job.breakdowns.get(run[1], ()))
    return len(runs)


def _render_run(template: jinja2.Template, run: tuple, metrics: dict, samples: dict,
                environments: dict[str, Markup], links: dict, title: str, out: Path,
                breakdowns: Sequence[tuple[str, str, str]]) -> None:
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
        params=params_text(params), status=status, hardware=hardware, device=device,
        task=task, task_params=params_text(task_params), model=model, scenario=scenario,
        seed=seed, started=started,
        method_line=" · ".join(filter(None, (f"{method} {version or ''}".strip(), plugin))),
        finished=finished, wall=fmt(wall_s, "s"), harness_version=harness_version or "—",
        error=error or "", traceback=traceback or "", phases=phases,
        config=config or "",
        plots=[samples_plot(phase, metric, unit, values)
               for _, phase, metric, unit, values in samples.get(run_key, ()) if values],
        timings=timing_lines(metrics.get(run_key, ())),
        matrices=[*matrices(metrics.get(run_key, ())),
                  *breakdown_tables(metrics.get(run_key, ()), breakdowns)],
        leaderboards=links[run_key], environment=environments.get(env_id or ""),
    )
    write_bytes(out / run_page(run_key), html.encode())


def start_pool(db: str, runs: int, workers: int | None) -> ProcessPoolExecutor | None:
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

