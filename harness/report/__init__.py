"""The leaderboard site: a results store rendered to plain, self-contained HTML.

``harness report`` reads the DuckDB store read-only, aggregates in SQL, and renders the
jinja2 templates of ``harness_reports`` into static pages: an index, one leaderboard per
suite × task setting × hardware group, and one page per run. A page needs nothing but
itself, one small stylesheet and one small script next to it (plots are inline SVG,
downloads are files beside the page), and every link is relative, so the site opens from
``file://`` and from a GitHub Pages project path without a single network request.

Results are ranked only within one hardware group (``runs.hardware``): a CPU figure and a
GPU figure come from different machines, so a fast CPU run must never outrank a GPU run.

The report names no scenario's metric: a leaderboard's quality and cost columns and its
plots come from the core's probe costs and from what each scenario declares
(:class:`harness.columns.ResultColumns`), kept in the store by the runs that produced them.

Modules, in the order data flows through them: :mod:`.query` (reading and aggregating),
:mod:`.tables` (columns, ranking, cells, CSV/JSON), :mod:`.views` (a suite's pivot
tables), :mod:`.plots` (SVG), :mod:`.paper` (LaTeX and Markdown), :mod:`.runs` (run
pages), :mod:`.site` (writing the site and the exports), :mod:`.serve` (local
preview); :mod:`.numbers`, :mod:`.names` and :mod:`.render` are what they share.

A suite's layout (:mod:`harness.layout`, kept in the store) says which rows are references
or bounds: they are pinned above the ranked rows, compared with, and never ranked.
"""

from __future__ import annotations

from harness.report.names import run_page, slugify
from harness.report.numbers import ci95, fmt, t975
from harness.report.query import ReportError
from harness.report.serve import make_server, serve
from harness.report.site import MARKER, SiteSummary, build_site, export_tables

__all__ = [
    "MARKER",
    "ReportError",
    "SiteSummary",
    "build_site",
    "ci95",
    "export_tables",
    "fmt",
    "make_server",
    "run_page",
    "serve",
    "slugify",
    "t975",
]
