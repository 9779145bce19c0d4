"""Peak memory of torch's CUDA caching allocator, per phase.

``allocated`` is what tensors hold; ``reserved`` is what the allocator took from the driver
(allocated plus cached blocks and fragmentation). Peaks are reset at phase start so each
phase reports its own, not the process's lifetime maximum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.api import Recorder

__all__ = ["CudaMemoryProbe"]

#: (metric, stat) of every row this probe writes; all in bytes.
METRICS = (
    ("cuda_allocated_peak", "max"),
    ("cuda_reserved_peak", "max"),
    ("cuda_allocated_end", "value"),
)


def _unavailable_reason(device: str) -> str | None:
    """Why the CUDA allocator can't be read for ``device``, or None when it can."""
    if not device.startswith("cuda"):
        return f"device is {device}: no CUDA allocator"
    try:
        import torch
    except Exception as exc:
        return f"torch is not importable: {type(exc).__name__}: {exc}"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not compiled with CUDA"
    if not torch.cuda.is_available():
        return "no CUDA device available (torch.cuda.is_available() is False)"
    return None


class CudaMemoryProbe:
    """Records ``cuda_allocated_peak``/``cuda_reserved_peak`` (stat ``max``) and
    ``cuda_allocated_end`` in bytes for the run's CUDA device; nulls with a reason elsewhere.
    """

    name = "cuda_memory"

    def __init__(self, device: str) -> None:
        self.device = device

    def _record_unavailable(self, phase: str, recorder: Recorder, reason: str) -> None:
        for metric, stat in METRICS:
            recorder.record(phase, metric, None, "bytes", stat=stat, reason=reason)

    @contextlib.contextmanager
    def measure(self, phase: str, recorder: Recorder) -> Iterator[None]:
        reason = _unavailable_reason(self.device)
        dev: Any = None
        if reason is None:
            try:
                import torch

                dev = torch.device(self.device)
                torch.cuda.synchronize(dev)
                torch.cuda.reset_peak_memory_stats(dev)
            except Exception as exc:
                reason = f"CUDA allocator stats failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            try:
                yield
            finally:
                self._record_unavailable(phase, recorder, reason)
            return

        try:
            yield
        finally:
            try:
                import torch

                # After a CUDA error (illegal access, …) this raises; the phase's own
                # exception must still propagate, so record the failure instead.
                torch.cuda.synchronize(dev)
                allocated_peak = torch.cuda.max_memory_allocated(dev)
                reserved_peak = torch.cuda.max_memory_reserved(dev)
                allocated_end = torch.cuda.memory_allocated(dev)
            except Exception as exc:
                self._record_unavailable(
                    phase, recorder, f"CUDA allocator stats failed: {type(exc).__name__}: {exc}"
                )
            else:
                recorder.record(phase, "cuda_allocated_peak", allocated_peak, "bytes", stat="max")
                recorder.record(phase, "cuda_reserved_peak", reserved_peak, "bytes", stat="max")
                recorder.record(phase, "cuda_allocated_end", allocated_end, "bytes")
