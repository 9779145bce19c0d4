"""The driver and executors: isolation statuses, resume, rerun/retry, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.api import TIMING_ONLY_INVALID
from harness.cli import main
from harness.runner import select_pending
from harness.store import query

FIXTURES = Path(__file__).parent / "fixtures"


def write_suite(tmp_path: Path, methods: str, *, seeds: str = "[0]", extra: str = "",
                limits: str = "{timeout: 4}") -> Path:
    """A suite over the test-only ``exercise`` scenario (tests/fixtures/faulty_plugin.py)."""
    path = tmp_path / "suite.yaml"
    methods_block = textwrap.indent(textwrap.dedent(methods).strip(), "  ")
    path.write_text("\n".join([
        "name: faulty",
        "scenario: exercise",
        f"plugins: [{FIXTURES / 'faulty_plugin.py'}]",
        "models: [builtin:tiny-byte-lm]",
        "tasks: [no-data]",
        "methods:" + ("\n" if methods_block.lstrip().startswith("-") else " ") + (
            methods_block if methods_block.lstrip().startswith("-") else methods_block.strip()),
        f"seeds: {seeds}",
        "measure: {warmup: 1, min_repeats: 3, min_seconds: 0.01, rel_precision: null}",
        f"limits: {limits}",
        extra,
    ]) + "\n")
    return path


def statuses(db: Path) -> dict[tuple[str, int], str]:
    _, rows = query(db, "SELECT method, seed, status FROM runs")
    return {(method, seed): status for method, seed, status in rows}


def harness_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True, text=True, timeout=240, **kwargs,
    )


def test_subprocess_executor_turns_each_failure_into_its_status(tmp_path):
    suite = write_suite(tmp_path, """
        - steady
        - crash
        - oom
        - raise
        - hang
        - {name: steady, params: {size: 32}}
        """)
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db))
    assert proc.returncode == 1, proc.stderr  # failures make the exit code non-zero
    _, rows = query(db, "SELECT method, params, status, error, traceback FROM runs")
    by_method = {(m, p): (s, e, t) for m, p, s, e, t in rows}
    assert by_method[("steady", '{"marker":"","size":64}')][0] == "ok"
    assert by_method[("steady", '{"marker":"","size":32}')][0] == "ok"  # after the crash
    status, error, trace = by_method[("crash", '{"marker":"","size":64}')]
    assert status == "crashed" and "SIGSEGV" in error
    assert "Segmentation fault" in trace  # faulthandler's dump from the worker's log
    assert by_method[("oom", '{"marker":"","size":64}')][0] == "oom"
    status, error, _ = by_method[("raise", '{"marker":"","size":64}')]
    assert status == "failed" and "ValueError: bad weights" in error and "method 'raise'" in error
    status, error, trace = by_method[("hang", '{"marker":"","size":64}')]
    assert status == "timeout" and "limits.timeout=4" in error
    # The hung worker's stacks, its main thread's from the worker's entry on: under load the
    # deadline may pass before the run reaches work(), so where that thread stands is not
    # asserted.
    assert "Current thread" in trace and "in worker_main" in trace, trace


def test_a_run_whose_timings_alone_missed_their_target_says_so(tmp_path):
    suite = write_suite(tmp_path, "[steady]", extra="executor: inline")
    suite.write_text(suite.read_text().replace(
        "min_repeats: 3,", "min_repeats: 1000000, max_seconds: 0.05,"))
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    _, rows = query(db, "SELECT r.status, r.error, m.phase, m.metric, m.value FROM runs r "
                        "JOIN metrics m USING (run_key) WHERE m.phase = 'validity'")
    [(status, error, *marker)] = rows
    assert status == "invalid" and "work: " in error
    assert tuple(marker) == (*TIMING_ONLY_INVALID, 1.0)  # its quality still counts


def test_a_run_past_its_host_memory_limit_is_oom_and_the_suite_goes_on(tmp_path):
    suite = write_suite(tmp_path, "[steady, hog, {name: steady, params: {size: 32}}]",
                        limits="{timeout: 30, memory: {host_gb: 1.0}}")
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db))
    assert proc.returncode == 0, proc.stderr  # oom is a result, not a failure of the harness
    _, rows = query(db, "SELECT method, params, status, error FROM runs")
    by_run = {(m, p): (s, e) for m, p, s, e in rows}
    status, error = by_run[("hog", '{"marker":"","size":64}')]
    assert status == "oom"
    assert "over limits.memory.host_gb=1; killed" in error and "GiB of host RSS" in error
    assert by_run[("steady", '{"marker":"","size":32}')][0] == "ok"  # after the kill


def test_the_inline_executor_says_it_does_not_enforce_host_memory(tmp_path):
    suite = write_suite(tmp_path, "[steady]", extra="executor: inline",
                        limits="{timeout: 30, memory: {host_gb: 1.0}}")
    proc = harness_cli("run", str(suite), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "limits.memory.host_gb: not enforced by the inline executor" in " ".join(
        proc.stderr.split())


def test_workers_leave_no_semaphore_for_the_tracker_to_report(tmp_path):
    """A worker's live multiprocessing locks are released when it stops, so the resource
    tracker it shares with the driver has nothing to call leaked at the end."""
    proc = harness_cli("run", str(write_suite(tmp_path, "[holds-lock]")), "--db",
                       str(tmp_path / "h.duckdb"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "leaked semaphore" not in proc.stderr


def test_inline_executor_statuses_and_timeout(tmp_path):
    suite = write_suite(tmp_path, "[steady, raise, oom, hang]")
    db = tmp_path / "h.duckdb"
    code = main(["run", str(suite), "--db", str(db), "--executor", "inline",
                 "--keep-going-exit-0"])
    assert code == 0
    assert statuses(db) == {("steady", 0): "ok", ("raise", 0): "failed", ("oom", 0): "oom",
                            ("hang", 0): "timeout"}


def test_metrics_and_samples_are_stored(tmp_path):
    suite = write_suite(tmp_path, "[steady]")
    db = tmp_path / "h.duckdb"
    assert main(["run", str(suite), "--db", str(db), "--executor", "inline"]) == 0
    _, rows = query(db, "SELECT phase, metric, stat, value, unit, reason FROM metrics")
    found = {(p, m, s): (v, u, r) for p, m, s, v, u, r in rows}
    assert found[("work", "latency", "n")][0] >= 3
    assert found[("work", "latency", "median")][1] == "ms"
    assert found[("eval", "score", "value")][0] == 1.0
    # probes without a GPU record nulls with reasons, never 0
    value, _, reason = found[("work", "cuda_allocated_peak", "max")]
    assert value is None and reason
    assert found[("work", "host_rss_peak", "max")][0] > 0
    _, samples = query(db, "SELECT len(\"values\") FROM samples WHERE metric = 'latency'")
    assert samples[0][0] >= 3
    _, env = query(db, "SELECT e.cpu_count, e.torch FROM runs r JOIN environments e USING (env_id)")
    assert env[0][0] >= 1 and env[0][1]


def test_resume_after_the_driver_is_killed_mid_suite(tmp_path):
    marker = tmp_path / "killed-once"
    suite = write_suite(tmp_path, f"""
        - steady
        - {{name: kill-driver, params: {{marker: "{marker}"}}}}
        - {{name: steady, params: {{size: 16}}}}
        """, seeds="[0, 1]")
    db = tmp_path / "h.duckdb"
    first = harness_cli("run", str(suite), "--db", str(db))
    assert first.returncode == -9  # SIGKILL from the kill-driver method
    assert marker.exists()
    assert statuses(db) == {("steady", 0): "ok", ("steady", 1): "ok"}  # finished runs kept

    second = harness_cli("run", str(suite), "--db", str(db))
    assert second.returncode == 0, second.stderr
    assert "2 run(s) already in the store are skipped" in second.stderr
    _, rows = query(db, "SELECT count(*), count(DISTINCT run_key) FROM runs WHERE status = 'ok'")
    assert rows == [(6, 6)]


def test_rerun_and_retry_failed(tmp_path):
    suite = write_suite(tmp_path, "[steady, raise]")
    db = tmp_path / "h.duckdb"
    run = ["run", str(suite), "--db", str(db), "--executor", "inline", "--keep-going-exit-0"]
    assert main(run) == 0
    _, before = query(db, "SELECT run_key, finished_at FROM runs ORDER BY run_key")
    assert main(run) == 0  # resume: nothing to do
    _, same = query(db, "SELECT run_key, finished_at FROM runs ORDER BY run_key")
    assert same == before
    assert main([*run, "--retry-failed"]) == 0
    _, retried = query(db, "SELECT method, finished_at FROM runs ORDER BY run_key")
    changed = {m for (m, t), (_, t0) in zip(retried, before, strict=True) if t != t0}
    assert changed == {"raise"}
    assert main([*run, "--rerun"]) == 0
    _, rerun = query(db, "SELECT finished_at FROM runs ORDER BY run_key")
    assert all(t != t0 for (t,), (_, t0) in zip(rerun, before, strict=True))


def test_unsupported_is_stored_with_its_reason_not_failed_and_not_retried(tmp_path):
    suite = write_suite(tmp_path, "[steady, needs-gpu]")
    db = tmp_path / "h.duckdb"
    run = ["run", str(suite), "--db", str(db), "--executor", "inline"]
    assert main(run) == 0  # nothing failed: the exit status stays 0
    _, rows = query(db, "SELECT method, status, error, finished_at FROM runs")
    by_method = {m: (s, e, t) for m, s, e, t in rows}
    assert by_method["needs-gpu"][:2] == ("unsupported", "this method needs a CUDA device")
    assert main([*run, "--retry-failed"]) == 0
    _, again = query(db, "SELECT finished_at FROM runs WHERE method = 'needs-gpu'")
    assert again == [(by_method["needs-gpu"][2],)]  # the same hardware: not run again


def test_select_pending_semantics():
    class Spec:
        def __init__(self, key):
            self.run_key = key

    runs = [Spec(k) for k in "abcd"]
    stored = {"a": "ok", "b": "failed", "c": "invalid"}
    assert [s.run_key for s in select_pending(runs, stored, rerun=False, retry_failed=False)] == [
        "d"]
    assert [s.run_key for s in select_pending(runs, stored, rerun=False, retry_failed=True)] == [
        "b", "d"]
    assert len(select_pending(runs, stored, rerun=True, retry_failed=False)) == 4


def test_isolation_run_uses_a_fresh_process_per_run(tmp_path):
    suite = write_suite(tmp_path, "[steady]", seeds="[0, 1]", extra="isolation: run")
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db))
    assert proc.returncode == 0, proc.stderr
    _, rows = query(db, "SELECT count(DISTINCT env_id), count(*) FROM runs")
    assert rows[0][1] == 2
    _, pids = query(db, "SELECT DISTINCT value FROM metrics WHERE metric = 'worker_pid'")
    assert len(pids) == 2


def test_cpu_workers_run_side_by_side_with_a_share_of_the_cores(tmp_path):
    suite = write_suite(tmp_path, "[steady]", seeds="[0, 1, 2, 3]", extra="workers: 2")
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert set(statuses(db).values()) == {"ok"}
    _, pids = query(db, "SELECT DISTINCT value FROM metrics WHERE metric = 'worker_pid'")
    assert len(pids) == 2
    dry = harness_cli("run", str(suite), "--dry-run", "--device", "cpu")
    assert "workers 2" in dry.stdout


@pytest.mark.skipif(os.name != "posix", reason="signals")
def test_plugin_failure_is_named_and_suite_still_runs(tmp_path):
    suite = write_suite(tmp_path, "[steady]")
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db), "--executor", "inline",
                       "-p", str(FIXTURES / "raising_hook.py"))
    assert proc.returncode == 0, proc.stderr
    assert "plugin 'raising_hook' failed" in proc.stderr
    assert "observer broke" in proc.stderr
    assert statuses(db) == {("steady", 0): "ok"}
