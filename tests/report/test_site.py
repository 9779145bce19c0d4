"""The leaderboard site, built from a fixture store written through the real Store API."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import sys
import threading
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_fixtures import (
    ALPHA,
    BETA,
    CPU,
    DENSE_CPU_PPL,
    GPU,
    HTML_ERROR,
    XSS,
    build_fixture_store,
)

from harness import report
from harness.api import STATUSES, TIMING_ONLY_INVALID
from harness.cli import main
from harness.layout import Layout, View
from harness.report.plots import pareto_frontier
from harness.scenarios.generate import GenerateScenario
from harness.store import Store

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
LEADERBOARD_PATH = re.compile(r"[a-z0-9-]+/[a-z0-9-]+\.html")


class Page(HTMLParser):
    """Parses a page strictly: every non-void tag closed in order; collects links and tables."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.links: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self.tables: list[dict] = []
        self._cell: dict | None = None
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def _attrs(self, tag: str, attrs: list[tuple[str, str | None]]) -> dict[str, str | None]:
        found = dict(attrs)
        self.links += [found[a] or "" for a in ("href", "src") if a in found]
        if tag == "script":
            self.scripts.append(found)
        return found

    def handle_startendtag(self, tag, attrs):
        self._attrs(tag, attrs)

    def handle_starttag(self, tag, attrs):
        found = self._attrs(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table" and "leaderboard" in (found.get("class") or "").split():
            self.tables.append({"headers": [], "rows": []})
        table = self.tables[-1] if self.tables and "table" in self.stack else None
        if table is None:
            return
        if tag == "tr" and "tbody" in self.stack:
            table["rows"].append({"attrs": found, "cells": []})
        elif tag in ("th", "td"):
            self._cell = {"tag": tag, "attrs": found, "text": "", "button": False}
            if "thead" in self.stack:
                table["headers"].append(self._cell)
            else:
                table["rows"][-1]["cells"].append(self._cell)
        elif tag == "button" and self._cell is not None:
            self._cell["button"] = True

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("th", "td"):
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("report") / "fixture.duckdb"
    return path, build_fixture_store(path)


@pytest.fixture(scope="module")
def site(fixture_db, tmp_path_factory) -> tuple[Path, report.SiteSummary]:
    out = tmp_path_factory.mktemp("site") / "site"
    return out, report.build_site(fixture_db[0], out, title="fixture <board>", workers=1)


def pages(out: Path) -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in sorted(out.rglob("*.html"))}


def board_page(out: Path, suite: str, hardware: str, task: str = "stdlib-text") -> Path:
    return out / report.slugify(suite) / f"{task}-{report.slugify(hardware)}.html"


def table(path: Path) -> dict:
    (found,) = Page(path.read_text(encoding="utf-8")).tables
    return found


def column(found: dict, label: str) -> int:
    return next(i for i, h in enumerate(found["headers"]) if h["text"].startswith(label))


def row_of(found: dict, method: str) -> dict:
    return next(r for r in found["rows"] if r["cells"][0]["attrs"]["data-sort"] == method)


def download(path: Path, ext: str):
    target = path.with_suffix(ext)
    if ext == ".json":
        return json.loads(target.read_text(encoding="utf-8"))
    with open(target, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# -- structure ------------------------------------------------------------------------------


def test_site_layout_and_summary(site, fixture_db):
    out, summary = site
    runs = sum(len(v) for v in fixture_db[1]["groups"].values())
    assert summary.runs == summary.run_pages == runs
    assert summary.leaderboards == 3  # alpha × {cpu, gpu}, beta × cpu
    assert summary.pages == runs + 3 + 1
    assert summary.index_bytes == (out / "index.html").stat().st_size
    assert (out / "static" / "site.css").is_file() and (out / "static" / "site.js").is_file()
    for key in fixture_db[1]["keys"].values():
        assert (out / "runs" / f"{key}.html").is_file()
    boards = [p.relative_to(out).as_posix() for p in out.glob("*/*.html")
              if p.parent.name != "runs"]
    assert sorted(boards) == sorted([
        f"alpha/stdlib-text-{report.slugify(CPU)}.html",
        f"alpha/stdlib-text-{report.slugify(GPU)}.html",
        f"beta-gamma/digits-{report.slugify(CPU)}.html",
    ])
    assert all(LEADERBOARD_PATH.fullmatch(b) for b in boards)


def test_every_page_parses(site):
    out, _ = site
    for path, text in pages(out).items():
        page = Page(text)
        assert page.errors == [], path
        assert text.startswith("<!doctype html>")
        assert '<meta name="viewport"' in text
        assert any(link.endswith("static/site.css") for link in page.links), path


def test_leaderboard_dom_contract(site):
    out, _ = site
    for path in out.glob("*/*.html"):
        if path.parent.name == "runs":
            continue
        found = table(path)
        headers = found["headers"]
        assert [h["attrs"]["data-col"] for h in headers] == [str(i) for i in range(len(headers))]
        assert all(h["attrs"]["aria-sort"] == "none" and h["button"] for h in headers)
        assert all(h["attrs"]["data-first"] in ("asc", "desc") for h in headers)
        assert found["rows"]
        for row in found["rows"]:
            assert row["attrs"]["data-run-keys"]
            assert len(row["cells"]) == len(headers)
            assert all("data-sort" in c["attrs"] for c in row["cells"])


def test_links_are_relative_and_resolve(site):
    out, _ = site
    for path, text in pages(out).items():
        for link in Page(text).links:
            if link.startswith("data:"):
                continue
            assert not re.match(r"^[a-z][a-z0-9+.-]*:|^/", link), (path, link)
            target = (path.parent / link.split("#")[0].split("?")[0]).resolve()
            assert target.is_file(), (path, link)
            assert out.resolve() in target.parents
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "http://" not in text and "https://" not in text, path
            assert "//cdn" not in text and "@import" not in text and "url(" not in text
    script = (out / "static" / "site.js").read_text()
    assert not any(call in script for call in ("fetch(", "XMLHttpRequest", "import(", "src="))


def test_user_strings_are_escaped(site):
    out, _ = site
    escaped_xss = "&lt;script&gt;alert(1)&lt;/script&gt;"
    escaped_error = "bad &lt;b&gt;input&lt;/b&gt; &amp; &#34;quotes&#34; &lt;img src=x"
    seen_xss = seen_error = 0
    for path, text in pages(out).items():
        assert XSS not in text and "<b>" not in text and "<img" not in text, path
        assert "<gamma>" not in text and "<em>" not in text, path
        page = Page(text)
        assert all(s.get("src", "").endswith("static/site.js") for s in page.scripts), path
        seen_xss += escaped_xss in text
        seen_error += escaped_error in text
    assert seen_xss >= 4  # two leaderboards, two run pages
    assert seen_error >= 2  # the CPU leaderboard and the failed run's page
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "fixture &lt;board&gt;" in index and "beta &amp; &lt;gamma&gt;" in index


# -- ranking --------------------------------------------------------------------------------


def test_hardware_groups_are_ranked_apart(site, fixture_db):
    out, info = site[0], fixture_db[1]
    for hardware in (CPU, GPU):
        path = board_page(out, ALPHA, hardware)
        text = path.read_text(encoding="utf-8")
        assert f"hardware: {hardware}" in text  # in the table caption
        keys = {k for row in table(path)["rows"] for k in row["attrs"]["data-run-keys"].split()}
        assert keys and keys <= set(info["groups"][hardware])
    gpu = table(board_page(out, ALPHA, GPU))
    latency = column(gpu, "latency")
    best = [r for r in gpu["rows"] if "best" in r["cells"][latency]["attrs"]["class"]]
    assert [r["cells"][0]["attrs"]["data-sort"] for r in best] == [XSS]
    assert float(best[0]["cells"][latency]["attrs"]["data-sort"]) == 1.0  # not the CPU's 0.1


def test_best_marks_only_ok_rows_in_the_right_direction(site):
    out, _ = site
    cpu = table(board_page(out, ALPHA, CPU))
    ppl, latency = column(cpu, "perplexity"), column(cpu, "latency")
    throughput = column(cpu, "throughput")

    def best(col: int) -> list[str]:
        return [f"{r['cells'][0]['attrs']['data-sort']}|{r['cells'][1]['attrs']['data-sort']}"
                for r in cpu["rows"] if "best" in r["cells"][col]["attrs"].get("class", "")]

    # slowpoke (invalid only) has the lowest perplexity, 5.0, but is never ranked
    assert best(ppl) == ["dense|builtin:tiny-b"]
    assert best(latency) == [f"{XSS}|builtin:tiny-a"]
    assert best(throughput) == [f"{XSS}|builtin:tiny-a"]  # higher is better
    # slowpoke ties the best host RAM, but its seeds are invalid: it is not marked
    assert "slowpoke|builtin:tiny-a" not in best(column(cpu, "peak host RAM"))
    assert len(best(column(cpu, "peak host RAM"))) == 3
    slowpoke = row_of(cpu, "slowpoke")
    assert "basis-invalid" in slowpoke["attrs"]["class"]
    assert float(slowpoke["cells"][ppl]["attrs"]["data-sort"]) == pytest.approx(5.25)
    # rows start pre-sorted: ok rows by perplexity (lower first), then invalid, then none
    order = [r["cells"][0]["attrs"]["data-sort"] for r in cpu["rows"]]
    assert order == ["dense", "dense", "rtn", XSS, "slowpoke", "crashy", "offload"]
    assert cpu["headers"][ppl]["attrs"]["data-first"] == "asc"
    assert cpu["headers"][throughput]["attrs"]["data-first"] == "desc"
    beta = table(board_page(out, BETA, CPU, "digits"))
    accuracy = column(beta, "accuracy")
    assert beta["headers"][accuracy]["attrs"]["data-first"] == "desc"
    winners = [r for r in beta["rows"] if "best" in r["cells"][accuracy]["attrs"]["class"]]
    assert [r["cells"][0]["attrs"]["data-sort"] for r in winners] == ["full"]


def test_rows_without_ok_seeds_stay_visible_with_reasons(site):
    out, _ = site
    cpu = table(board_page(out, ALPHA, CPU))
    crashy = row_of(cpu, "crashy")
    assert "basis-none" in crashy["attrs"]["class"]
    status = crashy["cells"][column(cpu, "runs")]["text"]
    assert "crashed" in status and "timeout" in status
    assert "signal 11 (SIGSEGV)" in status and "timed out after 600 s" in status
    assert all(c["text"] == "—" for c in crashy["cells"][column(cpu, "perplexity"):])
    text = board_page(out, ALPHA, CPU).read_text(encoding="utf-8")
    assert "1 failed" in text and "forward: cv 0.9 &gt; max_cv 0.5" in text
    gpu_text = board_page(out, ALPHA, GPU).read_text(encoding="utf-8")
    assert "1 oom" in gpu_text and "CUDA out of memory" in gpu_text
    assert "1 unsupported" in text and "offloading the KV cache needs a CUDA device" in text
    seen = set()
    for path in out.glob("*/*.html"):
        seen |= set(re.findall(r'class="badge st-([a-z]+)"', path.read_text(encoding="utf-8")))
    assert seen >= set(STATUSES)


# -- statistics -----------------------------------------------------------------------------


def test_mean_and_t_confidence_interval_by_hand(site):
    out, _ = site
    n = len(DENSE_CPU_PPL)
    mean = sum(DENSE_CPU_PPL) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in DENSE_CPU_PPL) / (n - 1))
    half = 4.3027 * sd / math.sqrt(n)  # t(0.975, df=2)
    assert (mean, round(half, 3)) == (pytest.approx(11.3333, abs=1e-4), 3.795)
    path = board_page(out, ALPHA, CPU)
    data = download(path, ".json")
    (dense,) = [r for r in data["rows"]
                if r["method"] == "dense" and r["model"] == "builtin:tiny-a"]
    assert dense["values"]["perplexity"]["mean"] == pytest.approx(mean)
    assert dense["values"]["perplexity"]["ci95"] == pytest.approx(half, rel=1e-4)
    assert dense["values"]["perplexity"]["n"] == 3
    cpu = table(path)
    dense_row = next(r for r in cpu["rows"] if r["attrs"]["data-run-keys"].count(" ") == 2
                     and r["cells"][0]["attrs"]["data-sort"] == "dense")
    cell = dense_row["cells"][column(cpu, "perp")]
    assert cell["text"].split() == ["11.33", "±", "3.8"]
    # n=1 shows no interval
    (model_b,) = [r for r in data["rows"] if r["model"] == "builtin:tiny-b"]
    assert model_b["values"]["perplexity"]["ci95"] is None
    assert "±" not in row_of(cpu, XSS)["cells"][column(cpu, "perp")]["text"]


def test_t_quantiles():
    assert report.t975(1) == pytest.approx(12.706, abs=1e-3)
    assert report.t975(2) == pytest.approx(4.303, abs=1e-3)
    assert report.t975(31) == pytest.approx(2.0395, abs=1e-3)
    assert report.t975(100) == pytest.approx(1.9840, abs=1e-3)
    assert report.t975(10_000) == pytest.approx(1.9602, abs=1e-3)
    assert report.ci95(None, 1) is None and report.ci95(1.0, 1) is None


@pytest.mark.parametrize(("value", "unit", "text"), [
    (None, "ms", "—"),
    (43.776474, "ms", "43.78 ms"),
    (2500.0, "ms", "2.5 s"),
    (0.0123, "s", "12.3 ms"),
    (512 * 2**20, "bytes", "512 MiB"),
    (434442240.0, "bytes", "414.3 MiB"),
    (3 * 2**30, "bytes", "3 GiB"),
    (900.0, "bytes", "900 B"),
    (492928.0, "count", "492.9 K"),
    (1.5e9, "count", "1.5 B"),
    (12.0, "count", "12"),
    (23391.5595, "token/s", "23.39 k token/s"),
    (5.990930115679079, "", "5.991"),
])
def test_numbers_have_units_and_four_significant_figures(value, unit, text):
    assert report.fmt(value, unit) == text


def test_file_names_are_lowercase_ascii():
    assert report.slugify("gpu: NVIDIA H100 80GB HBM3") == "gpu-nvidia-h100-80gb-hbm3"
    assert report.slugify("Beta & <Gamma> Ünïcode") == "beta-gamma-unicode"
    assert re.fullmatch(r"x-[0-9a-f]{6}", report.slugify("<>"))
    assert report.run_page("4eda95233ff3d9fe") == "4eda95233ff3d9fe.html"
    assert re.fullmatch(r"run-[0-9a-f]{16}\.html", report.run_page("../Up/<x>"))


# -- downloads ------------------------------------------------------------------------------


def test_csv_and_json_downloads(site, fixture_db):
    out, info = site[0], fixture_db[1]
    path = board_page(out, ALPHA, CPU)
    rows = download(path, ".csv")
    data = download(path, ".json")
    page = table(path)
    assert len(rows) == len(data["rows"]) == len(page["rows"]) == 7
    assert [r["method"] for r in rows] == [r["method"] for r in data["rows"]]
    assert {r["hardware"] for r in rows} == {CPU} and data["hardware"] == CPU
    xss = next(r for r in rows if r["method"] == XSS)  # data files keep the raw text
    assert json.loads(xss["params"]) == {"note": "<b>bold</b>"}
    assert float(xss["latency_mean"]) == 0.1 and xss["latency_unit"] == "ms"
    rtn = next(r for r in rows if r["method"] == "rtn")
    assert (rtn["ok"], rtn["failed"]) == ("2", "1")
    assert float(rtn["perplexity_mean"]) == pytest.approx(12.25)
    crashy = next(r for r in data["rows"] if r["method"] == "crashy")
    assert crashy["values"]["perplexity"]["mean"] is None
    assert {r["status"] for r in crashy["runs"]} == {"crashed", "timeout"}
    offload = next(r for r in rows if r["method"] == "offload")
    assert (offload["unsupported"], offload["failed"]) == ("1", "0")
    keys = {k for r in rows for k in r["run_keys"].split()}
    assert keys == {k for label, k in info["keys"].items() if label.startswith("alpha/cpu/")}
    assert "vram" not in {c["key"] for c in data["columns"]}  # no VRAM on CPU: listed below
    assert "peak VRAM" in path.read_text(encoding="utf-8").split("Not measured here")[1]


# -- plots and run pages --------------------------------------------------------------------


def test_pareto_plots(site):
    out, _ = site
    cpu = board_page(out, ALPHA, CPU).read_text(encoding="utf-8")
    gpu = board_page(out, ALPHA, GPU).read_text(encoding="utf-8")
    beta = board_page(out, BETA, CPU, "digits").read_text(encoding="utf-8")
    # Memory and latency; every fixture run stores the same bytes: no storage trade-off.
    assert cpu.count("<svg") == gpu.count("<svg") == 2
    assert "peak host RAM (no VRAM measured here)" in cpu and "peak VRAM" in gpu
    assert "No trade-off to draw: all configurations have the same storage (495.5 KiB)." in cpu
    assert 'class="step"' in cpu and 'class="pt front"' in cpu
    # Beta's runs all peak at the same host RAM and store the same bytes: no plot at all.
    assert beta.count("<svg") == 0 and "No plot: no run here recorded latency." in beta
    assert "all configurations have the same peak host RAM (400 MiB)." in beta
    assert pareto_frontier([(1, 5), (2, 4), (3, 6), (4, 3), (5, 3)], False) == [0, 1, 3]
    assert pareto_frontier([(1, 0.5), (2, 0.9), (3, 0.8)], True) == [0, 1]


def test_run_pages(site, fixture_db):
    out, info = site[0], fixture_db[1]
    keys = info["keys"]
    failed = (out / "runs" / f"{keys['alpha/cpu/a/rtn/bits=4/2']}.html").read_text()
    assert "Traceback (most recent call last)" in failed
    assert "&lt;module&gt;" in failed and HTML_ERROR not in failed
    ok = (out / "runs" / f"{keys['alpha/cpu/a/dense/-/0']}.html").read_text()
    assert "device is cpu: no CUDA allocator" in ok  # null metrics with their reason
    assert 'class="dots"' in ok and "12 samples" in ok
    assert "&#34;seed&#34;: 0" in ok and "seq_len=128" in ok  # config, task params
    assert "AMD EPYC" in ok and "2.13.0+cpu" in ok  # the environment
    assert "hardware group <strong>cpu: AMD EPYC x2</strong>" in ok
    assert f'href="../alpha/stdlib-text-{report.slugify(CPU)}.html"' in ok
    gpu = (out / "runs" / f"{keys['alpha/gpu/a/dense/-/0']}.html").read_text()
    assert "1 GiB" in gpu and "NVIDIA H100 80GB HBM3" in gpu


# -- options --------------------------------------------------------------------------------


def test_suite_filter_and_unknown_suite(fixture_db, tmp_path):
    summary = report.build_site(fixture_db[0], tmp_path / "only", suites=[BETA])
    assert summary.leaderboards == 1
    assert not (tmp_path / "only" / "alpha").exists()
    assert "alpha" not in (tmp_path / "only" / "index.html").read_text()
    with pytest.raises(report.ReportError, match="no suite named 'nope'"):
        report.build_site(fixture_db[0], tmp_path / "x", suites=["nope"])


def test_rebuild_only_empties_a_site_folder(fixture_db, tmp_path):
    out = tmp_path / "site"
    report.build_site(fixture_db[0], out)
    (out / "stale.html").write_text("old")
    report.build_site(fixture_db[0], out)
    assert not (out / "stale.html").exists()
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(report.ReportError, match="not written by harness report"):
        report.build_site(fixture_db[0], precious)
    assert (precious / "notes.txt").read_text() == "mine"


def test_worker_processes_write_the_same_pages(fixture_db, site, tmp_path):
    out, _ = site
    parallel = tmp_path / "parallel"
    report.build_site(fixture_db[0], parallel, title="fixture <board>", workers=2)
    for path in (out / "runs").iterdir():
        assert (parallel / "runs" / path.name).read_bytes() == path.read_bytes()


def test_empty_store(tmp_path):
    from harness.store import Store

    Store(tmp_path / "empty.duckdb")
    summary = report.build_site(tmp_path / "empty.duckdb", tmp_path / "site")
    assert (summary.leaderboards, summary.run_pages) == (0, 0)
    assert "No runs in this store yet" in (tmp_path / "site" / "index.html").read_text()


def test_cli_report(fixture_db, tmp_path, capsys):
    out = tmp_path / "cli-site"
    code = main(["report", str(fixture_db[0]), "--out", str(out), "--title", "T <x>",
                 "--suite", ALPHA])
    assert code == 0
    assert "T &lt;x&gt;" in (out / "index.html").read_text()
    assert not (out / report.slugify(BETA)).exists()
    assert main(["report", str(tmp_path / "missing.duckdb"), "--out", str(out)]) == 1


def test_cli_report_defaults_and_serve(fixture_db, tmp_path, monkeypatch):
    served = []
    monkeypatch.setattr(report, "serve", lambda out, port: served.append((Path(out), port)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "harness.duckdb").write_bytes(fixture_db[0].read_bytes())
    assert main(["report", "--serve", "--port", "8123"]) == 0  # DB defaults to harness.duckdb
    assert (tmp_path / "site" / "index.html").is_file()  # --out defaults to site/
    assert served == [(Path("site"), 8123)]


def test_preview_server_binds_to_loopback(site):
    out, _ = site
    server = report.make_server(out, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=5) as r:
            assert r.status == 200 and b"fixture &lt;board&gt;" in r.read()
    finally:
        server.shutdown()
        server.server_close()


def test_each_setting_of_a_task_gets_its_own_leaderboard(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    store.record_columns("generate", GenerateScenario.columns.to_json())
    suite = store.record_suite("lengths", "suites/lengths.yaml", "", "name: lengths\n")
    env = store.record_environment({"hardware": "cpu x2"})
    for i, (context_len, method, exact) in enumerate(
        [(256, "full", 1.0), (256, "kivi", 0.5), (1024, "full", 0.9)]
    ):
        run = {"run_key": f"k{i}", "scenario": "generate", "model": "builtin:m",
               "model_config": {}, "task": "needle",
               "task_params": {"context_len": context_len, "per_bin": 5}, "method": method,
               "method_version": "1", "method_plugin": "p", "params": {}, "seed": 0,
               "device": "cpu", "hardware": "cpu x2", "config": {}, "harness_version": "0"}
        metrics = [{"phase": "eval", "metric": "exact_match", "value": exact, "unit": "",
                    "stat": "value", "reason": None, "higher_is_better": True},
                   {"phase": "kv", "metric": "resident_bytes", "value": 1000.0 * exact,
                    "unit": "bytes", "stat": "value", "reason": None, "higher_is_better": None}]
        store.commit_run(suite, run, {"status": "ok", "error": None, "traceback": None,
                                      "env_id": env, "started_at": 0.0, "finished_at": 1.0,
                                      "wall_s": 1.0, "metrics": metrics, "samples": []})
    summary = report.build_site(tmp_path / "db.duckdb", tmp_path / "site")
    assert summary.leaderboards == 2
    pages = sorted(p.name for p in (tmp_path / "site" / "lengths").glob("*.html"))
    assert pages == ["needle-context-len-1024-cpu-x2.html", "needle-context-len-256-cpu-x2.html"]
    short = (tmp_path / "site" / "lengths" / pages[1]).read_text()
    assert "needle (context_len=256)" in short and "kivi" in short
    assert "kivi" not in (tmp_path / "site" / "lengths" / pages[0]).read_text()
    # KV-cache boards get a KV resident column and a quality-vs-KV-bytes plot.
    assert "KV resident" in short and "Quality vs KV resident" in short


def test_cell_figures_do_not_depend_on_the_order_seeds_were_stored(tmp_path):
    """A mean is exactly rounded: seeds stored in any order give the same page, digit for
    digit (0.1 + 0.2 + 0.3 and 0.3 + 0.2 + 0.1 differ in their last bit)."""
    values = [0.1, 0.2, 0.3]
    pages = []
    for order in (values, values[::-1]):
        path = tmp_path / f"db{len(pages)}.duckdb"
        store = Store(path)
        suite = store.record_suite("order", "suites/order.yaml", "", "name: order\n")
        env = store.record_environment({"hardware": "cpu x2"})
        for value in order:
            seed = values.index(value)
            run = {"run_key": f"k{seed}", "scenario": "perplexity", "model": "builtin:m",
                   "model_config": {}, "task": "t", "task_params": {}, "method": "m",
                   "method_version": "1", "method_plugin": "p", "params": {}, "seed": seed,
                   "device": "cpu", "hardware": "cpu x2", "config": {},
                   "harness_version": "0"}
            metrics = [{"phase": "eval", "metric": "accuracy", "value": value, "unit": "",
                        "stat": "value", "reason": None, "higher_is_better": True}]
            store.commit_run(suite, run, {"status": "ok", "error": None, "traceback": None,
                                          "env_id": env, "started_at": 0.0,
                                          "finished_at": 1.0, "wall_s": 1.0,
                                          "metrics": metrics, "samples": []})
        report.build_site(path, tmp_path / f"site{len(pages)}")
        pages.append((tmp_path / f"site{len(pages)}" / "order" / "t-cpu-x2.json").read_text())
    assert pages[0] == pages[1]
    cell = json.loads(pages[0])["rows"][0]["values"]["accuracy"]
    assert cell["mean"] == statistics.fmean(values) == 0.19999999999999998
    assert cell["ci95"] == report.ci95(statistics.stdev(values), 3)


def test_a_seed_whose_timings_alone_are_in_doubt_counts_for_quality_not_cost(tmp_path):
    """Beside ok seeds, an invalid seed that stored TIMING_ONLY_INVALID (its timed loop
    missed the precision target on a busy host) counts in the quality cells, leaderboard and
    view, and not in the cost cells; another invalid seed counts in neither."""
    store = Store(tmp_path / "h.duckdb")
    layout = Layout({}, (View("Accuracy", ("method",), "task", "accuracy"),
                         View("Latency", ("method",), "task", "latency")), ())
    suite = store.record_suite("busy", "suites/busy.yaml", "", "name: busy\n", layout.to_json())
    env = store.record_environment({"hardware": "cpu x2"})
    seeds = {  # method: (status, accuracy, latency, timing only) per seed
        "m": [("ok", 0.5, 10.0, False), ("ok", 0.6, 20.0, False), ("invalid", 0.7, 90.0, True)],
        "n": [("ok", 0.5, 10.0, False), ("ok", 0.6, 20.0, False), ("invalid", 0.9, 90.0, False)],
    }
    for method, runs in seeds.items():
        for seed, (status, accuracy, latency, timing_only) in enumerate(runs):
            run = {"run_key": f"{method}{seed}", "scenario": "perplexity", "model": "builtin:m",
                   "model_config": {}, "task": "t", "task_params": {}, "method": method,
                   "method_version": "1", "method_plugin": "p", "params": {}, "seed": seed,
                   "device": "cpu", "hardware": "cpu x2", "config": {}, "harness_version": "0"}
            metrics = [{"phase": "eval", "metric": "accuracy", "value": accuracy, "unit": "",
                        "higher_is_better": True},
                       {"phase": "forward", "metric": "latency", "stat": "median",
                        "value": latency, "unit": "ms"}]
            if timing_only:
                phase, metric = TIMING_ONLY_INVALID
                metrics.append({"phase": phase, "metric": metric, "value": 1.0, "unit": ""})
            store.commit_run(suite, run, {"status": status, "error": None, "env_id": env,
                                          "started_at": 0.0, "finished_at": 1.0, "wall_s": 1.0,
                                          "metrics": metrics, "samples": []})
    report.build_site(tmp_path / "h.duckdb", tmp_path / "site")
    rows = {row["method"]: row["values"]
            for row in json.loads((tmp_path / "site/busy/t-cpu-x2.json").read_text())["rows"]}
    assert rows["m"]["accuracy"]["mean"] == pytest.approx(0.6)  # all three seeds
    assert rows["m"]["accuracy"]["n"] == 3
    assert rows["n"]["accuracy"]["mean"] == pytest.approx(0.55)  # its ok seeds
    for method in "mn":
        [latency] = [v for k, v in rows[method].items() if k.startswith("latency")]
        assert latency["mean"] == pytest.approx(15.0) and latency["n"] == 2
    report.export_tables(tmp_path / "h.duckdb", markdown_dir=tmp_path / "md")
    [accuracy] = (tmp_path / "md").rglob("view-accuracy-*.md")
    [latency] = (tmp_path / "md").rglob("view-latency-*.md")
    # m over three seeds (0.6 ± 0.25), n over two (0.55 ± 0.64); latency over two for both
    assert "| m | **0.6 ± 0.25** |\n| n | 0.55 ± 0.64 |" in accuracy.read_text()
    assert "| m | **15 ± 64 ms** |\n| n | **15 ± 64 ms** |" in latency.read_text()
