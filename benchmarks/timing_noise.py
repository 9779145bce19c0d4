"""Timing that holds on a busy machine (issue 19): the smoke suite, quiet and under a CPU hog.

Runs ``harness run SUITE`` three times on the machine as it is, then once while busy
processes spin on half the logical CPUs (at least one; started and always stopped here),
each pass into a fresh temporary store. Then prints, per run of the suite: its status, the
median ``forward`` latency, its shift against the first quiet pass and the 95 % interval of
the median, and the share of the CPUs other processes used meanwhile (``[busy]`` where the
host-load probe's figures diagnose a busy host, valid runs too); the spread of the three
quiet medians; and the reason of every run that isn't ``ok``. Targets, each printed PASS or
FAIL (the exit status is 1 on any FAIL):

* every run valid on each quiet pass;
* the quiet passes' medians within 5 % of each other, run by run;
* with the hog, no invalid run whose reason doesn't name the busy host;
* with the hog, at least 4 of 5 runs valid, or every miss reported as the suite's time
  budget (the loop gave up at ``max_seconds``, or ``limits.timeout``).

For context it also times the machine itself, outside harness: the median of a bare torch
matmul in one fresh process per quiet pass, right before it. Where those medians move as
much as the suite's do, the spread between passes is the machine's (a shared VM's speed
drifts over seconds), not the harness's; the target is reported as measured either way.

    python benchmarks/timing_noise.py [--suite suites/smoke.yaml] [--quiet-passes 3]
                                      [--hogs N] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from harness.probes.host_load import busy_host_reason

ROOT = Path(__file__).resolve().parents[1]
TARGET_QUIET_SPREAD = 0.05
TARGET_BUSY_VALID = 4


@dataclass
class Run:
    """One run of one pass: what the store says about it."""

    label: str
    status: str
    error: str | None
    median: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: float | None = None
    max_seconds: float | None = None
    host: dict[str, float | None] = field(default_factory=dict)

    @property
    def diagnosis(self) -> str | None:
        """The host-load probe's verdict on the ``forward`` phase (even for valid runs)."""
        return busy_host_reason(self.host)


@dataclass
class Pass:
    name: str
    busy: bool
    seconds: float = 0.0
    exit_code: int = 0
    host_before: str | None = None
    runs: dict[str, Run] = field(default_factory=dict)

    @property
    def valid(self) -> int:
        return sum(r.status == "ok" for r in self.runs.values())


def _spin() -> None:
    while True:
        pass


def _label(method: str, params: str | None) -> str:
    try:
        values = json.loads(params or "{}")
    except ValueError:
        values = {}
    shown = " ".join(f"{k}={v}" for k, v in sorted(values.items()))
    return f"{method} {shown}".strip()


def read_store(db: Path) -> dict[str, Run]:
    """Each run's status, reason and forward-latency statistics, by method + params."""
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute(
            "SELECT run_key, method, params, status, error, "
            "TRY_CAST(json_extract(config, '$.measure.max_seconds') AS DOUBLE) FROM runs"
        ).fetchall()
        stats = con.execute(
            "SELECT run_key, stat, value FROM metrics WHERE phase = 'forward' AND "
            "metric = 'latency' AND stat IN ('median', 'median_ci_lo', 'median_ci_hi', 'n')"
        ).fetchall()
        host = con.execute(
            "SELECT run_key, metric, value FROM metrics WHERE phase = 'forward' AND "
            "stat IN ('value', 'max') AND metric IN ('host_load', 'host_cpus', "
            "'other_cpu_share', 'own_cpu_share', 'gpu_other_processes')"
        ).fetchall()
    by_key: dict[str, Run] = {}
    for key, method, params, status, error, max_seconds in runs:
        by_key[key] = Run(_label(method, params), status, error, max_seconds=max_seconds)
    for key, stat, value in stats:
        run = by_key.get(key)
        if run is not None:
            name = {"median": "median", "median_ci_lo": "lo", "median_ci_hi": "hi", "n": "n"}
            setattr(run, name[stat], value)
    for key, metric, value in host:
        if key in by_key:
            by_key[key].host[metric] = value
    return {run.label: run for run in by_key.values()}


def host_now() -> str | None:
    """``host_busy_now`` as ``harness run`` would see it: from a process outside this one's
    tree (the hogs are this process's children, so here they would count as "own")."""
    code = ("from harness.probes.host_load import host_busy_now; "
            "print(host_busy_now(0.5) or '')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    return done.stdout.strip() or None


_REFERENCE = """
import statistics, time, torch
a, b = torch.randn(128, 512), torch.randn(512, 2048)
for _ in range(50):
    a @ b
samples = []
for _ in range(400):
    t = time.perf_counter_ns()
    a @ b
    samples.append((time.perf_counter_ns() - t) / 1e6)
print(statistics.median(samples))
"""


def machine_reference() -> float:
    """The median ms of a bare torch matmul in a fresh process: the machine's own speed."""
    done = subprocess.run([sys.executable, "-c", _REFERENCE], capture_output=True, text=True,
                          check=True, timeout=120)
    return float(done.stdout.strip())


def run_pass(name: str, suite: Path, folder: Path, hogs: int) -> Pass:
    """One ``harness run`` into a fresh store; with ``hogs`` spinning processes meanwhile."""
    db = folder / f"{name}.duckdb"
    result = Pass(name, busy=hogs > 0)
    procs: list[multiprocessing.process.BaseProcess] = []
    ctx = multiprocessing.get_context("spawn")
    try:
        for _ in range(hogs):
            proc = ctx.Process(target=_spin, daemon=True)
            proc.start()
            procs.append(proc)
        if procs:
            time.sleep(1.0)  # let them start spinning
        result.host_before = host_now()
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", str(suite), "--db", str(db)],
            cwd=ROOT, capture_output=True, text=True,
        )
        result.seconds = time.perf_counter() - start
        result.exit_code = done.returncode
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.join(timeout=10)
    if db.exists():
        result.runs = read_store(db)
    if not result.runs:
        print(f"{name}: harness run stored nothing (exit {result.exit_code})")
    return result


def _ms(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.3f}"


def _cell(run: Run | None, base: Run | None) -> str:
    if run is None:
        return "(missing)"
    text = f"{run.status:7} {_ms(run.median)} ms"
    if base is not None and base.median and run.median is not None:
        text += f" {100 * (run.median / base.median - 1):+5.1f} %"
    if run.lo is not None and run.hi is not None and not math.isnan(run.lo):
        half = (run.hi - run.lo) / 2 / run.median * 100 if run.median else math.nan
        text += f"  CI {_ms(run.lo)}–{_ms(run.hi)} (±{half:.1f} %, n={run.n or 0:.0f})"
    other = run.host.get("other_cpu_share")
    if other is not None:
        text += f"  others {other:.0f} % CPU"
    if run.diagnosis:
        text += "  [busy]"
    return text


def _time_budget(run: Run) -> bool:
    """Whether the run missed because the suite's time ran out (max_seconds or timeout)."""
    if run.status == "timeout":
        return True
    if run.status != "invalid" or not run.error:
        return False
    after = [float(x) for x in re.findall(r"after (\d+(?:\.\d+)?) s\b", run.error)]
    budget = run.max_seconds
    return bool(after) and (budget is None or max(after) >= 0.95 * budget)


def report(passes: list[Pass], reference: list[float]) -> bool:
    quiet = [p for p in passes if not p.busy]
    labels = sorted({label for p in passes for label in p.runs})
    base = quiet[0].runs if quiet else {}
    print()
    for p in passes:
        host = p.host_before or "quiet"
        print(f"{p.name:8} {p.valid}/{len(p.runs)} valid, {p.seconds:6.1f} s, exit "
              f"{p.exit_code}; host at start: {host}")
    print()
    for label in labels:
        print(label)
        for p in passes:
            print(f"  {p.name:8} {_cell(p.runs.get(label), base.get(label))}")
    print()
    spreads: dict[str, float] = {}
    for label in labels:
        medians = [p.runs[label].median for p in quiet if label in p.runs]
        medians = [m for m in medians if m is not None and not math.isnan(m)]
        if len(medians) == len(quiet) and medians:
            spreads[label] = max(medians) / min(medians) - 1
    for label, spread in spreads.items():
        print(f"quiet spread {label:24} {100 * spread:5.1f} %")
    if reference:
        print(f"machine reference (bare torch matmul, a fresh process per quiet pass): "
              f"{' / '.join(f'{m:.3f}' for m in reference)} ms, spread "
              f"{100 * (max(reference) / min(reference) - 1):.1f} %")
    for p in passes:
        busy_runs = [r for r in p.runs.values() if r.diagnosis]
        print(f"{p.name:8} forward phases diagnosed busy: {len(busy_runs)}/{len(p.runs)}"
              + (f" (e.g. {busy_runs[0].diagnosis})" if busy_runs else ""))
    reasons = [(p.name, label, r) for p in passes for label, r in p.runs.items()
               if r.status != "ok"]
    if reasons:
        print()
        for name, label, run in reasons:
            print(f"{name} {label} [{run.status}]: {run.error}")

    total = len(labels)
    busy = [p for p in passes if p.busy]
    checks: list[tuple[str, bool]] = []
    for p in quiet:
        checks.append((f"{p.name}: {p.valid}/{total} valid (target {total}/{total})",
                       total > 0 and p.valid == total == len(p.runs)))
    worst = max(spreads.values(), default=math.nan)
    checks.append((f"quiet medians within {100 * TARGET_QUIET_SPREAD:.0f} % of each other "
                   f"(worst {100 * worst:.1f} %)",
                   len(spreads) == total > 0 and worst <= TARGET_QUIET_SPREAD))
    for p in busy:
        unnamed = [label for label, r in p.runs.items()
                   if r.status == "invalid" and "host busy" not in (r.error or "")]
        checks.append((f"{p.name}: every invalid run names the busy host "
                       f"({len(unnamed)} don't)", not unnamed))
        missed = [r for r in p.runs.values() if r.status != "ok"]
        enough = p.valid >= min(TARGET_BUSY_VALID, total) and len(p.runs) == total
        budget = bool(missed) and all(_time_budget(r) for r in missed)
        checks.append((f"{p.name}: {p.valid}/{total} valid (target >= "
                       f"{min(TARGET_BUSY_VALID, total)}, or the time budget as the reason)",
                       total > 0 and (enough or budget)))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=ROOT / "suites" / "smoke.yaml")
    parser.add_argument("--quiet-passes", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="busy processes in the last pass (default: half the CPUs)")
    parser.add_argument("--dir", type=Path, default=None, help="work here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="harness-timing-noise-"))
    folder.mkdir(parents=True, exist_ok=True)
    passes: list[Pass] = []
    reference: list[float] = []
    try:
        for i in range(args.quiet_passes):
            print(f"quiet pass {i + 1}/{args.quiet_passes} ...", flush=True)
            reference.append(machine_reference())
            passes.append(run_pass(f"quiet{i + 1}", args.suite, folder, 0))
        print(f"busy pass ({args.hogs} spinning process(es) on {os.cpu_count()} CPUs) ...",
              flush=True)
        passes.append(run_pass("busy", args.suite, folder, max(1, args.hogs)))
        ok = report(passes, reference)
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"stores kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
