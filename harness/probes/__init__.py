"""The core's measurement probes, timed loops and counters.

Each probe is a small class with a ``name`` and a ``measure(phase, recorder)`` context manager
(optimum-benchmark's one-tracker-per-measurement style). A probe never raises into a run and
never reports 0 for what it can't measure: it records a null with the reason. Heavy imports
(torch, pynvml, numpy) happen inside functions so importing the core stays fast.

Importing this package sets ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (see ``harness.probes.nvml``).
"""

from __future__ import annotations

from typing import Any

from harness.probes.counters import count_parameters, tensor_bytes
from harness.probes.cuda_memory import CudaMemoryProbe
from harness.probes.host_load import HostLoadProbe, busy_host_reason, host_busy_now
from harness.probes.host_memory import HostMemoryProbe
from harness.probes.nvml import NvmlProbe, gpu_inventory, visible_gpu_count
from harness.probes.timing import LoopTimer, TimingResult, summarize, time_callable

__all__ = [
    "CudaMemoryProbe",
    "HostLoadProbe",
    "HostMemoryProbe",
    "LoopTimer",
    "NvmlProbe",
    "TimingResult",
    "busy_host_reason",
    "count_parameters",
    "default_probes",
    "gpu_inventory",
    "host_busy_now",
    "summarize",
    "tensor_bytes",
    "time_callable",
    "visible_gpu_count",
]


def default_probes(device: str) -> list[Any]:
    """The probes wrapped around every phase of a run on ``device``.

    Host RAM and host load always; the torch allocator and NVML for CUDA devices (on CPU
    they record nulls with the reason, so the store shows *why* a GPU column is empty).
    Order matters for nesting: the CUDA probe synchronizes before NVML takes its baseline.
    """
    return [HostMemoryProbe(), HostLoadProbe(device), CudaMemoryProbe(device), NvmlProbe(device)]
