"""The run keys of the repository's suites, pinned.

A run key is the primary key of a stored result, and ``harness run`` skips the runs whose
keys are stored, so a change to a key silently re-measures (or orphans) every result of
its run. ``tests/suites/golden_run_keys.json`` holds, per file of ``suites/``, the keys
its runs had when it was captured, in run order; each suite is resolved here with the
installed plugins and a fixed hardware label, and must give exactly those keys.

A local model path (``hf-config:./configs/...``) enters its key as an absolute path, so the
keys depend on where the checkout is; they were captured in one at ``/work/main``, and the
test hashes each config as if this checkout were there.

The keys were captured while a key still hashed ``measure.max_cv``. Since store schema v3
it does not (a setting that only decides validity must not re-key a run), and the v3
migration re-keys stored runs from their stored configs. So each suite's config is checked
twice: with the ``max_cv`` its file then had put back (:data:`LEGACY_MAX_CV`), it must give
the golden key — nothing else about its runs changed — and a store holding those legacy
runs, once migrated, must hold exactly the keys the suite has now, so a rerun resumes.

A change that means to re-key runs (a new measure setting, a new field in the config)
updates the file in the same commit, and says so.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from harness import store as store_module
from harness.canonical import canonical_json
from harness.executors import Placement
from harness.plugins import load_components, load_plugins
from harness.suite import read_suite, resolve_suite, run_key

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "suites" / "golden_run_keys.json"
SUITES = sorted((ROOT / "suites").glob("*.yaml"))
#: Where the checkout was when the golden keys were captured.
CAPTURED_ROOT = "/work/main"
#: ``measure.max_cv`` of each suite whose keys were captured before schema v3 (0.25: the
#: default then). Suites added since are captured with today's keys.
LEGACY_MAX_CV = {
    "continual-digits-lr.yaml": 0.25, "continual-digits.yaml": 0.25,
    "kvcache-8b-gpu.yaml": 0.5, "kvcache-needle.yaml": 1.0, "peft-vit-bits.yaml": None,
    "peft-vit-gpu.yaml": 0.25, "peft-vit-lr.yaml": None, "peft-vit.yaml": None,
    "smoke.yaml": 0.5,
}


def fixed_device(spec: str, placement: Placement) -> tuple[str, str]:
    """Any machine: the device the suite asks for, and one hardware label for all."""
    return ("cuda" if spec.startswith("cuda") else "cpu"), "fixed hardware"


def captured(config: dict[str, Any], name: str) -> dict[str, Any]:
    """``config`` as it was keyed at capture: this checkout at :data:`CAPTURED_ROOT`, and,
    for a suite captured before schema v3, its ``max_cv`` back in its measure settings."""
    config = copy.deepcopy(config)
    model = config["model"]
    here = f"{ROOT}/"
    if isinstance(model.get("id"), str) and model["id"].startswith(here):
        model["id"] = f"{CAPTURED_ROOT}/{model['id'][len(here):]}"
    if name in LEGACY_MAX_CV:
        config["measure"]["max_cv"] = LEGACY_MAX_CV[name]
    return config


def resolved(path: Path):
    suite_file = read_suite(path)
    plugins = load_plugins(suite_file.plugins, base_dir=suite_file.path.parent)
    assert plugins.failures == {}
    return resolve_suite(suite_file, load_components(plugins), fixed_device)


def test_every_suite_has_golden_keys() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == [path.name for path in SUITES]


@pytest.mark.parametrize("path", SUITES, ids=[path.stem for path in SUITES])
def test_run_keys_match_the_golden_ones(path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    suite = resolved(path)
    assert all(run.run_key == run_key(run.config) for run in suite.runs)
    assert "max_cv" not in suite.runs[0].config["measure"]
    keyed = [captured(dict(run.config), path.name) for run in suite.runs]
    assert [run_key(config) for config in keyed] == golden[path.name]


@pytest.mark.parametrize("name", ["smoke.yaml", "continual-digits.yaml", "peft-vit.yaml"])
def test_a_migrated_store_resumes_with_nothing_rerun(tmp_path: Path, name: str) -> None:
    """A v2 store holding the golden runs, opened by this harness, holds the suite's keys."""
    suite = resolved(ROOT / "suites" / name)
    db = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE schema_version (version INTEGER, applied_at TIMESTAMP)")
    for version, step in enumerate(store_module.MIGRATIONS[:2], start=1):
        con.execute(step)
        con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
    for run in suite.runs:
        # The config as that store kept it: the run's own, with max_cv, at this checkout.
        config = {**run.config, "measure": {**run.config["measure"],
                                            "max_cv": LEGACY_MAX_CV[name]}}
        key = run_key(config)
        con.execute("INSERT INTO runs (run_key, config, status) VALUES (?, ?, 'ok')",
                    [key, canonical_json(config)])
        con.execute("INSERT INTO metrics (run_key, phase, metric, value) "
                    "VALUES (?, 'eval', 'x', 1.0)", [key])
    con.close()
    statuses = store_module.Store(db).statuses()
    assert statuses == {run.run_key: "ok" for run in suite.runs}
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM metrics").fetchone() == (len(suite.runs),)
