"""The example scenario plugin (examples/vector-search) runs, and its declared cost column
and plot reach the site without the report loading the plugin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.report import build_site

SUITE = Path(__file__).resolve().parents[1] / "examples" / "vector-search" / "suite.yaml"


@pytest.mark.slow
def test_example_scenario_gets_its_column_and_plot(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    assert main(["run", str(SUITE), "--db", str(db), "--executor", "inline"]) == 0
    # The report gets the scenario's declaration from the store, not from the plugin.
    build_site(db, tmp_path / "site")
    board = next((tmp_path / "site" / "vector-search").glob("*.json"))
    page = json.loads(board.read_text(encoding="utf-8"))
    columns = {c["label"]: c for c in page["columns"]}
    assert next(iter(columns)) == "recall" and columns["recall"]["higher_is_better"]
    assert columns["index size"]["unit"] == "bytes" and not columns["index size"]["quality"]
    assert "latency · search" not in columns and "latency" in columns
    sizes = {row["method"] + json.dumps(row["params"]): row["values"]["index_size"]["mean"]
             for row in page["rows"]}
    # int8: a byte per dimension plus two float32 vectors (offset and step) of 96 dims.
    assert 4 * sizes["int8{}"] == pytest.approx(sizes["flat{}"], abs=4 * 2 * 96 * 4)
    assert sizes['binary{"rerank": 0}'] < sizes["int8{}"] / 4
    recall = {row["method"] + json.dumps(row["params"]): row["values"]["recall"]["mean"]
              for row in page["rows"]}
    assert recall["flat{}"] == 1.0
    assert recall['binary{"rerank": 0}'] < recall['binary{"rerank": 50}'] <= 1.0
    html = board.with_suffix(".html").read_text(encoding="utf-8")
    assert "Quality vs index size: recall vs index size" in html
    assert "bytes of the search index" in html


def test_example_scenario_loads_with_p(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    """``-p path/to/vector_search.py`` registers it like the suite's ``plugins:`` does."""
    plugin = SUITE.with_name("vector_search.py")
    assert main(["list", "scenarios", "-p", str(plugin)]) == 0
    assert "vector-search" in capsys.readouterr().out
    assert main(["show", "scenario", "vector-search", "-p", str(plugin)]) == 0
    assert "cost: index size: index_bytes in bytes" in capsys.readouterr().out
