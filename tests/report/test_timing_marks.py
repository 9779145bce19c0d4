"""Timing precision on the site: ties marked as ties, intervals as error bars, and each run
page's median interval and host diagnosis."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.report import build_site, run_page
from harness.store import Store


def _metrics(quality: float, median: float, low: float, high: float,
             host: tuple[float, float, float] = (0.3, 2.0, 2.0)) -> list[dict]:
    load, cpus, other = host
    rows = [("eval", "accuracy", quality, "", "value", True),
            ("forward", "latency", median, "ms", "median", None),
            ("forward", "latency", low, "ms", "median_ci_lo", None),
            ("forward", "latency", high, "ms", "median_ci_hi", None),
            ("forward", "latency", 240.0, "count", "n", None),
            ("forward", "latency", 1.0, "count", "outliers", None),
            ("forward", "latency", 0.04, "", "rel_iqr", None),
            ("forward", "throughput", 1000 / median, "item/s", "median", None),
            ("forward", "host_load", load, "", "max", None),
            ("forward", "host_cpus", cpus, "count", "value", None),
            ("forward", "other_cpu_share", other, "%", "value", None)]
    return [{"phase": p, "metric": m, "value": v, "unit": u, "stat": s, "reason": None,
             "higher_is_better": h} for p, m, v, u, s, h in rows]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ties")
    store = Store(root / "store.duckdb")
    suite = store.record_suite("ties", "suites/ties.yaml", "", "name: ties\n")
    env = store.record_environment({"hostname": "box"})
    runs = {
        # The fastest; b's interval overlaps it, c's does not.
        "a": _metrics(0.90, 10.0, 9.5, 10.5),
        "b": _metrics(0.80, 10.3, 9.9, 10.8),
        "c": _metrics(0.70, 14.0, 13.5, 14.5, host=(3.1, 2.0, 48.0)),
    }
    for method, metrics in runs.items():
        run = {"run_key": f"run{method}", "scenario": "toy", "model": "m", "model_config": {},
               "task": "t", "task_params": {}, "method": method, "method_version": "1",
               "method_plugin": "p", "params": {}, "seed": 0, "device": "cpu",
               "hardware": "cpu x2", "config": {}, "harness_version": "0"}
        store.commit_run(suite, run, {"status": "ok", "env_id": env, "started_at": 0.0,
                                      "finished_at": 1.0, "wall_s": 1.0, "metrics": metrics,
                                      "samples": []})
    build_site(root / "store.duckdb", root / "site")
    return root / "site"


def _latency_cells(site: Path) -> dict[str, str]:
    html = (site / "ties" / "t-cpu-x2.html").read_text(encoding="utf-8")
    headers = [h.strip() for h in re.findall(r"<button type=\"button\">([^<]+)", html)]
    column = headers.index("latency")
    cells = {}
    for row in re.findall(r"<tr data-run-keys.*?</tr>", html, re.DOTALL):
        method = re.search(r'<th scope="row" data-sort="([^"]+)"', row)[1]
        cells[method] = re.findall(r"<td.*?</td>", row, re.DOTALL)[column - 1]
    return cells


def test_overlapping_intervals_are_ties_not_ranks(site: Path) -> None:
    cells = _latency_cells(site)
    assert 'class="num best"' in cells["a"] and "★" in cells["a"]
    assert 'class="num tie"' in cells["b"] and "≈" in cells["b"]
    assert 'class="num"' in cells["c"] and "≈" not in cells["c"] and "★" not in cells["c"]
    assert "median CI ±5.0%" in cells["a"]
    html = (site / "ties" / "t-cpu-x2.html").read_text(encoding="utf-8")
    assert "≈ marks a row whose interval overlaps the best row" in html


def test_throughput_ties_follow_latency(site: Path) -> None:
    html = (site / "ties" / "t-cpu-x2.html").read_text(encoding="utf-8")
    headers = [h.strip() for h in re.findall(r"<button type=\"button\">([^<]+)", html)]
    column = headers.index("throughput")
    row = next(r for r in re.findall(r"<tr data-run-keys.*?</tr>", html, re.DOTALL)
               if 'data-sort="b"' in r)
    assert 'class="num tie"' in re.findall(r"<td.*?</td>", row, re.DOTALL)[column - 1]


def test_pareto_latency_plot_draws_the_intervals(site: Path) -> None:
    html = (site / "ties" / "t-cpu-x2.html").read_text(encoding="utf-8")
    latency_plot = html[html.index("Quality vs latency:"):]
    latency_plot = latency_plot[:latency_plot.index("</figure>")]
    assert len(re.findall(r'<path class="err" d="M[\d.]+,[\d.]+H[\d.]+', latency_plot)) == 3
    assert "95 % CI 9.5 ms – 10.5 ms" in latency_plot
    memory_plot = html[html.index("Quality vs peak memory"):]
    assert 'class="err"' not in memory_plot[:memory_plot.index("</figure>")]


def test_run_page_shows_interval_and_host(site: Path) -> None:
    busy = (site / "runs" / run_page("runc")).read_text(encoding="utf-8")
    assert "median 14 ms, 95 % CI 13.5 ms – 14.5 ms (±3.6%), n=240" in busy
    assert "1 outlier (Tukey)" in busy
    assert "host busy (load 3.1 on 2 CPUs, 48 % CPU used by other processes)" in busy
    quiet = (site / "runs" / run_page("runa")).read_text(encoding="utf-8")
    assert "host quiet (load 0.3 on 2 CPUs, 2 % CPU used by other processes)" in quiet


def test_json_download_keeps_no_hidden_columns(site: Path) -> None:
    page = json.loads((site / "ties" / "t-cpu-x2.json").read_text(encoding="utf-8"))
    assert [c["key"] for c in page["columns"]] == ["accuracy", "latency", "throughput"]
