"""The cluster executors, against a real local Ray cluster and submitit's local executor.

Each must keep the subprocess executor's promises: every failure is the same status with
the same stored metrics, the driver alone writes the store, and a killed driver's rerun
resumes only what is left.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.executors import Placement, Resources
from harness.executors.ray import task_error
from harness.executors.slurm import SlurmExecutor
from harness.executors.slurm import _Flight as _SlurmFlight
from harness.executors.worker import WorkerConfig, hardware_label, hardware_mismatch
from harness.store import query
from tests.test_runner import harness_cli, statuses, write_suite

pytest.importorskip("ray")
pytest.importorskip("submitit")

FAULTS = """
    - steady
    - crash
    - exit
    - oom
    - raise
    - hang
    - needs-gpu
    - hog
    - {name: steady, params: {size: 32}}
    """
EXPECTED = {"steady": "ok", "crash": "crashed", "exit": "crashed", "oom": "oom",
            "raise": "failed", "hang": "timeout", "needs-gpu": "unsupported", "hog": "oom"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Ray on one machine, on the loopback address only (its single-node mode).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """An existing Ray cluster on this machine (``ray start --head``), as a user's would
    be; a driver joins it with ``--address auto``."""
    ray_bin = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
    env = {**os.environ, **LOOPBACK}
    subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1",
                    "--port", str(_free_port()), "--num-cpus", "2",
                    "--include-dashboard", "false", "--disable-usage-stats"],
                   check=True, capture_output=True, timeout=120, env=env)
    try:
        yield "auto"
    finally:
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True, timeout=120, env=env)


def _stored(db: Path) -> dict[str, tuple[str, str | None, frozenset]]:
    """Per method+params: status, error's words, and the (phase, metric, stat)
    measured; with ``eval/score``'s value, the only metric whose value is not a timing."""
    _, runs = query(db, "SELECT run_key, method, params, status, error FROM runs")
    _, metrics = query(db, "SELECT run_key, phase, metric, stat, "
                           "CASE WHEN metric = 'score' THEN value END FROM metrics "
                           "WHERE metric NOT IN ('worker_pid')")
    measured: dict[str, set] = {}
    for key, *row in metrics:
        measured.setdefault(key, set()).add(tuple(row))
    return {f"{method} {params}": (status, _figures_out(error), frozenset(measured.get(key, ())))
            for key, method, params, status, error in runs}


def _figures_out(error: str | None) -> str | None:
    """What an error says, without the figures (the RSS a run reached varies) and the
    executor's words on what it did ("killed", "its task was cancelled")."""
    return re.sub(r"\d+(\.\d+)?", "N", error.split(" [in ")[0].split(";")[0]) if error else None


def test_ray_and_slurm_match_the_subprocess_executor(tmp_path, ray_cluster):
    # 8 s: under a loaded CI box the hog's watchdog must see it pass 1 GiB before the deadline.
    suite = write_suite(tmp_path, FAULTS, extra="slurm: {cluster: local, max_jobs: 2}",
                        limits="{timeout: 8, memory: {host_gb: 1.0}}")
    stored = {}
    for executor, extra in (("subprocess", ()), ("ray", ("--address", ray_cluster)),
                            ("slurm", ())):
        db = tmp_path / f"{executor}.duckdb"
        proc = harness_cli("run", str(suite), "--db", str(db), "--executor", executor, *extra)
        assert proc.returncode == 1, proc.stderr  # failures make the exit code non-zero
        stored[executor] = _stored(db)
        got = {method: status for (method, _), status in statuses(db).items()}
        assert got == EXPECTED, (executor, {run: stored[executor][run][:2]
                                            for run in stored[executor]})
    for executor in ("ray", "slurm"):
        for run, (status, error, measured) in stored["subprocess"].items():
            other = stored[executor][run]
            assert other[0] == status, (executor, run)
            if status != "crashed":  # a dead process's error names the executor's view
                assert other[1] == error, (executor, run, other[1])
            assert other[2] == measured, (executor, run)  # the same probes, stats, score

    _, rows = query(tmp_path / "ray.duckdb",
                    "SELECT r.method, r.status, r.traceback, e.hostname, "
                    "CAST(e.details->>'torch_threads' AS INTEGER), "
                    "r.hardware "
                    "FROM runs r LEFT JOIN environments e USING (env_id)")
    by_method = {method: rest for method, *rest in rows}
    assert "Segmentation fault" in by_method["crash"][1]  # faulthandler's stacks, from the log
    # Stacks dumped before the deadline; under load the run may not have reached work() yet.
    assert "in run_spec" in by_method["hang"][1], by_method["hang"][1]
    assert by_method["steady"][2] == socket.gethostname()  # the node, in the environment row
    assert by_method["steady"][3] == 1  # resources.cpus: one CPU per run by default
    assert by_method["steady"][4].endswith(" x1")  # and the hardware group says so
    _, rows = query(tmp_path / "slurm.duckdb", "SELECT method, traceback FROM runs")
    assert "Segmentation fault" in dict(rows)["crash"]  # the job's stderr
    assert not list((tmp_path / "slurm.duckdb.slurm").iterdir())  # committed jobs cleaned


@pytest.mark.parametrize("executor", ["ray", "slurm"])
def test_a_killed_driver_loses_nothing_finished_and_the_rerun_resumes(tmp_path, executor):
    """With Ray, each driver starts a cluster of its own (``--address local``)."""
    marker = tmp_path / "killed-once"
    suite = write_suite(tmp_path, f"""
        - steady
        - {{name: kill-driver, params: {{marker: "{marker}"}}}}
        - {{name: steady, params: {{size: 16}}}}
        """, seeds="[0, 1]", extra=f"executor: {executor}\n"
                                  "resources: {cpus: 2}\nslurm: {cluster: local, max_jobs: 1}")
    db = tmp_path / "h.duckdb"
    own = ("--address", "local") if executor == "ray" else ()
    first = harness_cli("run", str(suite), "--db", str(db), *own)
    assert first.returncode == -9  # SIGKILL from the kill-driver method
    assert marker.exists()
    assert statuses(db) == {("steady", 0): "ok", ("steady", 1): "ok"}  # finished runs kept

    second = harness_cli("run", str(suite), "--db", str(db), *own)
    assert second.returncode == 0, second.stderr
    assert "2 run(s) already in the store are skipped" in second.stderr
    _, rows = query(db, "SELECT count(*), count(DISTINCT run_key) FROM runs WHERE status = 'ok'")
    assert rows == [(6, 6)]


def test_isolation_run_gives_each_ray_task_a_fresh_worker(tmp_path, ray_cluster):
    suite = write_suite(tmp_path, "[steady]", seeds="[0, 1, 2]",
                        extra="executor: ray\nisolation: run\nresources: {cpus: 2}")
    db = tmp_path / "h.duckdb"
    proc = harness_cli("run", str(suite), "--db", str(db), "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    _, pids = query(db, "SELECT DISTINCT value FROM metrics WHERE metric = 'worker_pid'")
    assert len(pids) == 3
    _, threads = query(db, "SELECT DISTINCT CAST(e.details->>'torch_threads' AS INTEGER) FROM runs "
                           "JOIN environments e USING (env_id)")
    assert threads == [(2,)]  # resources.cpus: the run's threads, and its hardware label:
    _, hardware = query(db, "SELECT DISTINCT hardware FROM runs")
    assert hardware[0][0].endswith(" x2")


def test_dry_run_names_what_each_run_asks_of_the_cluster(tmp_path, ray_cluster):
    suite = write_suite(tmp_path, "[steady]", extra="resources: {cpus: 2}")
    dry = harness_cli("run", str(suite), "--dry-run", "--executor", "ray",
                      "--address", ray_cluster)
    assert dry.returncode == 0, dry.stderr
    assert "ignored" not in dry.stderr  # --executor ray reads resources: no warning
    assert "executor ray, 2 CPU(s) and 0 GPU(s) per run" in dry.stdout
    assert "x2)" in dry.stdout  # the hardware group as a node with 2 CPUs sees it


def test_a_run_placed_on_other_hardware_fails_with_both_names(tmp_path):
    config = WorkerConfig(modules=(), blocked=(), base_dir=None, device="cpu",
                          cache_dir=str(tmp_path), threads=1)
    elsewhere = SimpleNamespace(run_key="k", config={"hardware": "gpu: NVIDIA H100 80GB HBM3"})
    result = hardware_mismatch(config, elsewhere)
    assert result["status"] == "failed"
    assert "keyed to 'gpu: NVIDIA H100 80GB HBM3'" in result["error"]
    assert "resources.accelerator_type" in result["error"]
    here = SimpleNamespace(run_key="k", config={"hardware": hardware_label(config)})
    assert hardware_mismatch(config, here) is None


def test_resources_default_to_one_gpu_per_run_on_cuda_only():
    assert Resources().gpus_per_run("cuda") == 1.0
    assert Resources().gpus_per_run("cpu") == 0.0
    assert Resources(gpus=0.5).gpus_per_run("cuda") == 0.5
    assert not Placement().remote and Placement(executor="slurm").remote


def test_settings_another_executor_ignores_are_flagged(tmp_path):
    suite = write_suite(tmp_path, "[steady]", extra="resources: {cpus: 2}\nray: {address: auto}")
    proc = harness_cli("run", str(suite), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())
    assert ("resources: ignored: only the ray and slurm executors read it, and this suite's "
            "executor is subprocess") in text
    assert "ray: ignored: only the ray executor reads it" in text
    proc = harness_cli("run", str(suite), "--dry-run", "--address", "auto")
    assert "--address is read by the ray executor only" in " ".join(proc.stderr.split())


@pytest.fixture(autouse=True)
def _loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in LOOPBACK.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def test_a_ray_task_that_raised_is_stored_with_its_own_exception():
    import ray

    error, trace = task_error(ray.exceptions.RayTaskError(
        "_run_task", "Traceback (most recent call last):\n  ...\nImportError: no plugin",
        ImportError("no module named 'my_plugin'")))
    assert error == "the Ray task failed: ImportError: no module named 'my_plugin'"
    assert "Traceback" in trace and "\x1b" not in error


class FakeJob:
    """A submitit job that ended: its state, and what ``result()`` raises."""

    def __init__(self, tmp_path: Path, state: str, raises: BaseException) -> None:
        self.job_id, self.state, self.raises = "42", state, raises
        self.paths = SimpleNamespace(folder=tmp_path, result_pickle=tmp_path / "none.pkl",
                                     stderr=tmp_path / "42.err")
        self.paths.stderr.write_text("slurmstepd: error: Detected 1 oom_kill event\n")

    def result(self):
        raise self.raises


@pytest.mark.parametrize(("state", "status"), [
    ("OUT_OF_MEMORY", "oom"), ("TIMEOUT", "timeout"), ("NODE_FAIL", "crashed"),
    ("CANCELLED by 1234", "crashed"),
])
def test_slurm_job_states_become_statuses_at_once(tmp_path, state, status):
    from submitit.core.utils import UncompletedJobError

    spec = SimpleNamespace(run_key="k")
    flight = _SlurmFlight(spec, FakeJob(tmp_path, state, UncompletedJobError("x")), 0.0)
    executor = SimpleNamespace(local=False)
    result = SlurmExecutor._outcome(executor, flight)  # no wait for a result file
    assert result["status"] == status
    assert result["error"] == f"job 42 ended without a result (state {state.split()[0]})"
    assert "oom_kill" in result["traceback"]  # the job's stderr


def test_a_slurm_job_that_raised_is_crashed_with_its_exception(tmp_path):
    from submitit.core.utils import FailedJobError

    (tmp_path / "none.pkl").write_text("")  # it left a result: the pickled exception
    spec = SimpleNamespace(run_key="k")
    raised = FailedJobError("Job (task=0) failed during processing with trace:\n"
                            "Traceback ...\nModuleNotFoundError: No module named 'my_plugin'")
    flight = _SlurmFlight(spec, FakeJob(tmp_path, "COMPLETED", raised), 0.0)
    result = SlurmExecutor._outcome(SimpleNamespace(local=False), flight)
    assert result["status"] == "crashed"
    assert result["error"] == "job 42 failed: ModuleNotFoundError: No module named 'my_plugin'"
