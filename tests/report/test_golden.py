"""The site shows what it showed before scenarios declared their columns.

``golden_leaderboards.json`` holds each leaderboard's table, legend, plots and JSON download
as the report rendered them from ``scenario_store`` when it still named every family's cost
columns itself. Built from the same store with the columns the built-in scenarios now
declare, the leaderboards must be identical — but for changes made on purpose since, each
regenerated into the file in its own commit: the compress pages' compression ratio is a cost
column (higher is better), no longer a quality one; the JSON downloads count ``unsupported``
runs too; references and bounds (the installed methods' roles: ``dense``, ``full``,
``full-finetune``, ``joint``, ``finetune``) are pinned above the ranked rows with each ranked
cell's difference from the reference, and the plots draw error bars and reference lines, and
say "within noise" instead of drawing a cost that does not vary; the compress pages lose
the trainable-params column (nothing trains in ``perplexity``); the KV pages gain "KV
resident, share of full cache", whose unit names the full cache's dtype; means and SDs are
exactly rounded, no longer summed in DuckDB's thread order (last-bit changes, and one delta
at a rounding boundary that had differed between machines).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from scenario_store import build_scenario_store, leaderboard_snapshot

from harness.plugins import load_components, load_plugins
from harness.report import build_site
from harness.store import Store

GOLDEN = Path(__file__).with_name("golden_leaderboards.json")


@pytest.fixture(scope="module")
def declared() -> dict:
    components = load_components(load_plugins())
    return {name: scenario.columns for name, scenario in components.scenarios
            if getattr(scenario, "columns", None) is not None}


@pytest.fixture(scope="module")
def roles() -> dict:
    components = load_components(load_plugins())
    return {name: method.role for name, method in components.methods
            if getattr(method, "role", None) is not None}


def test_declared_columns_render_the_same_leaderboards(tmp_path: Path, declared: dict,
                                                        roles: dict) -> None:
    db = tmp_path / "store.duckdb"
    build_scenario_store(db)
    store = Store(db)
    for scenario in ("perplexity", "generate", "adapt", "continual"):
        store.record_columns(scenario, declared[scenario].to_json())
    build_site(db, tmp_path / "site", roles=roles)
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    snapshot = leaderboard_snapshot(tmp_path / "site")
    assert sorted(snapshot) == sorted(golden)
    for page, parts in golden.items():
        for part, text in parts.items():
            assert snapshot[page][part] == text, f"{page}: {part} differs"
    # The generate scenario's declared breakdown: exact match per depth bin on run pages.
    kv_run = next(p for p in (tmp_path / "site" / "runs").glob("*.html")
                  if "needle" in p.read_text(encoding="utf-8"))
    page = kv_run.read_text(encoding="utf-8")
    assert "exact_match · eval by depth" in page
    assert re.search(r"<th scope=\"col\">00</th><th scope=\"col\">01</th>", page)


def test_installed_declarations_stand_in_for_an_older_store(tmp_path: Path, declared: dict,
                                                            roles: dict) -> None:
    """A store written before stores kept declarations: ``columns=`` fills them in."""
    db = tmp_path / "store.duckdb"
    build_scenario_store(db)
    build_site(db, tmp_path / "site", columns=declared, roles=roles)
    assert leaderboard_snapshot(tmp_path / "site") == json.loads(GOLDEN.read_text("utf-8"))


def test_without_declarations_only_core_columns(tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    build_scenario_store(db)
    build_site(db, tmp_path / "site")
    page = json.loads((tmp_path / "site" / "kv" / "needle-context-len-512-cpu-amd-epyc-x2.json")
                      .read_text(encoding="utf-8"))
    labels = [c["label"] for c in page["columns"]]
    assert "KV resident" not in labels
    assert labels[0] == "exact match" and "latency · decode" in labels
