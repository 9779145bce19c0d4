"""Pareto plots: exact tick labels, error bars, no plot for costs within noise, log scale
past two decades, and references and bounds drawn apart from the contenders."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from harness.columns import CORE_COSTS, CostColumn, ResultColumns
from harness.report.plots import FRAME, Plot, Series, curves_plot, pareto_plots, samples_plot
from harness.report.query import Agg, Board, Column, Row
from harness.report.render import templates

MiB = 2**20
QUALITY = Column(("quality", "eval", "bits_per_byte", "value"), "bits_per_byte",
                 "bits per byte", "bits/byte", False, True)
RAM = Column(("host_ram", "", "", ""), "host_ram", "peak host RAM", "bytes", False, False)
LATENCY = Column(("latency", "eval", "", ""), "latency", "latency", "ms", False, False)


def _row(method: str, quality: float, *, ram: float | None = None,
         latency: float | None = None, interval: tuple[float, float] | None = None,
         role: str | None = None, n: int = 1, sd: float | None = None) -> Row:
    """An ok row of ``n`` seeds; ``sd`` is the spread over seeds of every cell it has."""
    cells = {QUALITY.id: Agg(quality, sd, n, "bits/byte", None)}
    if ram is not None:
        cells[RAM.id] = Agg(ram, sd and sd * MiB, n, "bytes", None)
    if latency is not None:
        cells[LATENCY.id] = Agg(latency, sd, n, "ms", None)
    if interval is not None:
        cells[("latency_ci_lo", "eval", "", "")] = Agg(interval[0], None, n, "ms", None)
        cells[("latency_ci_hi", "eval", "", "")] = Agg(interval[1], None, n, "ms", None)
    return Row("m", method, "1", "{}", "ok", [f"key-{method}"] * n, list(range(n)),
               ["ok"] * n, [""] * n, role=role, cells=cells)


def _plots(rows: list[Row], columns: list[Column]) -> dict[str, Plot]:
    """The board's plots by the title's first part ("Quality vs peak memory", …)."""
    board = Board("suite", "task", "cpu", rows=rows)
    return {p.title.split(":")[0]: p for p in pareto_plots(board, columns, False)}


def _render(plot: Plot) -> str:
    """The plot's figure as a leaderboard page writes it."""
    return templates().from_string(
        '{% from "macros.html" import plot %}{{ plot(p) }}').render(p=plot)


def _svg(plot: Plot) -> tuple[str, ET.Element]:
    """The plot's figure, and its SVG parsed (so well-formed)."""
    html = _render(plot)
    svg = html[html.index("<svg"):html.index("</svg>") + 6]
    return html, ET.fromstring(svg)


def _labels(ticks: list[tuple[float, str]]) -> list[str]:
    return [label for _, label in ticks]


def test_close_quality_values_get_distinct_tick_labels() -> None:
    plot = _plots([_row("a", 2.5815, ram=100 * MiB), _row("b", 2.5820, ram=200 * MiB)],
                  [QUALITY, RAM])["Quality vs peak memory"]
    assert not plot.skip  # a quality axis is never judged within noise
    assert _labels(plot.y_ticks) == ["2.5816", "2.5818", "2.5820"]
    assert _labels(plot.x_ticks) == ["100", "125", "150", "175", "200"]
    html, svg = _svg(plot)
    assert ">2.5816</text><text" in html
    assert len(svg.findall(".//{*}circle")) == 2


def test_tick_labels_keep_the_steps_decimals_and_no_more() -> None:
    plot = _plots([_row("a", 2.0, ram=500 * MiB), _row("b", 2.1, ram=515 * MiB)],
                  [QUALITY, RAM])["Quality vs peak memory"]
    assert _labels(plot.y_ticks) == ["2.000", "2.025", "2.050", "2.075", "2.100"]
    assert _labels(plot.x_ticks) == ["500", "505", "510", "515"]
    samples = samples_plot("forward", "latency", "ms", [2.5815, 2.5820, 2.5817] * 5)
    assert _labels(samples.y_ticks) == ["2.5816", "2.5818", "2.5820"]
    assert _labels(samples_plot("forward", "latency", "ms", [1.0] * 12345).x_ticks) == [
        "1", "12345"]


def test_host_ram_within_two_percent_is_no_trade_off() -> None:
    plot = _plots([_row("a", 2.0, ram=497.6 * MiB), _row("b", 2.1, ram=501.4 * MiB)],
                  [QUALITY, RAM])["Quality vs peak memory"]
    assert plot.title == "Quality vs peak memory: bits per byte vs peak host RAM"
    assert plot.skip == ("No trade-off to draw: all configurations within noise on peak host "
                         "RAM (497.6 – 501.4 MiB, ± 2 %).")
    assert not plot.points
    html = _render(plot)
    assert "<svg" not in html and '<p class="skip">No trade-off to draw: ' in html


def test_host_ram_three_percent_apart_is_plotted() -> None:
    plot = _plots([_row("a", 2.0, ram=500 * MiB), _row("b", 1.9, ram=515 * MiB)],
                  [QUALITY, RAM])["Quality vs peak memory"]
    assert plot.skip == ""
    assert [(p.label, p.frontier) for p in plot.points] == [("a", True), ("b", True)]


def test_costs_within_their_intervals_are_no_trade_off() -> None:
    within = _plots([_row("a", 2.0, latency=10.0, interval=(9.5, 10.5)),
                     _row("b", 1.9, latency=10.3, interval=(9.9, 10.8))],
                    [QUALITY, LATENCY])["Quality vs latency"]
    assert within.skip == ("No trade-off to draw: all configurations within noise on latency "
                           "(10 – 10.3 ms, within one 95 % confidence interval).")
    apart = _plots([_row("a", 2.0, latency=10.0, interval=(9.5, 10.5)),
                    _row("b", 1.9, latency=14.0, interval=(13.5, 14.5))],
                   [QUALITY, LATENCY])["Quality vs latency"]
    assert apart.skip == ""
    # No noise floor and no intervals: equal values are still no trade-off.
    same = _plots([_row("a", 2.0, latency=10.0), _row("b", 1.9, latency=10.0)],
                  [QUALITY, LATENCY])["Quality vs latency"]
    assert same.skip == ("No trade-off to draw: all configurations have the same latency "
                         "(10 ms).")


def test_a_single_row_is_still_plotted() -> None:
    plot = _plots([_row("a", 2.0, ram=500 * MiB)], [QUALITY, RAM])["Quality vs peak memory"]
    assert plot.skip == "" and [p.frontier for p in plot.points] == [True]


def test_error_bars_with_several_seeds_only() -> None:
    seeds = _plots([_row("a", 2.0, ram=100 * MiB, n=3, sd=0.1),
                    _row("b", 1.5, ram=300 * MiB, n=3, sd=0.1)],
                   [QUALITY, RAM])["Quality vs peak memory"]
    a = next(p for p in seeds.points if p.label == "a")
    # One path: the cost's bar across the point, then the quality's bar up through it,
    # each with end caps.
    assert a.err == ("M113.5,100.3H114.7M113.5,97.3v6M114.7,97.3v6"
                     "M114.1,162.6V38.0M111.1,162.6h6M111.1,38.0h6")
    # t(0.975, 2) · 0.1 / √3 = 0.2484: 2 ± 0.2484, and 100 ± 0.2484 MiB.
    assert a.title == ("a: 2 bits/byte (95 % CI 1.752 bits/byte – 2.248 bits/byte), "
                       "100 MiB (95 % CI 99.75 MiB – 100.2 MiB)")
    assert seeds.note == "Bars: 95 % confidence intervals (seeds)."
    _, svg = _svg(seeds)
    assert len(svg.findall(".//{*}path[@class='err']")) == 2

    single = _plots([_row("a", 2.0, ram=100 * MiB), _row("b", 1.5, ram=300 * MiB)],
                    [QUALITY, RAM])["Quality vs peak memory"]
    assert all(p.err == "" for p in single.points)
    assert single.note == ""
    assert 'class="err"' not in _svg(single)[0]
    assert single.points[0].title == "a: 2 bits/byte, 100 MiB"


def test_latency_bars_are_the_medians_interval() -> None:
    plot = _plots([_row("a", 2.0, latency=10.0, interval=(9.0, 11.0), n=3, sd=0.1),
                   _row("b", 1.5, latency=30.0, interval=(29.0, 31.0), n=3, sd=0.1)],
                  [QUALITY, LATENCY])["Quality vs latency"]
    a = next(p for p in plot.points if p.label == "a")
    assert "(95 % CI 9 ms – 11 ms)" in a.title  # the median's interval, not the seeds' CI
    assert plot.note == ("Bars: 95 % confidence intervals (seeds; latency: the median's "
                         "interval).")


def test_references_and_bounds_are_lines_never_on_the_frontier() -> None:
    rows = [
        _row("cheap", 2.0, ram=100 * MiB),
        _row("big", 1.5, ram=300 * MiB),
        # Cheaper and better than every contender: it would be the whole frontier.
        _row("joint", 1.0, ram=50 * MiB, role="upper-bound"),
        # No memory figure: only its line, and the y axis must reach it.
        _row("paper <b>", 0.2, role="reference"),
    ]
    plot = _plots(rows, [QUALITY, RAM])["Quality vs peak memory"]
    by_name = {p.title.split(":")[0]: p for p in plot.points}
    assert sorted(by_name) == ["big", "cheap", "joint (upper bound)"]
    joint = by_name["joint (upper bound)"]
    assert not joint.frontier and joint.marker and joint.label == ""
    assert by_name["cheap"].frontier and by_name["big"].frontier
    cheap, big = by_name["cheap"], by_name["big"]
    assert plot.step == f"M{cheap.x},{cheap.y}H{big.x}V{big.y}H{FRAME.right}"
    assert [line.label for line in plot.lines] == ["joint (upper bound)",
                                                   "paper <b> (reference)"]
    assert plot.lines[0].d == f"M{FRAME.left},{joint.y}H{FRAME.right}"
    # The lowest value on the y axis, 20 px above the frame's bottom like any other.
    assert plot.lines[1].d == f"M{FRAME.left},288.0H{FRAME.right}"
    assert "Dashed lines" in plot.note and "never on the frontier" in plot.note
    html, svg = _svg(plot)
    assert len(svg.findall(".//{*}path[@class='refline']")) == 2
    assert '<path class="pt ref" d="' in html
    assert ">joint (upper bound)</text>" in html
    assert "paper &lt;b&gt; (reference)" in html and "paper <b>" not in html
    labels = svg.findall(".//{*}text[@class='reflabel']")
    assert all(float(t.get("x")) < FRAME.right and t.get("text-anchor") == "end"
               for t in labels)


def test_only_references_draw_no_step_line() -> None:
    plot = _plots([_row("joint", 1.0, ram=50 * MiB, role="upper-bound"),
                   _row("solo", 2.0, ram=300 * MiB, role="lower-bound")],
                  [QUALITY, RAM])["Quality vs peak memory"]
    assert plot.step == "" and not any(p.frontier for p in plot.points)
    assert [line.label for line in plot.lines] == ["joint (upper bound)", "solo (lower bound)"]
    assert 'class="step"' not in _svg(plot)[0]


def test_log_scale_past_two_decades_only() -> None:
    wide = _plots([_row("a", 2.0, latency=1.0), _row("b", 1.5, latency=150.0)],
                  [QUALITY, LATENCY])["Quality vs latency"]
    assert wide.x_label == "median latency in ms, log scale — lower is better"
    assert _labels(wide.x_ticks) == ["1", "10", "100"]
    for top in (50.0, 100.0):
        narrow = _plots([_row("a", 2.0, latency=1.0), _row("b", 1.5, latency=top)],
                        [QUALITY, LATENCY])["Quality vs latency"]
        assert narrow.x_label == "median latency in ms — lower is better", top


def test_cost_noise_round_trips_and_older_json_loads() -> None:
    columns = ResultColumns(costs=(CostColumn("rss", "RSS", "rss", "bytes", noise=0.05),))
    assert ResultColumns.from_json(columns.to_json()) == columns
    older = json.loads(columns.to_json())
    del older["costs"][0]["noise"]
    assert ResultColumns.from_json(json.dumps(older)).costs[0].noise == 0.0
    assert {c.key: c.noise for c in CORE_COSTS}["host_ram"] == 0.02


def test_a_view_s_rows_are_lines_against_its_columns() -> None:
    """One line per row through its cells in column order, ticks at the columns' values,
    bars where a cell has an interval, a bound dashed, every row named in the legend."""
    series = [Series("joint", "upper-bound", [(20, 95.0, None), (50, 95.0, None)]),
              Series("er", None, [(50, 81.0, 2.5), (20, 71.0, 2.5)]),
              Series("taer (lr=1)", None, [(20, 76.0, None)])]
    plot = curves_plot("Accuracy by buffer", "buffer", "accuracy", "%", True, series)
    assert plot is not None and _labels(plot.x_ticks) == ["20", "50"]
    assert plot.y_label == "accuracy in % — higher is better"
    joint, er, taer = plot.curves
    assert joint.css == "s0 ref" and er.css == "s1" and not joint.err and er.err
    xs = [x for x, _, _ in er.points]
    assert xs == sorted(xs) and er.d.count("L") == 1 and len(taer.points) == 1
    assert er.points[1][2] == "er, buffer 50: 81 % (95 % CI 78.5 % – 83.5 %)"
    assert plot.legend == [("s0 ref", "joint (upper bound)"), ("s1", "er"),
                           ("s2", "taer (lr=1)")]
    html, svg = _svg(plot)
    assert len(svg.findall(".//{*}g[@class='curve s1']/{*}circle")) == 2
    assert html.count("<li>") == 3 and "Dashed: references and bounds." in html


def test_a_view_with_one_column_or_single_points_has_no_line_plot() -> None:
    one_column = [Series("er", None, [(20, 71.0, None)]), Series("x", None, [(20, 1.0, None)])]
    assert curves_plot("t", "buffer", "accuracy", "", True, one_column) is None
    single = [Series("er", None, [(20, 71.0, None)]), Series("x", None, [(50, 1.0, None)])]
    assert curves_plot("t", "buffer", "accuracy", "", True, single) is None

