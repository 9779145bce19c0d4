"""Writing the site: the folder, the leaderboard pages with their downloads, and the index."""

from __future__ import annotations

import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from harness import __version__
from harness.api import STATUSES
from harness.columns import ResultColumns
from harness.report.names import when
from harness.report.paper import PaperTable, latex, markdown, paper_board, paper_view
from harness.report.query import (
    Board,
    Column,
    ReportError,
    SiteData,
    aggregate,
    plan,
    stored_columns,
)
from harness.report.render import paused_gc, templates
from harness.report.runs import RunJob, render_runs, start_pool
from harness.report.tables import board_context, write_downloads
from harness.report.views import ViewTable, view_tables
from harness.store import connect_readonly

__all__ = ["MARKER", "SiteSummary", "build_site", "export_tables"]

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
    roles: Mapping[str, str] | None = None,
) -> SiteSummary:
    """Render the store ``db`` into the static site folder ``out``.

    ``suites`` restricts the site to those suite names. ``out`` is emptied first, but only
    when a previous build wrote it. ``workers`` sets how many processes render run pages
    (default: one per CPU for large stores, none for small ones). ``columns`` are scenarios'
    declarations (e.g. of the installed plugins) for scenarios whose declaration the store
    does not keep (a store written before stores kept them); the store's own come first.
    ``roles`` likewise maps methods to their declared roles, for suites stored without
    a layout.
    """
    started = time.perf_counter()
    with paused_gc():
        summary = _build(str(db), Path(out), title, suites, workers, columns or {},
                         roles or {})
    return replace(summary, seconds=time.perf_counter() - started)


def _build(db: str, out: Path, title: str, suites: Sequence[str], workers: int | None,
           columns: Mapping[str, ResultColumns], roles: Mapping[str, str]) -> SiteSummary:
    con = connect_readonly(db)
    pool = None
    try:
        (runs,) = con.execute("SELECT count(*) FROM runs").fetchone()
        pool = start_pool(db, runs, workers)  # workers start up while DuckDB plans
        try:
            data, links = plan(con, suites, {**columns, **stored_columns(con)}, roles)
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
            views = view_tables(con, data)
        finally:
            con.close()
        common = {"site_title": title, "version": __version__}
        summaries = _write_boards(data, views, out, common)
        for name, table in _view_papers(data, views):
            _write_paper(out / name, table)
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


def _contexts(data: SiteData) -> Iterator[tuple[Board, dict[str, Any], list[Column]]]:
    """Each board with its page's context and its value columns."""
    suite_by_name = {s["name"]: s for s in data.suites}
    suite_models: dict[str, set[str]] = defaultdict(set)
    for board in data.boards:
        suite_models[board.suite].update(row.model for row in board.rows)
    for board in data.boards:
        yield board, *board_context(board, data.boards, suite_models, suite_by_name[board.suite])


def _view_papers(data: SiteData, views: dict[tuple[str, str], list[ViewTable]]
                 ) -> Iterator[tuple[str, PaperTable]]:
    """Each view's paper table, with its path in the site's layout less the suffix."""
    folders = {board.suite: board.path.rsplit("/", 1)[0] for board in data.boards}
    for (suite, _), group in views.items():
        for view in group:
            yield f"{folders[suite]}/{view.stem}", paper_view(view)


#: The paper formats: (suffix, writer).
_PAPER_FORMATS = ((".tex", latex), (".md", markdown))


def _write_paper(path: Path, table: PaperTable) -> None:
    """``path.tex`` (booktabs) and ``path.md`` (``path`` less its suffix)."""
    for suffix, render in _PAPER_FORMATS:
        path.with_name(path.name + suffix).write_text(render(table), encoding="utf-8")


def _write_boards(data: SiteData, views: dict[tuple[str, str], list[ViewTable]], out: Path,
                  common: dict[str, Any]) -> list[dict[str, Any]]:
    """Each leaderboard page with its downloads (CSV, JSON, LaTeX, Markdown) and its
    suite's views on its hardware; returns what the index says of the boards."""
    template = templates().get_template("leaderboard.html")
    summaries = []
    for board, context, columns in _contexts(data):
        folder = (out / board.path).parent
        folder.mkdir(exist_ok=True)
        group = views.get((board.suite, board.hardware), [])
        (out / board.path).write_text(template.render(**common, **context, views=group),
                                      encoding="utf-8")
        write_downloads(board, columns, folder, context["stem"])
        _write_paper(folder / context["stem"], paper_board(context))
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
    """The top ranked row of a board for the index (never a reference or bound): its label
    and first-column value."""
    rows, primary = context["rows"], context["primary"]
    if not rows or primary is None or rows[0].basis != "ok" or not rows[0].cells[0][1]:
        return None
    top, (_, _, text, ci, unit, _, _) = rows[0], rows[0].cells[0]
    label = f"{top.method} ({top.params})" if top.params else top.method
    if context["show_model"]:
        label = f"{label} · {top.model}"
    return {"label": label, "metric": primary.label,
            "value": " ".join(p for p in (text, ci, unit) if p)}



def export_tables(db: str | Path, *, latex_dir: str | Path | None = None,
                  markdown_dir: str | Path | None = None, suites: Sequence[str] = (),
                  columns: Mapping[str, ResultColumns] | None = None,
                  roles: Mapping[str, str] | None = None) -> list[Path]:
    """Write every leaderboard and view as LaTeX (booktabs) and/or Markdown, in the site's
    folder layout (``SUITE/TASK-HARDWARE.tex``); returns the files written.

    ``columns`` and ``roles`` stand in for what an older store does not keep, as in
    :func:`build_site`.
    """
    con = connect_readonly(str(db))
    try:
        data, _ = plan(con, suites, {**(columns or {}), **stored_columns(con)}, roles)
        aggregate(con, data)
        views = view_tables(con, data)
    finally:
        con.close()
    tables = [(board.path.removesuffix(".html"), paper_board(context))
              for board, context, _ in _contexts(data)]
    tables += _view_papers(data, views)
    written = []
    for target, (suffix, render) in zip((latex_dir, markdown_dir), _PAPER_FORMATS,
                                        strict=True):
        if target is None:
            continue
        for name, table in tables:
            path = Path(target) / f"{name}{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(table), encoding="utf-8")
            written.append(path)
    return written
