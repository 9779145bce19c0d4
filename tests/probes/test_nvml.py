"""NVML probe: nulls with reasons without NVML, device mapping, and the sampling logic
against a fake pynvml (no GPU on CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pynvml
import pytest

from harness.api import Recorder
from harness.probes import nvml as nvml_mod
from harness.probes.nvml import (
    METRICS,
    NvmlProbe,
    gpu_inventory,
    physical_ids,
    visible_gpu_count,
)

GiB = 2**30


def _rows(rec: Recorder, phase: str) -> dict[str, object]:
    return {r.metric: r for r in rec.metrics if r.phase == phase}


def _check_all_null(rec: Recorder, phase: str, reason_part: str) -> None:
    rows = [r for r in rec.metrics if r.phase == phase]
    assert {(r.metric, r.unit, r.stat) for r in rows} == set(METRICS)
    for row in rows:
        assert row.value is None
        assert row.reason is not None and reason_part in row.reason


@pytest.mark.parametrize(
    ("given", "expected"), [(None, "PCI_BUS_ID"), ("FASTEST_FIRST", "FASTEST_FIRST")]
)
def test_sets_pci_bus_order_on_import_unless_chosen(given: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"}
    if given is not None:
        env["CUDA_DEVICE_ORDER"] = given
    code = "import os, harness.probes; print(os.environ['CUDA_DEVICE_ORDER'])"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_cpu_device_records_nulls_with_reason() -> None:
    rec = Recorder()
    with NvmlProbe("cpu").measure("load", rec):
        pass
    _check_all_null(rec, "load", "device is cpu")


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except Exception:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVML")
def test_without_driver_records_nvml_error_text() -> None:
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("prefill", rec):
        pass
    _check_all_null(rec, "prefill", "NVML unavailable")
    assert gpu_inventory() == []
    assert visible_gpu_count() == 0


def test_init_failure_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail() -> None:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("decode", rec):
        pass
    _check_all_null(rec, "decode", "NVML unavailable: Driver Not Loaded")
    assert gpu_inventory() == []
    assert visible_gpu_count() == 0


def test_physical_ids_follows_cuda_visible_devices_rules() -> None:
    uuids = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-abcd-3333"]
    assert physical_ids(None, uuids) == [0, 1, 2]
    assert physical_ids("2,0", uuids) == [2, 0]
    assert physical_ids(" 1 , 2 ", uuids) == [1, 2]
    assert physical_ids("", uuids) == []
    assert physical_ids("-1", uuids) == []
    assert physical_ids("0,7,1", uuids) == [0]  # CUDA stops at the first invalid entry
    assert physical_ids("1,1,2", uuids) == [1]  # ... and at a repeat
    assert physical_ids("GPU-bbbb-2222,GPU-aaaa", uuids) == [1, 0]  # prefixes are allowed
    assert physical_ids("GPU-a", uuids) == []  # ambiguous prefix
    assert physical_ids("GPU-abcd,0", uuids) == [2, 0]
    assert physical_ids("MIG-1234", uuids) == ["MIG-1234"]


class FakeNvml:
    """Just enough of pynvml for the probe, with controllable readings."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self, uuids=("GPU-aaaa", "GPU-bbbb"), energy: bool = True) -> None:
        self.uuids = list(uuids)
        self.energy = energy
        self.refs = 0
        self.used = [1 * GiB] * len(self.uuids)
        self.procs: list[SimpleNamespace] = []
        self.power_w = 300.0
        self.power_fails = False
        self.temp = 40
        self.t0 = time.perf_counter()
        self.queried: set[int] = set()

    def nvmlInit(self) -> None:
        self.refs += 1

    def nvmlShutdown(self) -> None:
        self.refs -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.uuids)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return self.uuids.index(uuid)

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return self.uuids[h]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return b"Fake H100"  # old pynvml returned bytes

    def nvmlSystemGetDriverVersion(self) -> str:
        return "555.42"

    def nvmlDeviceGetMemoryInfo(self, h: int) -> SimpleNamespace:
        self.queried.add(h)
        return SimpleNamespace(used=self.used[h], total=80 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return list(self.procs)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if self.power_fails:
            raise self.NVMLError("Not Supported")
        return int(self.power_w * 1000)

    def nvmlDeviceGetTemperature(self, h: int, kind: int) -> int:
        return self.temp

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return 1980

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if not self.energy:
            raise self.NVMLError("Not Supported")
        return int(5_000_000 + self.power_w * (time.perf_counter() - self.t0) * 1000)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return fake


def test_samples_memory_power_energy_and_thermals(fake: FakeNvml) -> None:
    fake.procs = [
        SimpleNamespace(pid=os.getpid(), usedGpuMemory=2 * GiB),
        SimpleNamespace(pid=999_999_999, usedGpuMemory=7 * GiB),  # someone else's
    ]
    rec = Recorder()
    t0 = time.perf_counter()
    with NvmlProbe("cuda:1", interval_s=0.005).measure("train", rec):
        fake.used[1] = 3 * GiB
        time.sleep(0.1)
        fake.used[1] = 2 * GiB
        fake.temp = 55
        time.sleep(1.0)
    window = time.perf_counter() - t0
    assert fake.refs == 0  # every nvmlInit was paired with nvmlShutdown
    assert fake.queried == {1}
    rows = _rows(rec, "train")
    assert {(r.metric, r.unit, r.stat) for r in rows.values()} == set(METRICS)
    assert rows["vram_used_peak"].value == 3 * GiB
    assert rows["vram_used_baseline"].value == 1 * GiB
    assert rows["vram_process_peak"].value == 2 * GiB
    assert rows["power_mean"].value == pytest.approx(300.0)
    assert rows["temperature_start"].value == 40
    assert rows["temperature_end"].value == 55
    assert rows["sm_clock_start"].value == rows["sm_clock_end"].value == 1980
    energy = rows["energy"]
    assert energy.stat == "value" and energy.reason is None
    assert 300.0 * 1.1 * 0.99 <= energy.value <= 300.0 * window


def test_short_window_energy_is_kept_but_flagged(fake: FakeNvml) -> None:
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("prefill", rec):
        time.sleep(0.05)
    energy = _rows(rec, "prefill")["energy"]
    assert energy.value is not None and energy.value > 0
    assert energy.reason is not None
    assert "< 1 s: the NVML counter updates every ~20-100 ms" in energy.reason


def test_energy_falls_back_to_integrated_power(fake: FakeNvml) -> None:
    fake.energy = False
    rec = Recorder()
    t0 = time.perf_counter()
    with NvmlProbe("cuda:0", interval_s=0.005).measure("decode", rec):
        time.sleep(0.3)
    window = time.perf_counter() - t0
    energy = _rows(rec, "decode")["energy"]
    assert energy.stat == "integrated_power"
    assert 300.0 * 0.3 * 0.95 <= energy.value <= 300.0 * window
    assert energy.reason is not None and "energy counter unavailable" in energy.reason
    assert "window" in energy.reason


def test_no_per_process_info_is_a_null_with_reason(fake: FakeNvml) -> None:
    fake.procs = [SimpleNamespace(pid=12345678, usedGpuMemory=GiB)]  # host PIDs in a container
    fake.power_fails = True
    fake.energy = False
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("load", rec):
        time.sleep(0.03)
    rows = _rows(rec, "load")
    assert rows["vram_process_peak"].value is None
    assert "no process of this process tree" in rows["vram_process_peak"].reason
    assert rows["vram_used_peak"].value == GiB  # the rest still works
    assert rows["power_mean"].value is None and "Not Supported" in rows["power_mean"].reason
    assert rows["energy"].value is None and "power integration failed" in rows["energy"].reason

    fake.procs = [SimpleNamespace(pid=os.getpid(), usedGpuMemory=None)]
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("load", rec):
        pass
    reason = _rows(rec, "load")["vram_process_peak"].reason
    assert reason is not None and "no per-process memory" in reason


def test_visible_devices_map_torch_index_to_nvml_device(
    fake: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb")
    rec = Recorder()
    with NvmlProbe("cuda:0").measure("load", rec):
        pass
    assert fake.queried == {1}
    assert visible_gpu_count() == 1
    (gpu,) = gpu_inventory()
    assert gpu == {
        "index": 0,
        "nvml_index": 1,
        "name": "Fake H100",
        "uuid": "GPU-bbbb",
        "memory_total": 80 * GiB,
        "driver_version": "555.42",
    }
    rec = Recorder()
    with NvmlProbe("cuda:1").measure("load", rec):
        pass
    _check_all_null(rec, "load", "not among the 1 visible GPU(s)")
    assert fake.refs == 0


def test_mid_phase_failure_never_raises(fake: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self, *args):
        raise RuntimeError("driver went away")

    rec = Recorder()
    with NvmlProbe("cuda:0").measure("eval", rec):
        monkeypatch.setattr(nvml_mod._Session, "finish", broken)
    _check_all_null(rec, "eval", "driver went away")
    assert fake.refs == 0
