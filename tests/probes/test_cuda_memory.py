"""CUDA allocator probe off-GPU: nulls with a reason, never zeros."""

from __future__ import annotations

import pytest

from harness.api import Recorder
from harness.probes.cuda_memory import METRICS, CudaMemoryProbe


def _check_nulls(rec: Recorder, phase: str, reason_part: str) -> None:
    rows = [r for r in rec.metrics if r.phase == phase]
    assert {(r.metric, r.stat) for r in rows} == set(METRICS)
    for row in rows:
        assert row.value is None
        assert row.unit == "bytes"
        assert row.reason is not None and reason_part in row.reason


def test_cpu_device_records_nulls_with_the_same_reason_every_phase() -> None:
    rec = Recorder()
    probe = CudaMemoryProbe("cpu")
    assert probe.name == "cuda_memory"
    for phase in ("load", "eval"):
        with probe.measure(phase, rec):
            pass
        _check_nulls(rec, phase, "device is cpu: no CUDA allocator")
    assert len({r.reason for r in rec.metrics}) == 1


def test_cuda_device_without_cuda_build_or_gpu_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    rec = Recorder()
    with CudaMemoryProbe("cuda:0").measure("load", rec):
        pass
    expected = "not compiled with CUDA" if torch.version.cuda is None else "no CUDA device"
    _check_nulls(rec, "load", expected)

    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rec = Recorder()
    with CudaMemoryProbe("cuda").measure("load", rec):
        pass
    _check_nulls(rec, "load", "no CUDA device available")


def test_allocator_failure_on_exit_does_not_mask_phase_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A CUDA error (say, an illegal access) makes synchronize raise on exit: the probe
    records nulls with that reason and the phase's own exception propagates."""
    torch = pytest.importorskip("torch")
    import harness.probes.cuda_memory as cm

    monkeypatch.setattr(cm, "_unavailable_reason", lambda device: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    state = {"n": 0}

    def sync(device=None) -> None:
        state["n"] += 1
        if state["n"] > 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(torch.cuda, "synchronize", sync)
    rec = Recorder()
    with pytest.raises(ValueError, match="workload"), CudaMemoryProbe("cuda:0").measure("x", rec):
        raise ValueError("workload")
    _check_nulls(rec, "x", "illegal memory access")
