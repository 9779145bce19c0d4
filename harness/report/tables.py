"""Leaderboard tables: columns in display order, ranking, cells, and the CSV/JSON downloads."""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import STATUSES
from harness.report.names import first_line, params_items, params_text, run_page, when
from harness.report.numbers import ci95, fmt, fmt_delta, fmt_mean
from harness.report.plots import pareto_plots, row_label
from harness.report.query import COMPARED_WITH, ROLE_RANK, Agg, Board, Column, Row, latency_interval

__all__ = ["board_context", "write_downloads"]


def _columns(board: Board) -> tuple[list[Column], list[tuple[str, str]]]:
    """The board's metric columns in display order, and the ones no row has a value for.

    Columns with no value anywhere (VRAM on a CPU) are listed with their reason below
    the table instead of filling it with dashes.
    """
    seen: dict[tuple[str, str, str, str], Agg] = {}
    hib: dict[tuple[str, str, str, str], bool | None] = {}
    for row in board.rows:
        for column, agg in row.cells.items():
            if column not in seen or (seen[column].mean is None and agg.mean is not None):
                seen[column] = agg
            hib[column] = hib.get(column) or row.hib[column]
    # Declared quality metrics first, in declared order (the first is the headline that
    # orders the rows); then any other recorded quality metric, eval phase first.
    declared = {(q.metric, q.phase): q for q in board.columns.quality}
    rank = {key: i for i, key in enumerate(declared)}
    quality = sorted((c for c in seen if c[0] == "quality"),
                     key=lambda c: (rank.get((c[2], c[1]), len(rank)),
                                    c[1] != "eval", c[2], c[1], c[3]))
    costs_by_key = board.columns.cost_columns()
    order = list(costs_by_key)
    phases = Counter((c[0], c[2]) for c in seen)
    # A training cost (trainable params) belongs to scenarios whose methods train.
    costs = sorted((c for c in seen if c[0] in costs_by_key
                    and not (costs_by_key[c[0]].training and board.columns.trains is False)),
                   key=lambda c: (order.index(c[0]), c[1]))
    columns, missing, keys = [], [], set()
    for column in (*quality, *costs):
        kind, phase, metric, stat = column
        many_phases = phases[(kind, metric)] > 1
        if kind == "quality":
            label = metric.replace("_", " ")
            key = metric
            declaration = declared.get((metric, phase)) if stat == "value" else None
            direction = (declaration.higher_is_better if declaration is not None
                         else bool(hib[column]))
        else:
            label, key = costs_by_key[kind].label, kind
            direction = costs_by_key[kind].higher_is_better
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
        columns.append(Column(column, key, label, seen[column].unit, direction,
                               kind == "quality"))
    return columns, missing


def _better(column: Column, value: float) -> float:
    """A sort key where smaller is better, whichever way the column points."""
    return -value if column.higher_is_better else value


def _order(board: Board, columns: list[Column]) -> None:
    """Pre-sort rows: references and bounds pinned first, then ok rows, then by the first
    column, best first (nulls last)."""
    primary = columns[0] if columns else None
    basis_rank = {"ok": 0, "invalid": 1, None: 2}

    def key(row: Row) -> tuple:
        agg = row.cells.get(primary.id) if primary else None
        value = agg.mean if agg and agg.mean is not None and math.isfinite(agg.mean) else None
        return (ROLE_RANK[row.role], basis_rank[row.basis], value is None,
                _better(primary, value) if value is not None else 0.0,
                row.model, row.method, row.params)

    board.rows.sort(key=key)


def _ranked(row: Row) -> bool:
    """Whether a row competes: ok seeds and no role (a reference or bound never wins)."""
    return row.basis == "ok" and row.role is None


def _references(board: Board) -> dict[str, Row]:
    """Per model, the row the others are compared with: its ok ``reference`` row, else its
    ok ``upper-bound`` row (the first in table order)."""
    found: dict[str, Row] = {}
    for role in COMPARED_WITH:
        for row in board.rows:
            if row.role == role and row.basis == "ok" and row.model not in found:
                found[row.model] = row
    return found


def _best(board: Board, columns: list[Column]) -> dict[tuple[str, str, str, str], float]:
    """The best mean per column among ranked rows (invalid rows and references never win)."""
    best: dict[tuple[str, str, str, str], float] = {}
    for column in columns:
        values = [row.cells[column.id].mean for row in board.rows
                  if _ranked(row) and column.id in row.cells
                  and row.cells[column.id].mean is not None
                  and math.isfinite(row.cells[column.id].mean)]
        if values:
            best[column.id] = min(values, key=functools.partial(_better, column))
    return best


#: A rendered cell: (class, sort key, text, "± ci", unit, note, title). Cells and run links
#: are tuples that the template unpacks, and rows are slotted dataclasses, not dicts:
#: jinja2 tries attributes before items, and a 100k-run site renders ~150k cells.
Cell = tuple[str, str, str, str, str, str, str]
#: A run's link in its row: (seed, status, page, title).
_RunLink = tuple[int, str, str, str]


@dataclass(slots=True)
class _RowView:
    method: str
    role: str
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
    cells: list[Cell]


@dataclass(slots=True)
class _Header:
    label: str
    type: str
    first: str
    title: str = ""


#: Columns whose ties are judged by the median latency's interval of the same phase
#: (throughput is items over the median latency).
_TIMED = ("latency", "throughput")


def _ties(board: Board, columns: list[Column], best: dict) -> dict[tuple, set[int]]:
    """Per timed column, the ok rows indistinguishable from the best one: the 95 %
    intervals of their median latencies overlap the best row's. Rows are named by id()."""
    ties: dict[tuple, set[int]] = {}
    for column in columns:
        if column.id[0] not in _TIMED or column.id not in best:
            continue
        phase = column.id[1]
        ok = [row for row in board.rows if _ranked(row) and column.id in row.cells]
        leader = next((row for row in ok if row.cells[column.id].mean == best[column.id]), None)
        bounds = latency_interval(leader, phase) if leader is not None else None
        if bounds is None:
            continue
        ties[column.id] = {
            id(row) for row in ok if row is not leader
            and (other := latency_interval(row, phase)) is not None
            and other[0] <= bounds[1] and bounds[0] <= other[1]
        }
    return ties


def _cell(row: Row, column: Column, best: float | None, seeds: int, tied: bool,
          reference: Row | None) -> Cell:
    agg = row.cells.get(column.id)
    if agg is None or agg.mean is None:
        reason = agg.reason if agg else "not recorded for this configuration"
        return ("num missing", "", "—", "", "", "", reason or "")
    text, ci_text, unit = fmt_mean(agg.mean, ci95(agg.sd, agg.n), column.unit)
    notes = []
    if agg.n != seeds:
        notes.append(f"n={agg.n}")
    if column.id[0] == "latency":
        iqr = row.cells.get(("latency_iqr", column.id[1], "", ""))
        if iqr and iqr.mean is not None:
            notes.append(f"IQR {fmt(iqr.mean, iqr.unit, 3)}")
        bounds = latency_interval(row, column.id[1])
        if bounds is not None and agg.mean:
            notes.append(f"median CI ±{(bounds[1] - bounds[0]) / 2 / agg.mean:.1%}")
    against = reference.cells.get(column.id) if reference is not None else None
    if against is not None and against.mean is not None:
        delta = fmt_delta(agg.mean, against.mean, column.unit, column.quality)
        if delta:
            notes.insert(0, delta)
    leads = best is not None and agg.mean == best
    cls = "num best" if leads else "num tie" if tied else "num"
    return (cls, repr(agg.mean), text, ci_text, unit, " · ".join(notes), "")


def _row_view(row: Row, columns: list[Column], best: dict, ties: dict[tuple, set[int]],
              show_version: bool, reference: Row | None) -> _RowView:
    counts = Counter(row.statuses)
    seeds = counts.get(row.basis, 0) if row.basis else 0
    errors = [first_line(error) for error in row.errors]
    reasons = Counter((status, error) for status, error in zip(row.statuses, errors, strict=True)
                      if status != "ok")
    return _RowView(
        method=row.method,
        role=(row.role or "").replace("-", " "),
        version=row.version if show_version else "",
        model=row.model,
        params=params_text(row.params),
        params_items=params_items(row.params),
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
        # Only ranked rows compete for best (invalid ones and references never win), and
        # only they are compared with the reference.
        cells=[_cell(row, c, best.get(c.id) if _ranked(row) else None, seeds,
                     id(row) in ties.get(c.id, ()),
                     reference if row.role is None and reference is not row else None)
               for c in columns],
    )


def board_context(board: Board, boards: list[Board], suite_models: dict[str, set[str]],
                   suite: dict[str, Any]) -> tuple[dict[str, Any], list[Column]]:
    columns, missing = _columns(board)
    _order(board, columns)
    best = _best(board, columns)
    ties = _ties(board, columns, best)
    versions: dict[str, set[str]] = defaultdict(set)
    for row in board.rows:
        versions[row.method].add(row.version)
    show_model = len(suite_models[board.suite]) > 1
    references = _references(board)
    rows = [_row_view(row, columns, best, ties, len(versions[row.method]) > 1,
                      references.get(row.model))
            for row in board.rows]
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
        # References and bounds in their own body above the ranked rows (sorting a
        # column reorders only the ranked ones).
        "pinned": [r for r in rows if r.role],
        "rows": [r for r in rows if not r.role],
        "missing": missing,
        "primary": primary,
        "references": sorted({row_label(r, show_model) for r in references.values()}),
        "counts": [(s, statuses[s]) for s in STATUSES if statuses.get(s)],
        "runs": sum(statuses.values()),
        "last_update": when(board.last_update),
        "siblings": [b for b in boards if (b.suite, b.task) == (board.suite, board.task)],
        "stem": stem,
        "csv": f"{stem}.csv",
        "json": f"{stem}.json",
        "plots": pareto_plots(board, columns, show_model),
        # Whether any latency cell has its median's interval (stores from before have none).
        "intervals": any(latency_interval(row, c.id[1]) is not None for row in board.rows
                         for c in columns if c.id[0] == "latency"),
    }, columns


def _board_records(board: Board, columns: list[Column]) -> list[dict[str, Any]]:
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
            "params": json.loads(row.params), "role": row.role, "basis": row.basis,
            "statuses": {s: counts.get(s, 0) for s in STATUSES},
            "values": values,
            "runs": [{"run_key": k, "seed": s, "status": st, **({"error": e} if e else {})}
                     for k, s, st, e in zip(row.run_keys, row.seeds, row.statuses, row.errors,
                                            strict=True)],
        })
    return records


def write_downloads(board: Board, columns: list[Column], folder: Path, stem: str) -> None:
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
                         "params", "role", "basis", *STATUSES,
                         *(f"{c.key}_{part}" for c in columns
                           for part in ("mean", "ci95", "n", "unit")),
                         "run_keys"])
        for record in records:
            writer.writerow([
                board.suite, board.task, board.hardware, record["model"], record["method"],
                record["method_version"], json.dumps(record["params"], sort_keys=True),
                record["role"] or "", record["basis"] or "", *record["statuses"].values(),
                *(value for c in columns for value in (
                    _csv_number(record["values"][c.key]["mean"]),
                    _csv_number(record["values"][c.key]["ci95"]),
                    record["values"][c.key]["n"], c.unit)),
                " ".join(r["run_key"] for r in record["runs"]),
            ])


def _csv_number(value: float | None) -> str:
    return "" if value is None else repr(value)

