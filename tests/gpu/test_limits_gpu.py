"""limits.memory.cuda_gb on a real GPU: an allocation past the cap is torch's OOM, and the
cap is lifted for the worker's next run."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_memory_cap_turns_an_allocation_past_it_into_oom():
    from harness.context import _cuda_memory_cap

    with _cuda_memory_cap(0.25, "cuda:0"), pytest.raises(torch.OutOfMemoryError):
        torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda:0")  # 0.5 GiB
    torch.cuda.empty_cache()
    held = torch.empty(512 * 2**20, dtype=torch.uint8, device="cuda:0")  # no cap any more
    assert held.numel() == 512 * 2**20
