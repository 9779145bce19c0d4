"""Inline SVG plots: quality-versus-cost Pareto plots, a view's rows against its numeric
columns, and a run's raw timing samples.

Geometry lives in :data:`FRAME`, shared with the templates (a jinja global) that draw the
axes and labels around the points placed here.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from harness.report.names import params_text
from harness.report.numbers import ci95, fmt, scale
from harness.report.query import Agg, Board, Column, Row, latency_interval

__all__ = ["FRAME", "Plot", "Series", "curves_plot", "pareto_frontier", "pareto_plots",
           "row_label", "samples_plot"]

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


def _decimals(value: float) -> int:
    """The fewest decimals that write ``value`` exactly, float noise aside."""
    scaled = abs(value)
    for places in range(16):
        if abs(scaled - round(scaled)) <= 1e-9 * scaled:
            return places
        scaled *= 10
    return 16


def _axis(values: list[float], start: float, end: float, *, allow_log: bool
          ) -> tuple[_Axis, list[float]]:
    """An axis that fits ``values`` with round ticks; log when they span over two decades.

    Ticks are rounded to the decimals they need, so that labels written from them are exact.
    """
    lo, hi = min(values), max(values)
    if allow_log and lo > 0 and hi / lo > 100:
        lo, hi = lo / 1.3, hi * 1.3
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [round(10.0**d, max(0, -d)) for d in decades if lo <= 10.0**d <= hi]
        if len(ticks) < 3:
            ticks = sorted(round(m * 10.0**d, max(0, -d)) for d in decades for m in (1, 2, 5)
                           if lo <= m * 10.0**d <= hi)
        return _Axis(lo, hi, True, start, end), ticks
    pad = (hi - lo) * 0.08 or abs(lo) * 0.1 or 1.0
    lo, hi = (max(lo - pad, 0.0) if lo >= 0 else lo - pad), hi + pad
    step = _nice_step(hi - lo)
    places = _decimals(step)
    ticks = [round(k * step, places)
             for k in range(math.ceil(lo / step), math.floor(hi / step + 1e-9) + 1)]
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
    err: str = ""  # the 95 % intervals as one SVG path: the cost's across, the quality's up
    marker: str = ""  # a reference's or bound's hollow diamond as an SVG path; else a circle


@dataclass(slots=True)
class _Line:
    """A reference's or bound's quality: a dashed line across the plot, labelled inside the
    frame at its right end."""

    d: str
    label_y: float
    label: str
    title: str


@dataclass(slots=True)
class _Curve:
    """A view's row against its columns: the line through its points, its 95 % intervals as
    one path of error bars, and each point's (x, y, tooltip)."""

    css: str  # its colour (``s0``..``s7``), plus ``ref`` for a reference or bound: dashed
    d: str
    err: str
    points: list[tuple[float, float, str]]


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
    lines: list[_Line] = field(default_factory=list)  # Pareto: references and bounds
    step: str = ""
    dots: str = ""  # samples: one dot per iteration and the median line
    median: float = 0.0
    curves: list[_Curve] = field(default_factory=list)  # a view's rows against its columns
    legend: list[tuple[str, str]] = field(default_factory=list)  # (curve css, its name)
    note: str = ""


def _ticks(axis: _Axis, ticks: list[float]) -> list[tuple[float, str]]:
    """Tick positions with bare-number labels (the unit goes on the axis title), written
    exactly, so distinct ticks never share a label: a log axis's each with the decimals it
    needs, a linear axis's all with the most any needs (its step's), so they read alike."""
    places = max(map(_decimals, ticks), default=0)
    return [(axis(t), f"{t:.{_decimals(t) if axis.log else places}f}") for t in ticks]


def _grid(x_ticks: list[tuple[float, str]], y_ticks: list[tuple[float, str]]) -> str:
    """All grid lines as one SVG path (one attribute to write instead of four per line)."""
    return "".join([f"M{FRAME.left},{y}H{FRAME.right}" for y, _ in y_ticks]
                   + [f"M{x},{FRAME.top}V{FRAME.bottom}" for x, _ in x_ticks])


@dataclass(slots=True)
class _Placed:
    """A plotted row: its label and role, its cost (None: a reference or bound without it,
    drawn as its line alone) and quality, and their 95 % intervals where there are some."""

    label: str
    role: str | None
    x: float | None
    y: float
    x_bar: tuple[float, float] | None
    y_bar: tuple[float, float] | None

    @property
    def name(self) -> str:
        return f"{self.label} ({self.role.replace('-', ' ')})" if self.role else self.label


def _short(label: str) -> str:
    return label if len(label) <= 40 else label[:39] + "…"


def _with_ci(value: float, bar: tuple[float, float] | None, unit: str) -> str:
    text = fmt(value, unit)
    return f"{text} (95 % CI {fmt(bar[0], unit)} – {fmt(bar[1], unit)})" if bar else text


def _pareto(title: str, rows: list[_Placed], x_column: Column, y_column: Column,
            x_label: str) -> Plot:
    """Quality against one cost: every row with both a point, its intervals error bars, the
    contenders' frontier a step line, and each reference's or bound's quality a dashed line
    (their points never on the frontier: they are there to compare against)."""
    placed_rows = [r for r in rows if r.x is not None]
    lined = [r for r in rows if r.role]
    x_div, x_unit = scale(max(abs(r.x) for r in placed_rows), x_column.unit)
    y_div, y_unit = scale(max(abs(r.y) for r in rows), y_column.unit)
    xs = [r.x / x_div for r in placed_rows]
    ys = [r.y / y_div for r in placed_rows]
    x_bars = [(r.x_bar[0] / x_div, r.x_bar[1] / x_div) if r.x_bar else None
              for r in placed_rows]
    y_bars = [(r.y_bar[0] / y_div, r.y_bar[1] / y_div) if r.y_bar else None
              for r in placed_rows]
    x_axis, x_ticks = _axis(xs + [end for bar in x_bars if bar for end in bar],
                            FRAME.left, FRAME.right, allow_log=True)
    y_axis, y_ticks = _axis(ys + [end for bar in y_bars if bar for end in bar]
                            + [r.y / y_div for r in lined],
                            FRAME.bottom, FRAME.top, allow_log=False)
    contenders = [i for i, r in enumerate(placed_rows) if r.role is None]
    frontier = [contenders[j] for j in pareto_frontier(
        [(xs[i], ys[i]) for i in contenders], y_column.higher_is_better)]
    on_frontier = set(frontier)
    label_all = len(placed_rows) <= 8
    # Labels are ~6.5 px a character; one that would overlap a placed one is left to the
    # tooltip. Placed: (x extent, baseline) of each label drawn.
    placed: list[tuple[tuple[float, float], float]] = []

    def free(box: tuple[float, float], baseline: float) -> bool:
        return not any(abs(baseline - other_y) < 13 and box[0] < other[1] and other[0] < box[1]
                       for other, other_y in placed)

    lines = []
    for r in lined:
        y = y_axis(r.y / y_div)
        text = _short(r.name)
        box = (FRAME.right - 4 - 6.5 * len(text), FRAME.right - 4)
        baseline = next((b for b in (y - 4, y + 13) if free(box, b)), y - 4)
        placed.append((box, baseline))
        lines.append(_Line(f"M{FRAME.left},{y}H{FRAME.right}", round(baseline, 1), text,
                           f"{r.name}: {_with_ci(r.y, r.y_bar, y_column.unit)}"))
    points, hidden = [], 0
    for i in sorted(range(len(placed_rows)), key=lambda i: (i not in on_frontier, i)):
        r = placed_rows[i]
        px, py = x_axis(xs[i]), y_axis(ys[i])
        err = ""
        if x_bars[i]:
            low, high = x_axis(x_bars[i][0]), x_axis(x_bars[i][1])
            err += f"M{low},{py}H{high}M{low},{py - 3:.1f}v6M{high},{py - 3:.1f}v6"
        if y_bars[i]:
            low, high = y_axis(y_bars[i][0]), y_axis(y_bars[i][1])
            err += f"M{px},{low}V{high}M{px - 3:.1f},{low}h6M{px - 3:.1f},{high}h6"
        right = px > FRAME.width * 0.62
        text = _short(r.label)
        box = (px - 8 - 6.5 * len(text), px - 8) if right else (px + 8, px + 8 + 6.5 * len(text))
        # A reference's or bound's name is on its line.
        show = not r.role and (label_all or i in on_frontier) and free(box, py - 7)
        if show:
            placed.append((box, py - 7))
        elif not r.role:
            hidden += 1
        points.append(_Point(
            px, py, i in on_frontier,
            f"{r.name}: {_with_ci(r.y, r.y_bar, y_column.unit)}, "
            f"{_with_ci(r.x, r.x_bar, x_column.unit)}",
            text if show else "", "end" if right else "start", -8 if right else 8, err,
            f"M{px},{py - 6:.1f}l6,6l-6,6l-6,-6z" if r.role else "",
        ))
    step = ""
    if frontier:
        first = frontier[0]
        step = f"M{x_axis(xs[first])},{y_axis(ys[first])}" + "".join(
            f"H{x_axis(xs[i])}V{y_axis(ys[i])}" for i in frontier[1:]) + f"H{FRAME.right}"
    latency = x_column.id[0] == "latency"
    sources = [
        *(["seeds"] if any(y_bars) or (any(x_bars) and not latency) else []),
        *(["latency: the median's interval"] if any(x_bars) and latency else []),
    ]
    better = "higher" if y_column.higher_is_better else "lower"
    x_ticks, y_ticks = _ticks(x_axis, x_ticks), _ticks(y_axis, y_ticks)
    return Plot(
        title, grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label=f"{x_label}{_in(x_unit)}{', log scale' if x_axis.log else ''}"
                " — lower is better",
        y_label=f"{y_column.label}{_in(y_unit)} — {better} is better",
        points=points, lines=lines, step=step,
        note=" ".join(filter(None, (
            "Labels that would overlap are left out; hover a point for its configuration."
            if hidden else "",
            f"Bars: 95 % confidence intervals ({'; '.join(sources)})." if sources else "",
            "Dashed lines: the quality of references and bounds (hollow diamonds where they "
            "have this cost), which are never on the frontier." if lines else "",
        ))),
    )


#: Colours of a view plot's lines, in the style sheet; more rows than this reuse them.
CURVE_COLOURS = 8


@dataclass(slots=True)
class Series:
    """A view's row to draw: its name, its role (None for a contender) and its cells as
    ``(x, mean, 95 % CI half-width or None)``, one per column it has."""

    name: str
    role: str | None
    cells: list[tuple[float, float, float | None]]


def curves_plot(title: str, x_label: str, y_label: str, unit: str, higher_is_better: bool,
                series: list[Series]) -> Plot | None:
    """A view's rows as lines against its columns' values (a replay buffer, a merge ratio,
    a context length), each point a cell's mean with its 95 % interval; references and
    bounds dashed. None where it would say nothing: under two columns, or no row with two
    points."""
    xs = sorted({x for s in series for x, _, _ in s.cells})
    if len(xs) < 2 or not any(len(s.cells) > 1 for s in series):
        return None
    values = [y for s in series for _, y, _ in s.cells]
    divisor, text = scale(max(map(abs, values)), unit)
    ends = [y + sign * (ci or 0.0) for s in series for _, y, ci in s.cells for sign in (-1, 1)]
    x_axis, x_ticks = _axis(xs, FRAME.left, FRAME.right, allow_log=True)
    if len(xs) <= 12:  # a handful of settings: tick each one
        x_ticks = [float(x) for x in xs]
    y_axis, y_ticks = _axis([v / divisor for v in values + ends], FRAME.bottom, FRAME.top,
                            allow_log=False)
    curves, legend = [], []
    for i, s in enumerate(series):
        css = f"s{i % CURVE_COLOURS}" + (" ref" if s.role else "")
        name = f"{s.name} ({s.role.replace('-', ' ')})" if s.role else s.name
        placed = [(x_axis(x), y_axis(y / divisor), x, y, ci) for x, y, ci in sorted(s.cells)]
        err = "".join(
            f"M{px},{y_axis((y - ci) / divisor)}V{y_axis((y + ci) / divisor)}"
            for px, _, _, y, ci in placed if ci)
        points = [(px, py, f"{name}, {x_label} {fmt(x)}: "
                           f"{_with_ci(y, (y - ci, y + ci) if ci else None, unit)}")
                  for px, py, x, y, ci in placed]
        d = "M" + "L".join(f"{px},{py}" for px, py, *_ in placed)
        curves.append(_Curve(css, d, err, points))
        legend.append((css, name))
    x_ticks, y_ticks = _ticks(x_axis, x_ticks), _ticks(y_axis, y_ticks)
    return Plot(
        title, grid=_grid(x_ticks, y_ticks), x_ticks=x_ticks, y_ticks=y_ticks,
        x_label=f"{x_label}{', log scale' if x_axis.log else ''}",
        y_label=f"{y_label}{_in(text)} — {'higher' if higher_is_better else 'lower'} is "
                "better",
        curves=curves, legend=legend,
        note="Bars: 95 % confidence intervals over seeds. Dashed: references and bounds."
        if any(s.role for s in series) else "Bars: 95 % confidence intervals over seeds.",
    )


def _span(low: float, high: float, unit: str) -> str:
    """``low – high`` in one unit, with as many digits as it takes to tell them apart."""
    divisor, text = scale(max(abs(low), abs(high)), unit)
    digits = 4
    while digits < 12 and f"{low / divisor:.{digits}g}" == f"{high / divisor:.{digits}g}":
        digits += 1
    return f"{low / divisor:.{digits}g} – {high / divisor:.{digits}g} {text}".strip()


def _no_trade_off(rows: list[_Placed], cost: Column, noise: float) -> str:
    """The sentence that stands in for a plot whose points' costs are within noise of each
    other, or "": their spread is at most ``noise`` of the largest, or the widest of their
    95 % intervals. A single point is no trade-off either, but it says nothing false."""
    xs = [r.x for r in rows if r.x is not None]
    if len(xs) < 2:
        return ""
    low, high = min(xs), max(xs)
    floor = noise * max(map(abs, xs))
    widest = max((r.x_bar[1] - r.x_bar[0] for r in rows if r.x is not None and r.x_bar),
                 default=0.0)
    if high - low > max(floor, widest):
        return ""
    if high == low:
        return (f"No trade-off to draw: all configurations have the same {cost.label} "
                f"({fmt(low, cost.unit)}).")
    why = f"± {noise * 100:g} %" if floor >= widest else "within one 95 % confidence interval"
    return (f"No trade-off to draw: all configurations within noise on {cost.label} "
            f"({_span(low, high, cost.unit)}, {why}).")


def row_label(row: Row, show_model: bool) -> str:
    params = params_text(row.params)
    label = f"{row.method} ({params})" if params else row.method
    return f"{label} · {row.model}" if show_model else label


def _seeds_interval(agg: Agg) -> tuple[float, float] | None:
    """The 95 % CI of a cell's mean over seeds; None with one seed or no spread at all."""
    half = ci95(agg.sd, agg.n)
    if half is None or not math.isfinite(half) or half <= 0:
        return None
    return agg.mean - half, agg.mean + half


def _mean(agg: Agg | None) -> float | None:
    if agg is None or agg.mean is None or not math.isfinite(agg.mean):
        return None
    return agg.mean


def _placed(row: Row, cost: Column, quality: Column, show_model: bool) -> _Placed | None:
    """What a plot shows of a row: None without the quality, or without the cost unless it
    is a reference or bound (then its line alone)."""
    y_agg, x_agg = row.cells.get(quality.id), row.cells.get(cost.id)
    x, y = _mean(x_agg), _mean(y_agg)
    if y is None or (x is None and row.role is None):
        return None
    x_bar = None
    if x is not None:
        x_bar = (latency_interval(row, cost.id[1]) if cost.id[0] == "latency"
                 else _seeds_interval(x_agg))
    return _Placed(row_label(row, show_model), row.role, x, y, x_bar, _seeds_interval(y_agg))


def pareto_plots(board: Board, columns: list[Column], show_model: bool) -> list[Plot]:
    """Quality vs peak memory and quality vs latency (or a sentence saying why not), then
    the plots the board's scenarios declare, each against one of its cost columns."""
    by_kind = {c.id[0]: c for c in reversed(columns) if not c.quality}
    quality = next((c for c in columns if c.quality), None)
    memory_title, latency_title = "Quality vs peak memory", "Quality vs latency"
    if quality is None:
        reason = "No plot: this table has no quality metric."
        return [Plot(memory_title, reason), Plot(latency_title, reason)]
    noise = {key: c.noise for key, c in board.columns.cost_columns().items()}
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
        rows = [placed for row in board.rows if row.basis == "ok"
                and (placed := _placed(row, cost, quality, show_model)) is not None]
        if not any(r.x is not None for r in rows):
            plots.append(Plot(title, f"No plot: no row with ok runs has both "
                                      f"{quality.label} and {cost.label}."))
            continue
        named = f"{title}: {quality.label} vs {cost.label}"
        skip = _no_trade_off(rows, cost, noise.get(cost.id[0], 0.0))
        if skip:
            plots.append(Plot(named, skip))
            continue
        plot = _pareto(named, rows, cost, quality, label)
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

