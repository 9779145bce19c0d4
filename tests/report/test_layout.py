"""Roles, pivot views and paper exports, from a store whose suite keeps its layout.

The store is a small continual-learning suite as its paper prints it: joint training (the
upper bound) and fine-tuning (the lower bound) beside ER and TaER at two replay buffers,
three seeds each, with accuracies chosen so the means are easy to check by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.columns import QualityColumn, ResultColumns
from harness.layout import Layout, View
from harness.report import build_site, export_tables
from harness.store import Store

HW = "cpu: test x2"
SEEDS = (0, 1, 2)
#: Accuracy (%) per configuration, per seed.
ACCURACY = {
    ("joint", None): (94.0, 95.0, 96.0),
    ("finetune", None): (19.0, 20.0, 21.0),
    ("er", 20): (70.0, 71.0, 72.0),
    ("er", 50): (80.0, 81.0, 82.0),
    ("taer", 20): (75.0, 76.0, 77.0),
    ("taer", 50): (84.0, 85.0, 86.0),
    ("a_b%c", 20): (60.0, 60.0, 60.0),
}
ROLES = {"joint": "upper-bound", "finetune": "lower-bound"}
VIEW = View("Accuracy by buffer", ("method",), "params.buffer", "accuracy", mean=True,
            delta=True)


def build_store(path: Path, *, layout: bool = True, stale: bool = False) -> None:
    """``stale`` adds runs of an earlier version of the suite (TaER at another learning
    rate), which its views, declared by the current version, must leave out."""
    store = Store(path)
    store.record_columns("continual", ResultColumns(
        quality=(QualityColumn("accuracy", higher_is_better=True),)).to_json())
    runs = []
    for (method, buffer), values in ACCURACY.items():
        for seed, value in zip(SEEDS, values, strict=True):
            params = {"lr": 1.0, **({"buffer": buffer} if buffer else {})}
            runs.append((f"{method}-{buffer}-{seed}", method, params, seed, value))
    roles = {key: ROLES[method] for key, method, *_ in runs if method in ROLES}
    current = tuple(key for key, *_ in runs) if stale else ()
    if stale:
        runs += [(f"taer-old-{seed}", "taer", {"lr": 3.0, "buffer": 20}, seed, 10.0)
                 for seed in SEEDS]
    suite = store.record_suite("cl", "suites/cl.yaml", "continual", "name: cl\n",
                               Layout(roles, (VIEW,), current).to_json() if layout else None)
    env = store.record_environment({"hostname": "box", "cpu": "test", "cpu_count": 2})
    for key, method, params, seed, value in runs:
        run = {"run_key": key, "scenario": "continual", "model": "builtin:tiny-vit",
               "model_config": {"ref": "builtin:tiny-vit"}, "task": "split-digits",
               "task_params": {"epochs": 5}, "method": method, "method_version": "1",
               "method_plugin": "fixture 0.1", "params": params, "seed": seed,
               "device": "cpu", "hardware": HW, "config": {"seed": seed},
               "harness_version": "0.1.0"}
        metrics = [
            {"phase": "eval", "metric": "accuracy", "value": value, "unit": "%",
             "higher_is_better": True},
            {"phase": "train", "metric": "host_rss_peak", "stat": "max", "unit": "bytes",
             "value": 400 * 2**20 * (2 if method == "joint" else 1)},
        ]
        store.commit_run(suite, run, {"status": "ok", "env_id": env, "started_at": 1.7e9,
                                      "finished_at": 1.7e9 + 1, "wall_s": 1.0,
                                      "metrics": metrics, "samples": []})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    build_store(root / "store.duckdb")
    build_site(root / "store.duckdb", root / "site")
    return root / "site"


def page(site: Path) -> str:
    [path] = [p for p in site.glob("cl/*.html")]
    return path.read_text(encoding="utf-8")


def tbody(html: str, cls: str, nth: int = 0) -> str:
    return re.findall(rf'<tbody class="{cls}">(.*?)</tbody>', html, re.S)[nth]


def test_bounds_are_pinned_labelled_and_never_starred(site: Path) -> None:
    html = page(site)
    pinned, ranked = tbody(html, "pinned"), tbody(html, "ranked")
    assert re.findall(r'<th scope="row" data-sort="([^"]+)"', pinned) == ["joint", "finetune"]
    assert 'class="role-label">upper bound<' in pinned and ">lower bound<" in pinned
    assert "★" not in pinned and "★" in ranked
    # The best contender leads, and the index names it, not joint (95 %).
    assert re.findall(r'<th scope="row" data-sort="([^"]+)"', ranked)[0] == "taer"
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "taer (buffer=50, lr=1.0)" in index and "joint" not in index


def test_contenders_show_their_gap_to_the_upper_bound(site: Path) -> None:
    ranked = tbody(page(site), "ranked")
    # taer at buffer 50: 85 % against joint's 95 %; peak host RAM half of joint's.
    first_row = ranked.split("</tr>")[0]
    assert '<span class="note">−10 pt</span>' in first_row
    assert "2× less" in first_row


def test_a_view_is_method_by_buffer_with_mean_and_delta(site: Path) -> None:
    html = page(site)
    assert "<h3 id=" in html and ">Accuracy by buffer</h3>" in html
    ranked = tbody(html, "ranked", 1)
    rows = {re.search(r'data-sort="([^"]+)"', r).group(1): r
            for r in ranked.split("</tr>") if "<th" in r}
    assert list(rows) == ["a_b%c", "er", "taer"]
    cells = re.findall(r'<td class="(num[^"]*)" data-sort="([^"]*)"', rows["taer"])
    # buffer 20, buffer 50, mean: TaER is best at both buffers and on the mean.
    assert [(c, float(v)) for c, v in cells] == [("num best", 76.0), ("num best", 85.0),
                                                 ("num best", 80.5)]
    assert "−19 pt" in rows["taer"]  # 76 against joint's 95, in the buffer-20 column
    # a_b%c has no buffer 50 run: that cell and its mean are missing, not zero.
    assert re.findall(r'<td class="(num[^"]*)"', rows["a_b%c"]) == ["num", "num missing",
                                                                     "num missing"]
    # joint has no buffer: its one figure holds in every column.
    pinned = tbody(html, "pinned", 1)
    assert pinned.count('data-sort="95.0"') == 3


def test_a_view_against_a_numeric_param_is_also_drawn(site: Path) -> None:
    """Below the buffer view: a line per row (bounds dashed), a_b%c a single point."""
    html = page(site)
    figure = html[html.index(">Accuracy by buffer</h3>"):].split("</figure>")[0]
    curves = re.findall(r'<g class="curve ([^"]+)">(.*?)</g>', figure, re.S)
    names = re.findall(r"</svg>([^<]+)</li>", figure)
    assert names == ["joint (upper bound)", "finetune (lower bound)", "a_b%c", "er", "taer"]
    assert [css for css, _ in curves[:5]] == ["s0 ref", "s1 ref", "s2", "s3", "s4"]
    assert [body.count("<circle") for _, body in curves[:5]] == [2, 2, 1, 2, 2]
    assert "taer, buffer 50: 85 % (95 % CI" in figure


def test_downloads_say_the_role(site: Path) -> None:
    [json_path] = site.glob("cl/split-digits-*.json")
    rows = json.loads(json_path.read_text(encoding="utf-8"))["rows"]
    assert {r["method"]: r["role"] for r in rows}["joint"] == "upper-bound"
    assert {r["method"]: r["role"] for r in rows}["er"] is None


def test_latex_is_booktabs_and_escaped(site: Path) -> None:
    [tex] = [p for p in site.glob("cl/view-*.tex")]
    text = tex.read_text(encoding="utf-8")
    assert text.startswith("\\begin{table}") and text.rstrip().endswith("\\end{table}")
    body = text[text.index("\\begin{tabular}"):text.index("\\end{tabular}")]
    assert body.count("\\toprule") == body.count("\\bottomrule") == 1
    assert body.index("\\toprule") < body.index("\\midrule") < body.index("\\bottomrule")
    assert "\\multicolumn{2}{c}{buffer}" in body and "\\cmidrule(lr){2-3}" in body
    # Every row has as many cells as the column spec says.
    spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", text).group(1)
    rows = [line for line in body.splitlines() if line.endswith("\\\\")
            and "multicolumn" not in line]
    assert rows and all(line.count(" & ") == len(spec) - 1 for line in rows)
    assert "a\\_b\\%c" in text and "a_b%c" not in text
    assert "\\textbf{85.00 $\\pm$ 2.5 \\%}" in text or "\\textbf{85 $\\pm$ 2.5 \\%}" in text
    assert "\\textit{joint (upper bound)}" in text
    # Braces balance once escaped braces are set aside.
    bare = text.replace("\\{", "").replace("\\}", "")
    assert bare.count("{") == bare.count("}")


def test_markdown_is_a_github_table(site: Path) -> None:
    [md] = [p for p in site.glob("cl/split-digits-*.md")]
    lines = md.read_text(encoding="utf-8").splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count(" | ") for line in table if "---" not in line}) == 1
    assert re.fullmatch(r"\|(:---\|)+(---:\|)+", table[1])
    assert any("a\\_b%c" in line for line in table)
    assert any(line.startswith("| *joint (upper bound)*") for line in table)
    assert any("**85 ± 2.5 %**" in line for line in table)


def test_harness_export_writes_latex_and_markdown(tmp_path: Path) -> None:
    build_store(tmp_path / "store.duckdb")
    code = main(["export", "--db", str(tmp_path / "store.duckdb"),
                 "--latex", str(tmp_path / "tex"), "--markdown", str(tmp_path / "md")])
    assert code == 0
    assert sorted(p.name.rsplit("-", 3)[0] for p in (tmp_path / "tex").rglob("*.tex")) == [
        "split-digits", "view-accuracy-by-buffer"]
    assert len(list((tmp_path / "md").rglob("*.md"))) == 2
    assert export_tables(tmp_path / "store.duckdb") == []  # nothing asked, nothing written
    assert main(["export", "--db", str(tmp_path / "store.duckdb")]) == 2


def test_a_store_without_layouts_takes_the_installed_methods_roles(tmp_path: Path) -> None:
    build_store(tmp_path / "store.duckdb", layout=False)
    build_site(tmp_path / "store.duckdb", tmp_path / "site", roles={"joint": "upper-bound"})
    html = page(tmp_path / "site")
    assert re.findall(r'<th scope="row" data-sort="([^"]+)"', tbody(html, "pinned")) == ["joint"]
    assert "<h2>Views</h2>" not in html


def test_a_view_leaves_out_runs_of_an_earlier_version_of_its_suite(tmp_path: Path) -> None:
    build_store(tmp_path / "store.duckdb", stale=True)
    build_site(tmp_path / "store.duckdb", tmp_path / "site")
    html = page(tmp_path / "site")
    view = tbody(html, "ranked", 1)
    taer = next(r for r in view.split("</tr>") if 'data-sort="taer"' in r)
    assert 'data-sort="76.0"' in taer  # not (76 + 10) / 2: the stale lr=3 runs stay out
    assert "lr=3.0" in tbody(html, "ranked")  # the leaderboard still shows them, apart
