"""Harness overhead: the share of a suite's wall time spent outside its runs.

Runs a 100-run CPU suite of a fast real method (RTN weight quantization of the built-in
tiny LM: 4 bit widths x 5 group sizes x 5 seeds) through ``harness run`` with the default
subprocess executor (or ``--executor ray``: one Ray task per run with all the cores, a
local Ray instance started by the command and counted in its time), then compares the
command's wall time with the sum of the runs' own wall times as the workers measured them.
What is left is the harness: start-up, suite validation, worker spawn, IPC, store commits,
progress display. Target: < 5 % for the subprocess executor; the Ray executor within 10 %
of the subprocess executor's total.

    python benchmarks/overhead.py [--runs-dir DIR] [--executor subprocess|ray]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.store import query

SUITE = """\
name: overhead
description: 100 fast runs to measure the harness's own overhead.
scenario: perplexity
models: [builtin:tiny-byte-lm]
tasks:
  - name: stdlib-text
    params: {windows: 4, seq_len: 64, batch_size: 4}
methods:
  - name: rtn
    grid: {bits: [2, 3, 4, 8], group_size: [16, 32, 64, 128, 256]}
seeds: [0, 1, 2, 3, 4]
measure: {warmup: 1, min_repeats: 5, min_seconds: 0.2, rel_precision: null}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs-dir", type=Path, default=None, help="keep suite and store here")
    parser.add_argument("--executor", choices=("subprocess", "ray"), default="subprocess")
    args = parser.parse_args()
    folder = args.runs_dir or Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    folder.mkdir(parents=True, exist_ok=True)
    suite, db = folder / "overhead.yaml", folder / "overhead.duckdb"
    placement = f"executor: {args.executor}\n"
    if args.executor == "ray":  # one run at a time with every core, as the subprocess worker
        placement += f"resources: {{cpus: {len(os.sched_getaffinity(0))}}}\n"
    suite.write_text(SUITE + placement)
    db.unlink(missing_ok=True)

    # Train (or find) the tiny model first, so the measured suite times runs, not training.
    warm = folder / "warm.yaml"
    warm.write_text(SUITE.replace("seeds: [0, 1, 2, 3, 4]", "seeds: [0]").replace(
        "grid: {bits: [2, 3, 4, 8], group_size: [16, 32, 64, 128, 256]}", "grid: {bits: [8]}"))
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(warm), "--db",
                    str(folder / "warm.duckdb"), "--executor", "inline", "--rerun"],
                   check=True, capture_output=True)

    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness.cli", "run", str(suite), "--db", str(db)],
                   check=True, capture_output=True)
    total = time.perf_counter() - start

    _, rows = query(db, "SELECT count(*), sum(wall_s), count(*) FILTER (status = 'ok') FROM runs")
    runs, in_runs, ok = rows[0]
    outside = total - in_runs
    print(f"executor: {args.executor}; runs: {runs} ({ok} ok)")
    print(f"suite wall time: {total:.1f} s; inside runs: {in_runs:.1f} s")
    print(f"harness overhead: {outside:.1f} s = {100 * outside / total:.2f} % of the total "
          f"({1e3 * outside / runs:.0f} ms per run)")


if __name__ == "__main__":
    main()
