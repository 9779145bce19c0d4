"""What scenarios declare about their leaderboard columns (harness.columns)."""

from __future__ import annotations

import json

from harness.columns import CORE_COSTS, QualityColumn, ResultColumns, merged
from harness.plugins import load_components, load_plugins


def test_trains_round_trips_and_an_older_declaration_reads_as_unknown() -> None:
    columns = ResultColumns(quality=(QualityColumn("accuracy", True),), trains=True)
    assert ResultColumns.from_json(columns.to_json()) == columns
    older = json.loads(columns.to_json())
    del older["trains"]
    assert ResultColumns.from_json(json.dumps(older)).trains is None


def test_merged_trains_if_any_scenario_trains() -> None:
    trains, frozen, unknown = (ResultColumns(trains=t) for t in (True, False, None))
    assert merged([frozen, trains]).trains is True
    assert merged([frozen, frozen]).trains is False
    assert merged([frozen, unknown]).trains is None
    assert merged([]).trains is None


def test_trainable_params_is_a_training_cost_of_training_scenarios_only() -> None:
    assert [c.key for c in CORE_COSTS if c.training] == ["trainable"]
    scenarios = dict(load_components(load_plugins()).scenarios)
    trains = {name: s.columns.trains for name, s in scenarios.items()
              if getattr(s, "columns", None) is not None}
    assert trains["perplexity"] is False and trains["lm_eval"] is False
    assert all(trains[name] for name in ("adapt", "continual", "lm_train", "merge", "vqa"))
