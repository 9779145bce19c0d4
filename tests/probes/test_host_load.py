"""Host-load probe: real readings here, nulls with reasons when a source fails, the busy-host
diagnosis, a short start-of-run sample under a real CPU hog, and NVML's part (faked)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

from harness.api import Recorder
from harness.probes import host_load as host_load_mod
from harness.probes.host_load import (
    BUSY_OTHER_CPU_PCT,
    GPU_METRICS,
    METRICS,
    HostLoadProbe,
    busy_host_reason,
    host_busy_now,
)


def _rows(rec: Recorder, phase: str) -> dict[str, object]:
    return {r.metric: r for r in rec.metrics if r.phase == phase}


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _sampler_threads() -> int:
    return sum(t.name == "harness-probe" and t.is_alive() for t in threading.enumerate())


def test_records_this_machines_figures() -> None:
    before = _sampler_threads()
    rec = Recorder()
    with HostLoadProbe("cpu", interval_s=0.05).measure("forward", rec):
        _spin(0.5)
    assert _sampler_threads() == before  # the sampler stopped on exit
    rows = _rows(rec, "forward")
    assert {(r.metric, r.unit, r.stat) for r in rows.values()} == set(METRICS)  # no GPU rows
    assert rows["host_cpus"].value == psutil.cpu_count()
    assert rows["host_load"].value is not None and rows["host_load"].value >= 0
    other, peak = rows["other_cpu_share"].value, rows["other_cpu_share_peak"].value
    own = rows["own_cpu_share"].value
    assert other is not None and 0 <= other <= peak <= 100
    assert own is not None and own > 100 / psutil.cpu_count() * 0.3  # we spun one CPU
    for metric in ("cpu_freq_mhz", "cpu_freq_max_mhz"):  # a VM may not tell its clock
        row = rows[metric]
        assert (row.value is not None and row.value > 0) or row.reason


def test_children_count_as_own_cpu() -> None:
    code = "import time\nt = time.time() + 0.8\nwhile time.time() < t: pass"
    rec = Recorder()
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        with HostLoadProbe("cpu", interval_s=0.05).measure("train", rec):
            time.sleep(0.7)
    finally:
        child.kill()
        child.wait()
    own = rec.value("train", "own_cpu_share")
    assert own is not None and own > 10  # the child's spinning is this tree's, not others'


def test_short_phase_has_no_cpu_share_but_says_why() -> None:
    rec = Recorder()
    with HostLoadProbe("cpu").measure("apply", rec):
        pass
    rows = _rows(rec, "apply")
    for metric in ("other_cpu_share", "other_cpu_share_peak", "own_cpu_share"):
        assert rows[metric].value is None and "phase too short" in rows[metric].reason
    assert rows["host_load"].value is not None


def test_unreadable_sources_are_nulls_with_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loadavg() -> tuple[float, float, float]:
        raise OSError("Load average unobtainable")

    def no_stat() -> None:
        raise RuntimeError("no /proc/stat")

    monkeypatch.setattr(os, "getloadavg", no_loadavg)
    monkeypatch.setattr(psutil, "cpu_times", no_stat)
    monkeypatch.setattr(psutil, "cpu_freq", lambda percpu=False: None)
    rec = Recorder()
    with HostLoadProbe("cpu", interval_s=0.05).measure("eval", rec):
        time.sleep(0.15)
    rows = _rows(rec, "eval")
    assert {(r.metric, r.unit, r.stat) for r in rows.values()} == set(METRICS)
    assert rows["host_load"].value is None
    assert rows["host_load"].reason == "os.getloadavg failed: OSError: Load average unobtainable"
    for metric in ("other_cpu_share", "other_cpu_share_peak", "own_cpu_share"):
        assert rows[metric].value is None and "no /proc/stat" in rows[metric].reason
    assert rows["cpu_freq_mhz"].value is None
    assert "reports no CPU frequency" in rows["cpu_freq_mhz"].reason
    assert rows["host_cpus"].value == psutil.cpu_count()  # the rest still works


def test_psutil_failing_outright_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise psutil.AccessDenied(os.getpid())

    monkeypatch.setattr(psutil, "Process", broken)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    rec = Recorder()
    with HostLoadProbe("cpu").measure("load", rec):
        time.sleep(0.12)
    rows = _rows(rec, "load")
    assert rows["own_cpu_share"].value is None
    assert rows["own_cpu_share"].reason.startswith("CPU times unreadable: psutil failed")
    assert rows["host_cpus"].value is None and "logical CPUs is unknown" in rows["host_cpus"].reason


def test_probe_never_raises_into_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self, *args):
        raise RuntimeError("sampler exploded")

    monkeypatch.setattr(host_load_mod._Session, "__init__", boom)
    rec = Recorder()
    with HostLoadProbe("cpu").measure("load", rec):
        pass
    assert all(r.value is None and "failed to start" in r.reason for r in rec.metrics)
    assert len(rec.metrics) == len(METRICS)
    monkeypatch.undo()

    monkeypatch.setattr(host_load_mod._Session, "rows", boom)
    rec = Recorder()
    with (pytest.raises(ValueError, match="the phase's own error"),
          HostLoadProbe("cpu").measure("eval", rec)):
        raise ValueError("the phase's own error")
    assert all(r.value is None and "sampler exploded" in r.reason for r in rec.metrics)


@pytest.mark.parametrize(("figures", "expected"), [
    ({"host_load": 3.1, "host_cpus": 2, "other_cpu_share": 48.0, "own_cpu_share": 45.0},
     "host busy (load 3.1 on 2 CPUs, 48 % CPU used by other processes)"),
    # a run's own 2 threads on 2 CPUs: load ~2, nobody else
    ({"host_load": 2.3, "host_cpus": 2, "other_cpu_share": 4.0, "own_cpu_share": 95.0}, None),
    ({"host_load": 0.4, "host_cpus": 2, "other_cpu_share": BUSY_OTHER_CPU_PCT}, None),
    ({"host_load": 0.4, "host_cpus": 2, "other_cpu_share": BUSY_OTHER_CPU_PCT + 1},
     "host busy (load 0.4 on 2 CPUs, 26 % CPU used by other processes)"),
    # load beyond what our own tree keeps busy: 4.5 - 1 CPU > 2 CPUs (I/O waits, a lag)
    ({"host_load": 4.5, "host_cpus": 2, "other_cpu_share": 10.0, "own_cpu_share": 50.0},
     "host busy (load 4.5 on 2 CPUs, 10 % CPU used by other processes)"),
    ({"host_load": 2.5, "host_cpus": 2, "other_cpu_share": 10.0, "own_cpu_share": 50.0}, None),
    # the load left over from our own previous minute, nobody else running now
    ({"host_load": 2.3, "host_cpus": 2, "other_cpu_share": 1.0, "own_cpu_share": 0.0}, None),
    ({"host_load": 4.5, "host_cpus": 2, "other_cpu_share": None}, "host busy (load 4.5 on 2 CPUs)"),
    ({"host_load": 0.2, "host_cpus": 16, "other_cpu_share": 1.0, "gpu_other_processes": 2.0},
     "host busy (load 0.2 on 16 CPUs, 1 % CPU used by other processes, "
     "2 other processes on the GPU)"),
    ({"gpu_other_processes": 1.0}, "host busy (1 other process on the GPU)"),
    ({"gpu_other_processes": 0.0, "host_load": None, "other_cpu_share": None}, None),
    ({}, None),
])
def test_busy_host_reason(figures: dict, expected: str | None) -> None:
    assert busy_host_reason(figures) == expected


def _orphan_hogs(count: int, seconds: float) -> list[int]:
    """``count`` CPU-spinning processes outside this process tree (reparented to init when
    their shell exits), each ending by itself after ``seconds``; returns their PIDs."""
    code = f"import time\nt = time.time() + {seconds}\nwhile time.time() < t: pass"
    one = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)} >/dev/null 2>&1 & echo $!"
    out = subprocess.run(["sh", "-c", "; ".join([one] * count)], capture_output=True,
                         text=True, check=True, timeout=10)
    return [int(pid) for pid in out.stdout.split()]


def test_host_busy_now_sees_a_cpu_hog() -> None:
    pids: list[int] = []
    try:
        pids = _orphan_hogs(max(2, psutil.cpu_count()), 1.5)
        assert len(pids) >= 2
        time.sleep(0.3)  # interpreter start-up
        reason = host_busy_now(0.5)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert reason is not None and reason.startswith("host busy (")
    assert "% CPU used by other processes" in reason


def test_host_busy_now_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_stat() -> None:
        raise RuntimeError("no /proc/stat")

    monkeypatch.setattr(psutil, "cpu_times", no_stat)
    assert host_busy_now(0.01) is None


class FakeNvml:
    """Just enough of pynvml for the GPU readings."""

    NVML_CLOCK_SM = 1

    def __init__(self) -> None:
        self.refs = 0
        self.procs: list[SimpleNamespace] = []
        self.max_clock_supported = True

    def nvmlInit(self) -> None:
        self.refs += 1

    def nvmlShutdown(self) -> None:
        self.refs -= 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return list(self.procs)

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        return 1500

    def nvmlDeviceGetMaxClockInfo(self, h: int, kind: int) -> int:
        if not self.max_clock_supported:
            raise RuntimeError("Not Supported")
        return 1980


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_gpu_other_processes_and_sm_clock(fake: FakeNvml) -> None:
    fake.procs = [SimpleNamespace(pid=os.getpid()), SimpleNamespace(pid=999_999_999)]
    rec = Recorder()
    with HostLoadProbe("cuda:0", interval_s=0.05).measure("forward", rec):
        time.sleep(0.2)
    assert fake.refs == 0
    rows = _rows(rec, "forward")
    assert {(r.metric, r.unit, r.stat) for r in rows.values()} == set(METRICS + GPU_METRICS)
    assert rows["gpu_other_processes"].value == 1
    assert rows["gpu_sm_clock_mhz"].value == 1500
    assert rows["gpu_sm_clock_max_mhz"].value == 1980
    figures = {r.metric: r.value for r in rows.values() if r.stat in ("value", "max")}
    reason = busy_host_reason(figures)
    assert reason is not None and reason.endswith("1 other process on the GPU)")


def test_gpu_readings_that_cannot_be_told_apart_are_nulls(fake: FakeNvml) -> None:
    fake.procs = [SimpleNamespace(pid=999_999_998)]  # host PIDs in a container: none is ours
    fake.max_clock_supported = False
    rec = Recorder()
    with HostLoadProbe("cuda:0").measure("forward", rec):
        time.sleep(0.02)
    rows = _rows(rec, "forward")
    assert rows["gpu_other_processes"].value is None
    assert "PIDs differ" in rows["gpu_other_processes"].reason
    assert rows["gpu_sm_clock_max_mhz"].value is None
    assert "Not Supported" in rows["gpu_sm_clock_max_mhz"].reason
    assert rows["gpu_sm_clock_mhz"].value == 1500
    fake.procs = []  # nobody on the GPU at all: 0 others
    rec = Recorder()
    with HostLoadProbe("cuda:0").measure("forward", rec):
        pass
    assert rec.value("forward", "gpu_other_processes", stat="max") == 0


def test_cuda_device_without_nvml_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    rec = Recorder()
    with HostLoadProbe("cuda:0").measure("decode", rec):
        pass
    rows = _rows(rec, "decode")
    for metric, _, _ in GPU_METRICS:
        assert rows[metric].value is None
        assert rows[metric].reason == "NVML unavailable: Driver Not Loaded"
    assert rows["host_load"].value is not None  # the host half still works


def _root_pid(_: int) -> tuple[int, int]:
    from harness.probes.host_load import run_root

    return run_root().pid, os.getppid()


def test_a_spawned_worker_counts_its_driver_tree_as_its_own() -> None:
    """A suite's other workers are its own load, not another program's: in a worker the
    executor spawned, "own" is the driver's tree; in a plain process, this process's."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from harness.probes.host_load import run_root

    assert run_root().pid == os.getpid()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        root, parent = pool.submit(_root_pid, 0).result(timeout=60)
    assert root == parent == os.getpid()
