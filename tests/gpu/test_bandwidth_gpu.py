"""The roofline's peaks on a real GPU: device memory and pinned host-to-device copies."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_gpu_peaks_are_plausible_and_hbm_beats_pcie():
    from harness.probes.bandwidth import peak_bandwidth

    peaks = peak_bandwidth("cuda:0")
    assert set(peaks) == {"memory", "h2d"}
    assert 1e9 < peaks["h2d"] < 2e11  # PCIe / NVLink-C2C: a few GB/s to ~100 GB/s
    assert peaks["memory"] > peaks["h2d"]  # HBM copies beat the host link
