"""The probes on a real GPU, checked against hand-written references.

Skipped without CUDA. ``harness.probes`` is imported before torch touches CUDA so that its
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is in force when the driver is initialised.
"""

from __future__ import annotations

import gc
import statistics
import time

import pytest

from harness.api import MeasureSettings, Recorder
from harness.probes import (
    CudaMemoryProbe,
    HostLoadProbe,
    LoopTimer,
    NvmlProbe,
    gpu_inventory,
    time_callable,
    visible_gpu_count,
)

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

GiB = 2**30
MiB = 2**20


def _matmul() -> object:
    """A fixed, GPU-bound workload: one 4096x4096 bf16 matmul into a preallocated output."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16, generator=g)
    c = torch.empty_like(a)
    return lambda: torch.matmul(a, b, out=c)


def _hand_event_median(fn, iters: int) -> float:
    """The textbook loop: warm up, an event pair per iteration, one sync, median in ms."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    pairs = []
    for _ in range(iters):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def _settle() -> None:
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def test_timing_matches_a_hand_written_cuda_event_loop() -> None:
    fn = _matmul()
    measure = MeasureSettings(
        warmup=10, min_repeats=200, min_seconds=0.3, max_seconds=30, rel_precision=None
    )
    ours: list[float] = []
    ref: list[float] = []
    for _ in range(5):  # alternate the two so clock/thermal drift hits both alike
        r = time_callable(fn, measure, "cuda")
        assert r.clock == "cuda_event"
        assert r.invalid_reasons(measure) == []
        assert r.stats["total_ms"] >= 300  # min_seconds holds in GPU time, not just wall
        ours.append(r.stats["median"])
        ref.append(_hand_event_median(fn, len(r.samples_ms)))
    ours_ms, ref_ms = statistics.median(ours), statistics.median(ref)
    assert ref_ms > 0
    assert abs(ours_ms - ref_ms) / ref_ms < 0.02, (ours, ref)


def test_cuda_memory_probe_sees_one_gib() -> None:
    _settle()
    before = torch.cuda.memory_allocated()
    rec = Recorder()
    with CudaMemoryProbe("cuda").measure("alloc", rec):
        x = torch.empty(GiB, dtype=torch.uint8, device="cuda")
        x.fill_(1)
        del x
    peak = rec.value("alloc", "cuda_allocated_peak", stat="max")
    reserved = rec.value("alloc", "cuda_reserved_peak", stat="max")
    end = rec.value("alloc", "cuda_allocated_end")
    assert peak is not None and reserved is not None and end is not None
    assert abs((peak - before) - GiB) <= 0.01 * GiB
    assert reserved >= GiB
    assert end == pytest.approx(before, abs=MiB)
    _settle()


def _nvml_phase(phase: str) -> Recorder:
    _settle()
    rec = Recorder()
    with (
        CudaMemoryProbe("cuda:0").measure(phase, rec),
        NvmlProbe("cuda:0").measure(phase, rec),
    ):
        x = torch.empty(GiB, dtype=torch.uint8, device="cuda:0")
        x.fill_(1)
        torch.cuda.synchronize()
        time.sleep(0.25)  # many 10 ms sampler ticks while the GiB is held
        del x
    _settle()
    return rec


def test_nvml_probe_sees_one_gib_plus_a_stable_offset() -> None:
    if visible_gpu_count() == 0:
        pytest.skip("NVML is not usable here")
    torch.cuda.init()
    _settle()
    recs = [_nvml_phase(f"alloc{i}") for i in range(2)]

    deltas = []
    for i, rec in enumerate(recs):
        peak = rec.value(f"alloc{i}", "vram_used_peak", stat="max")
        base = rec.value(f"alloc{i}", "vram_used_baseline")
        assert peak is not None and base is not None
        deltas.append(peak - base)
        assert GiB <= peak - base <= GiB + 64 * MiB
    assert abs(deltas[0] - deltas[1]) <= 4 * MiB, deltas

    rows = [
        next(r for r in rec.metrics if r.metric == "vram_process_peak" and r.phase == f"alloc{i}")
        for i, rec in enumerate(recs)
    ]
    if any(r.value is None for r in rows):  # containers: NVML PIDs aren't ours
        assert all(r.reason for r in rows if r.value is None)
        return
    offsets = [r.value - GiB for r in rows]
    assert all(0 <= off < 4 * GiB for off in offsets), offsets  # CUDA context + caches
    assert abs(offsets[0] - offsets[1]) <= 4 * MiB, offsets


def test_nvml_energy_power_and_thermals_over_a_two_second_window() -> None:
    if visible_gpu_count() == 0:
        pytest.skip("NVML is not usable here")
    fn = _matmul()
    fn()
    torch.cuda.synchronize()
    rec = Recorder()
    t0 = time.perf_counter()
    with NvmlProbe("cuda:0").measure("burn", rec):
        while time.perf_counter() - t0 < 2.0:
            for _ in range(50):
                fn()
            torch.cuda.synchronize()
    window = time.perf_counter() - t0
    energy = next(r for r in rec.metrics if r.metric == "energy")
    power = rec.value("burn", "power_mean")
    assert energy.value is not None and energy.value > 0
    assert energy.stat in ("value", "integrated_power")
    if energy.stat == "value":
        assert energy.reason is None  # >= 1 s window: no short-window flag
    assert power is not None and power > 50
    # The counter and the (lagging, ~1 s averaged) power readings roughly agree.
    assert 0.4 < energy.value / (power * window) < 2.5
    for metric, lo, hi in (
        ("temperature_start", 5, 110),
        ("temperature_end", 5, 110),
        ("sm_clock_start", 100, 4000),
        ("sm_clock_end", 100, 4000),
    ):
        value = rec.value("burn", metric)
        assert value is not None and lo <= value <= hi, (metric, value)


def test_inventory_agrees_with_torch() -> None:
    inventory = gpu_inventory()
    if not inventory:
        pytest.skip("NVML is not usable here")
    assert visible_gpu_count() == len(inventory) == torch.cuda.device_count()
    for gpu in inventory:
        props = torch.cuda.get_device_properties(gpu["index"])
        assert gpu["name"] == props.name
        # NVML and CUDA disagree by the driver's reservation: a few percent at most
        assert gpu["memory_total"] == pytest.approx(props.total_memory, rel=0.05)
        assert gpu["driver_version"]
        uuid = getattr(props, "uuid", None)
        if uuid is not None and gpu["uuid"].startswith("GPU-"):
            assert gpu["uuid"] == f"GPU-{uuid}"  # torch and NVML index the same device


def test_loop_timer_events_match_the_wall_clock_of_synchronized_steps() -> None:
    fn = _matmul()
    timer = LoopTimer("cuda")
    walls = []
    for _ in range(10):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with timer.step():
            fn()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - start) * 1e3)
    samples = timer.samples_ms()
    assert timer.clock == "cuda_event" and len(samples) == 10
    # Event time is GPU time: never more than the wall time around it, and close to it for
    # a GPU-bound matmul.
    assert statistics.median(samples) <= statistics.median(walls) * 1.05
    assert statistics.median(samples) >= statistics.median(walls) * 0.5


def test_cuda_event_loop_reaches_precision_on_a_steady_matmul(monkeypatch) -> None:
    """The CUDA path stops once the median's 95 % interval is within 1 %, syncing once per
    batch, and its stats carry the interval."""
    from harness.probes.timing import STAT_KEYS

    fn = _matmul()
    real_sync = torch.cuda.synchronize
    syncs: list[int] = []

    def counted(device=None):
        syncs.append(1)
        real_sync(device)

    monkeypatch.setattr(torch.cuda, "synchronize", counted)
    measure = MeasureSettings(warmup=10, min_repeats=20, min_seconds=0.2, max_seconds=30,
                              rel_precision=0.01)
    r = time_callable(fn, measure, "cuda")
    assert r.clock == "cuda_event"
    assert r.invalid_reasons(measure) == []
    assert set(r.stats) == set(STAT_KEYS)
    n = len(r.samples_ms)
    assert r.stats["median_rel_ci"] <= 0.01
    assert r.stats["median_ci_lo"] <= r.stats["median"] <= r.stats["median_ci_hi"]
    assert r.stats["median_ci_hi"] - r.stats["median_ci_lo"] > 0 or r.stats["iqr"] == 0
    assert r.wall_s is not None and r.wall_s < 30  # stopped by precision, not max_seconds
    assert len(syncs) - 3 < 20 < n  # cold call (2) + warmup (1) + one per batch


def test_host_load_probe_reads_the_gpu() -> None:
    if visible_gpu_count() == 0:
        pytest.skip("NVML is not usable here")
    fn = _matmul()
    fn()
    torch.cuda.synchronize()
    rec = Recorder()
    t0 = time.perf_counter()
    with HostLoadProbe("cuda:0", interval_s=0.05).measure("burn", rec):
        while time.perf_counter() - t0 < 0.6:
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
    rows = {r.metric: r for r in rec.metrics}
    for metric in ("gpu_other_processes", "gpu_sm_clock_mhz", "gpu_sm_clock_max_mhz",
                   "host_load", "host_cpus", "other_cpu_share", "own_cpu_share"):
        assert metric in rows, metric
    clock, top = rows["gpu_sm_clock_mhz"].value, rows["gpu_sm_clock_max_mhz"].value
    assert clock is not None and 100 <= clock <= 4000
    assert top is None or clock <= top * 1.01
    others = rows["gpu_other_processes"]
    if others.value is None:  # containers: NVML's PIDs aren't ours
        assert others.reason and "PIDs differ" in others.reason
    else:
        assert others.value >= 0
    assert rows["own_cpu_share"].value is not None and rows["own_cpu_share"].value > 0
