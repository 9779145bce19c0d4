"""How many finished runs per second the single-writer driver can commit.

A cluster executor scales the workers but not the writer: every result goes through one
driver, one DuckDB transaction each. This feeds the driver (harness.runner.Driver) results
as fast as it takes them, from an executor that runs nothing: each is a copy of a real run's
result (RTN on the built-in tiny LM: its metrics and raw samples) under a new run key. The
rate it reaches, times a typical run's length, is how many GPUs one driver can keep busy.

    python benchmarks/commit_rate.py [--runs 500]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from harness.cli import _load
from harness.context import execute_run
from harness.environment import collect_environment, resolve_device
from harness.models import cache_dir
from harness.runner import Driver
from harness.store import Store
from harness.suite import read_suite, resolve_suite

SUITE = """\
name: commit-rate
scenario: perplexity
models: [builtin:tiny-byte-lm]
tasks:
  - name: stdlib-text
    params: {windows: 4, seq_len: 64, batch_size: 4}
methods:
  - {name: rtn, params: {bits: 4, group_size: 64}}
seeds: [0]
measure: {warmup: 1, min_repeats: 5, min_seconds: 0.2, rel_precision: null}
"""


class Replay:
    """An executor that runs nothing: each run 'finishes' at once with a copied result."""

    def __init__(self, result: dict) -> None:
        self.result = result

    def execute(self, runs, started, finished) -> None:
        for spec in runs:
            started(spec)
            finished(spec, {**copy.deepcopy(self.result), "run_key": spec.run_key})


class Quiet:
    def begin(self, *args) -> None: ...
    def run_started(self, spec) -> None: ...
    def run_finished(self, spec, result) -> None: ...
    def warn(self, message: str) -> None: print(message)
    def end(self) -> None: ...


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="harness-commit-"))
    path = folder / "suite.yaml"
    path.write_text(SUITE)
    suite_file = read_suite(path)
    plugins, components = _load([], suite_file.plugins, folder)
    suite = resolve_suite(suite_file, components, lambda spec, _: resolve_device(spec))
    [spec] = suite.runs
    result = execute_run(spec, components, plugins, "cpu", cache_dir())
    result["environment"] = collect_environment("cpu")
    metrics, samples = len(result["metrics"]), sum(len(s["values"]) for s in result["samples"])

    runs = tuple(replace(spec, run_key=f"{i:016x}") for i in range(args.runs))
    driver = Driver(replace(suite, runs=runs), Store(folder / "h.duckdb"), plugins,
                    Replay(result), Quiet())
    start = time.perf_counter()
    outcome = driver.run()
    elapsed = time.perf_counter() - start
    assert not outcome.unsaved and len(outcome.results) == args.runs
    rate = args.runs / elapsed
    print(f"{args.runs} results of {metrics} metric rows and {samples} raw samples each, "
          f"committed in {elapsed:.1f} s: {rate:.0f} runs/s ({1e3 / rate:.1f} ms per run)")
    for run_s in (10, 60, 600):
        print(f"  runs of {run_s} s: one driver keeps ~{int(rate * run_s)} GPUs busy")


if __name__ == "__main__":
    main()
