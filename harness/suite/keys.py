"""What identifies a run: its resolved config and the key hashed from it.

A run's key is the primary key of its stored result, and running a suite again skips the
runs whose keys are stored, so the key must change exactly when the measurement would: it
hashes the fully resolved config (defaults filled in, the method's plugin and version, the
device and hardware, the measure settings that shape a timed loop) as canonical JSON.
Reordering keys in the YAML, renaming the suite or changing its timeout never invalidates
stored results, and neither do the measure settings that only decide validity
(``rel_precision``, the deprecated ``max_cv``): :data:`KEYED_MEASURE` names those that
key. Changing anything here invalidates every stored result unless a store migration
re-keys them (as ``harness.store``'s v3 did when ``max_cv`` left the key);
``tests/suite/test_golden_run_keys.py`` pins the keys of the repository's suites.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from harness.api import MeasureSettings
from harness.canonical import config_key

__all__ = ["KEYED_MEASURE", "run_config", "run_key"]

#: The measure settings a run key hashes: how many calls warm up, and the least and most a
#: timed loop runs. The rest only decide whether what was measured is valid.
KEYED_MEASURE = ("warmup", "min_repeats", "min_seconds", "max_seconds")


def run_config(
    *,
    scenario: str | None,
    model: Mapping[str, Any],
    task: str,
    task_params: Mapping[str, Any],
    method: str,
    method_version: str,
    method_plugin: str,
    params: Mapping[str, Any],
    seed: int,
    device: str,
    hardware: str,
    measure: MeasureSettings,
) -> dict[str, Any]:
    """The config a run's key hashes (and the store keeps), from its resolved parts.

    The mappings are deep-copied, so runs sharing a model or params share no objects.
    """
    return {
        "scenario": scenario,
        "model": copy.deepcopy(model),
        "task": {"name": task, "params": copy.deepcopy(task_params)},
        "method": {
            "name": method,
            "version": method_version,
            "plugin": method_plugin,
            "params": copy.deepcopy(params),
        },
        "seed": seed,
        "device": device,
        "hardware": hardware,
        "measure": {k: v for k, v in measure.model_dump(mode="json").items()
                    if k in KEYED_MEASURE},
    }


def run_key(config: Mapping[str, Any]) -> str:
    """The run key: the first 16 hex digits of the SHA-256 of ``canonical_json(config)``."""
    return config_key(config)
