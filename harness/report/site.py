"""Writing the site: the folder, the leaderboard pages with their downloads, and the index."""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from harness import __version__
from harness.api import STATUSES
from harness.columns import ResultColumns
from harness.report.names import when
from harness.report.query import ReportError, SiteData, aggregate, plan, stored_columns
from harness.report.render import paused_gc, templates
from harness.report.runs import RunJob, render_runs, start_pool
from harness.report.tables import board_context, write_downloads
from harness.store import connect_readonly

__all__ = ["MARKER", "SiteSummary", "build_site"]

#: Written into every site folder; a folder without it is never emptied by a rebuild.
MARKER = ".harness-site"
#: Run pages are rendered in chunks of this many runs (one DuckDB read per chunk).
_CHUNK = 5000


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


def build_site(
    db: str | Path,
    out: str | Path,
    *,
    title: str = "harness leaderboard",
    suites: Sequence[str] = (),
    workers: int | None = None,
    columns: Mapping[str, ResultColumns] | None = None,
) -> SiteSummary:
    """Render the store ``db`` into the static site folder ``out``.

    ``suites`` restricts the site to those suite names. ``out`` is emptied first, but only
    when a previous build wrote it. ``workers`` sets how many processes render run pages
    (default: one per CPU for large stores, none for small ones). ``columns`` are scenarios'
    declarations (e.g. of the installed plugins) for scenarios whose declaration the store
    does not keep (a store written before stores kept them); the store's own come first.
    """
    started = time.perf_counter()
    with paused_gc():
        summary = _build(str(db), Path(out), title, suites, workers, columns or {})
    return replace(summary, seconds=time.perf_counter() - started)


def _build(db: str, out: Path, title: str, suites: Sequence[str], workers: int | None,
           columns: Mapping[str, ResultColumns]) -> SiteSummary:
    con = connect_readonly(db)
    pool = None
    try:
        (runs,) = con.execute("SELECT count(*) FROM runs").fetchone()
        pool = start_pool(db, runs, workers)  # workers start up while DuckDB plans
        try:
            data, links = plan(con, suites, {**columns, **stored_columns(con)})
            _reset(out)
            _copy_static(out)
            keys = sorted(links)
            breakdowns = {scenario: [(q.metric, q.phase, q.breakdown) for q in declared.quality
                                     if q.breakdown]
                          for scenario, declared in data.declared.items()}
            jobs = [RunJob(db, str(out), title, [(k, links[k]) for k in keys[i:i + _CHUNK]],
                           breakdowns)
                    for i in range(0, len(keys), _CHUNK)]
            # From here on, workers render run pages while this process aggregates and
            # writes the leaderboards and the index.
            pending = [pool.submit(render_runs, job) for job in jobs] if pool else []
            aggregate(con, data)
        finally:
            con.close()
        common = {"site_title": title, "version": __version__}
        summaries = _write_boards(data, out, common)
        _write_index(data, out, summaries, common, len(keys))
        run_pages = sum(f.result() for f in pending) if pool else sum(map(render_runs, jobs))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return SiteSummary(
        out=out, runs=len(keys), leaderboards=len(data.boards), run_pages=run_pages,
        pages=run_pages + len(data.boards) + 1,
        index_bytes=(out / "index.html").stat().st_size, seconds=0.0,
    )


def _write_boards(data: SiteData, out: Path, common: dict[str, Any]) -> list[dict[str, Any]]:
    """Each leaderboard page with its CSV and JSON; returns what the index says of them."""
    suite_by_name = {s["name"]: s for s in data.suites}
    suite_models: dict[str, set[str]] = defaultdict(set)
    for board in data.boards:
        suite_models[board.suite].update(row.model for row in board.rows)
    template = templates().get_template("leaderboard.html")
    summaries = []
    for board in data.boards:
        context, columns = board_context(board, data.boards, suite_models,
                                          suite_by_name[board.suite])
        folder = (out / board.path).parent
        folder.mkdir(exist_ok=True)
        (out / board.path).write_text(template.render(**common, **context), encoding="utf-8")
        write_downloads(board, columns, folder, context["csv"].removesuffix(".csv"))
        summaries.append({
            "suite": board.suite, "task": board.task, "hardware": board.hardware,
            "path": board.path, "configs": len(board.rows), "counts": context["counts"],
            "leader": _leader(context), "last_update": context["last_update"],
        })
    return summaries


def _write_index(data: SiteData, out: Path, summaries: list[dict[str, Any]],
                 common: dict[str, Any], runs: int) -> None:
    """The front page summarizes (suites, boards, hardware, counts); it never lists runs,
    so it stays small however large the store grows."""
    statuses = Counter(s for b in data.boards for r in b.rows for s in r.statuses)
    last = max((b.last_update for b in data.boards if b.last_update), default=None)
    index = templates().get_template("index.html").render(
        **common, root="", suites=data.suites, boards=summaries, hardware=data.hardware,
        counts=[(s, statuses[s]) for s in STATUSES if statuses.get(s)], runs=runs,
        last_update=when(last),
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

