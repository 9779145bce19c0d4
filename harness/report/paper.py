"""Tables to paste into a paper or a README: booktabs LaTeX and GitHub Markdown.

Leaderboards and views are written from the same cells the site shows: each value is the
mean ± the half-width of its 95 % CI over seeds with its unit, the best of each column
among the contenders is bold, and references and bounds sit above a rule, labelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PaperTable", "latex", "markdown", "paper_board", "paper_view"]

#: A rendered cell: (class, sort key, text, "± ci", unit, note, title).
Cell = tuple[str, str, str, str, str, str, str]


@dataclass
class PaperTable:
    """Headers, then label columns (``identity`` of them) and value cells per row.

    ``span`` puts a heading over a run of value columns: (title, first index, count).
    """

    caption: str
    headers: list[str]
    identity: int
    pinned: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    rows: list[tuple[list[str], list[Cell]]] = field(default_factory=list)
    span: tuple[str, int, int] | None = None


def _role(label: str, role: str) -> str:
    return f"{label} ({role})" if role else label


def paper_board(context: dict[str, Any]) -> PaperTable:
    """A leaderboard page's table (its context from :func:`harness.report.tables
    .board_context`), without the runs column and the cells' small print."""
    board, show_model = context["board"], context["show_model"]
    labels = ["method", *(["model"] if show_model else []), "params"]
    # The page's headings: method, [model], params, runs, then one per value column.
    values = [f"{h.label} {'↑' if h.first == 'desc' else '↓'}"
              for h in context["headers"][len(labels) + 1:]]

    def row(view: Any) -> tuple[list[str], list[Cell]]:
        identity = [_role(view.method, view.role), *([view.model] if show_model else []),
                    view.params or "—"]
        return identity, view.cells

    return PaperTable(
        caption=f"{board.task} · {board.suite} · {board.hardware}: mean ± 95 % CI over seeds; "
                "best in bold",
        headers=[*labels, *values], identity=len(labels),
        pinned=[row(v) for v in context["pinned"]], rows=[row(v) for v in context["rows"]],
    )


def paper_view(table: Any) -> PaperTable:
    """A pivot view (:class:`harness.report.views.ViewTable`)."""
    labels = list(table.row_headers)

    def row(view: Any) -> tuple[list[str], list[Cell]]:
        return [_role(view.labels[0], view.role), *view.labels[1:]], view.cells

    return PaperTable(
        caption=f"{table.title} · {table.suite} · {table.hardware}: {table.metric}; "
                "mean ± 95 % CI over seeds; best in bold",
        headers=[*labels, *table.columns, *(["mean"] if table.mean else [])],
        identity=len(labels),
        pinned=[row(v) for v in table.pinned], rows=[row(v) for v in table.rows],
        span=(table.column_title, len(labels), len(table.columns)),
    )


def _value(cell: Cell) -> tuple[str, bool]:
    cls, _, text, ci, unit, _, _ = cell
    return " ".join(p for p in (text, ci, unit) if p), "best" in cls.split()


# -- LaTeX ----------------------------------------------------------------------------------

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "×": r"$\times$", "−": r"$-$", "µ": r"\textmu{}", "·": r"$\cdot$",
    "↑": r"$\uparrow$", "↓": r"$\downarrow$", "…": r"\ldots{}", "<": r"\textless{}",
    ">": r"\textgreater{}", "≈": r"$\approx$", "—": "---", "→": r"$\rightarrow$",
}
_LATEX_RE = re.compile("|".join(map(re.escape, _LATEX_SPECIAL)))


def escape_latex(text: str) -> str:
    """Text safe in a LaTeX table cell (pdflatex too: symbols become math or text macros)."""
    return _LATEX_RE.sub(lambda m: _LATEX_SPECIAL[m.group()], text)


def latex(table: PaperTable) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    width = len(table.headers)
    spec = "l" * table.identity + "r" * (width - table.identity)
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{escape_latex(table.caption)}}}",
             f"\\begin{{tabular}}{{{spec}}}", r"\toprule"]
    if table.span is not None:
        title, first, count = table.span
        start = first + 1
        lines.append(" & " * first + f"\\multicolumn{{{count}}}{{c}}{{{escape_latex(title)}}}"
                     + " & " * (width - first - count) + r" \\")
        lines.append(f"\\cmidrule(lr){{{start}-{start + count - 1}}}")
    lines.append(" & ".join(escape_latex(h) for h in table.headers) + r" \\")
    lines.append(r"\midrule")

    def body(rows: list[tuple[list[str], list[Cell]]], italic: bool) -> None:
        for labels, cells in rows:
            texts = [f"\\textit{{{escape_latex(t)}}}" if italic else escape_latex(t)
                     for t in labels]
            for cell in cells:
                text, best = _value(cell)
                text = escape_latex(text)
                texts.append(f"\\textbf{{{text}}}" if best else text)
            lines.append(" & ".join(texts) + r" \\")

    body(table.pinned, True)
    if table.pinned and table.rows:
        lines.append(r"\midrule")
    body(table.rows, False)
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# -- Markdown -------------------------------------------------------------------------------

_MD_RE = re.compile(r"([\\`*_{}\[\]<>|])")


def escape_markdown(text: str) -> str:
    """Text safe in a GitHub Markdown table cell (a ``|`` would end the cell)."""
    return _MD_RE.sub(r"\\\1", text)


def markdown(table: PaperTable) -> str:
    """A GitHub-flavoured Markdown table, with its caption as a paragraph above it."""
    headers = list(table.headers)
    if table.span is not None:
        title, first, count = table.span
        for i in range(first, first + count):
            headers[i] = f"{title} = {headers[i]}"
    lines = [escape_markdown(table.caption), "",
             "| " + " | ".join(escape_markdown(h) for h in headers) + " |",
             "|" + "|".join(":---" if i < table.identity else "---:"
                            for i in range(len(headers))) + "|"]
    for rows, italic in ((table.pinned, True), (table.rows, False)):
        for labels, cells in rows:
            texts = [f"*{escape_markdown(t)}*" if italic else escape_markdown(t) for t in labels]
            for cell in cells:
                text, best = _value(cell)
                texts.append(f"**{escape_markdown(text)}**" if best else escape_markdown(text))
            lines.append("| " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n"
