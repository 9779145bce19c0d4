"""Inline SVG plots: quality-versus-cost Pareto plots and a run's raw timing samples.

Geometry lives in :data:`FRAME`, shared with the templates (a jinja global) that draw the
axes and labels around the points placed here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from harness.report.names import params_text
from harness.report.numbers import fmt, scale
from harness.report.query import Board, Column, Row, latency_interval

__all__ = ["FRAME", "Plot", "pareto_frontier", "pareto_plots", "row_label",
           "samples_plot"]

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


def pareto_frontier(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
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
    err: str = ""  # the cost's confidence interval as an SVG path (a horizontal bar)


@dataclass(slots=True)
class Plot:
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


#: A plotted row: (label, cost, quality, the cost's 95 % interval or None).
_Placed = tuple[str, float, float, tuple[float, float] | None]


def _pareto(title: str, rows: list[_Placed], x_column: Column, y_column: Column,
            x_label: str) -> Plot:
    """Quality against one cost: every ok row a point, the frontier a step line, and the
    cost's confidence interval (where there is one) as a horizontal error bar."""
    x_div, x_unit = scale(max(abs(r[1]) for r in rows), x_column.unit)
    y_div, y_unit = scale(max(abs(r[2]) for r in rows), y_column.unit)
    xs = [r[1] / x_div for r in rows]
    ys = [r[2] / y_div for r in rows]
    bars = [(r[3][0] / x_div, r[3][1] / x_div) if r[3] else None for r in rows]
    extent = xs + [end for bar in bars if bar for end in bar]
    x_axis, x_ticks = _axis(extent, FRAME.left, FRAME.right, allow_log=True)
    y_axis, y_ticks = _axis(ys, FRAME.bottom, FRAME.top, allow_log=False)
    frontier = pareto_frontier(list(zip(xs, ys, strict=True)), y_column.higher_is_better)
    on_frontier = set(frontier)
    label_all = len(rows) <= 8
    points, placed = [], []
    for i in sorted(range(len(rows)), key=lambda i: (i not in on_frontier, i)):
        label, x, y, interval = rows[i]
        px, py = x_axis(xs[i]), y_axis(ys[i])
        err, spread = "", ""
        if bars[i] is not None:
            low, high = x_axis(bars[i][0]), x_axis(bars[i][1])
            err = f"M{low},{py}H{high}M{low},{py - 3}v6M{high},{py - 3}v6"
            spread = (f" (95 % CI {fmt(interval[0], x_column.unit)} – "
                      f"{fmt(interval[1], x_column.unit)})")
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
            f"{label}: {fmt(y, y_column.unit)}, {fmt(x, x_column.unit)}{spread}",
            text if show else "", "end" if right else "start", -8 if right else 8, err,
        ))
    first = frontier[0]
    step = f"M{x_axis(xs[first])},{y_axis(ys[first])}" + "".join(
        f"H{x_axis(xs[i])}V{y_axis(ys[i])}" for i in frontier[1:]) + f"H{FRAME.right}"
    better = "higher" if y_column.higher_is_better else "lower"
    x_ticks, y_ticks = _ticks(x_axis, x_ticks), _ticks(y_axis, y_ticks)
    return Plot(
        title, grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label=f"{x_label}{_in(x_unit)}{', log scale' if x_axis.log else ''}"
                " — lower is better",
        y_label=f"{y_column.label}{_in(y_unit)} — {better} is better",
        points=points, step=step,
        note=" ".join(filter(None, (
            "" if len(placed) == len(rows) else "Labels that would overlap are left out; "
                                                "hover a point for its configuration.",
            "Bars: the 95 % confidence interval of each median." if any(bars) else "",
        ))),
    )


def row_label(row: Row, show_model: bool) -> str:
    params = params_text(row.params)
    label = f"{row.method} ({params})" if params else row.method
    return f"{label} · {row.model}" if show_model else label


def pareto_plots(board: Board, columns: list[Column], show_model: bool) -> list[Plot]:
    """Quality vs peak memory and quality vs latency (or a sentence saying why not), then
    the plots the board's scenarios declare, each against one of its cost columns."""
    by_kind = {c.id[0]: c for c in reversed(columns) if not c.quality}
    quality = next((c for c in columns if c.quality), None)
    memory_title, latency_title = "Quality vs peak memory", "Quality vs latency"
    if quality is None:
        reason = "No plot: this table has no quality metric."
        return [Plot(memory_title, reason), Plot(latency_title, reason)]
    memory = by_kind.get("vram")
    memory_label = "peak VRAM (torch allocated)"
    if memory is None and "host_ram" in by_kind:
        memory = by_kind["host_ram"]
        memory_label = "peak host RAM (no VRAM measured here)"
    axes = [
        (memory_title, memory, memory_label, "peak memory"),
        (latency_title, by_kind.get("latency"), "median latency", "latency"),
    ]
    axes += [(p.title, by_kind.get(p.cost), p.axis, p.what) for p in board.columns.plots]
    plots = []
    for title, cost, label, what in axes:
        if cost is None:
            plots.append(Plot(title, f"No plot: no run here recorded {what}."))
            continue
        rows = []
        for row in board.rows:
            x, y = row.cells.get(cost.id), row.cells.get(quality.id)
            if (row.basis == "ok" and x and y and x.mean is not None and y.mean is not None
                    and math.isfinite(x.mean) and math.isfinite(y.mean)):
                interval = latency_interval(row, cost.id[1]) if cost.id[0] == "latency" else None
                rows.append((row_label(row, show_model), x.mean, y.mean, interval))
        if not rows:
            plots.append(Plot(title, f"No plot: no row with ok runs has both "
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


def samples_plot(phase: str, metric: str, unit: str, values: list[float]) -> Plot:
    """Raw timing samples in iteration order, with their median; long runs are thinned."""
    title = f"{metric} · {phase}"
    if not all(map(math.isfinite, values)):
        return Plot(title, f"No plot: the samples of {metric} include non-finite values.")
    n = len(values)
    stride, xs, x_ticks = _iterations(n)
    ordered = sorted(values)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    divisor, text = scale(median, unit)
    ys = [v / divisor for v in values[::stride]]
    y_axis, y_ticks = _axis(ys, FRAME.bottom, FRAME.top, allow_log=False)
    y_ticks = _ticks(y_axis, y_ticks)
    return Plot(
        f"{title}: {n} samples, median {fmt(median, unit)}",
        grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label="iteration" + (f" (every {stride}th of {n} shown)" if stride > 1 else ""),
        y_label=f"{metric}{_in(text)}",
        dots="".join(map("M{},{}h0".format, xs, y_axis.many(ys))),
        median=y_axis(median / divisor),
    )

