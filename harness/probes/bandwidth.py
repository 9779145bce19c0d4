"""Achieved memory bandwidth against the machine's own peak: how far a run is from its roof.

A method that moves bytes per step (a decode step reads the weights and the KV cache; an
offloading method copies experts or KV blocks from host to device) records them as
``bytes_moved`` in the timed phase, one stat per link: ``memory`` (the device's own memory:
host RAM on CPU, HBM on a GPU) or ``h2d`` (host to device). The core then stores
``bandwidth`` = bytes ÷ the phase's median latency, and ``bandwidth_share``, that as a
percentage of the peak this worker measured for the link (``peak_bandwidth`` in phase
``baseline``): a copy of a buffer larger than the caches, counted as bytes read plus bytes
written as STREAM counts them, and on CUDA a pinned host-to-device copy.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.api import Recorder

#: The links a method may report bytes on.
LINKS = ("memory", "h2d")
#: Size of the copied buffer: past the last-level cache of a server CPU.
COPY_BYTES = 128 * 2**20
REPEATS = 5


@lru_cache(maxsize=4)
def peak_bandwidth(device: str) -> dict[str, float]:
    """Peak bytes/s per link on ``device``, best of a few copies (measured once per process)."""
    import torch

    if not device.startswith("cuda"):
        return {"memory": _copy_rate(torch.ones(COPY_BYTES // 4), torch.empty(COPY_BYTES // 4),
                                     lambda: None, 2)}
    sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
    peaks = {
        "memory": _copy_rate(torch.ones(COPY_BYTES // 4, device=device),
                             torch.empty(COPY_BYTES // 4, device=device), sync, 2),
        "h2d": _copy_rate(torch.ones(COPY_BYTES // 4, pin_memory=True),
                          torch.empty(COPY_BYTES // 4, device=device), sync, 1),
    }
    torch.cuda.empty_cache()
    return peaks


def _copy_rate(src: Any, dst: Any, sync: Any, passes: int) -> float:
    """Bytes/s of ``dst.copy_(src)``, counting ``passes`` trips over the buffer."""

    def copy() -> None:
        dst.copy_(src, non_blocking=True)
        sync()

    return passes * COPY_BYTES / _best(copy)


def _best(fn: Any) -> float:
    fn()  # first touch: page faults and lazy allocation stay out
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def record_bandwidth(recorder: Recorder, device: str) -> None:
    """For each ``bytes_moved`` a run recorded: its achieved bandwidth and share of peak."""
    moved = [row for row in recorder.metrics
             if row.metric == "bytes_moved" and row.value and row.stat in LINKS]
    if not moved:
        return
    peaks = peak_bandwidth(device)
    for link, peak in peaks.items():
        recorder.record("baseline", "peak_bandwidth", peak, "B/s", stat=link)
    for row in moved:
        median_ms = recorder.value(row.phase, "latency", "median")
        if not median_ms:
            recorder.record(row.phase, "bandwidth", None, "B/s", stat=row.stat,
                            reason=f"phase '{row.phase}' has no median latency to divide by")
            continue
        achieved = row.value / (median_ms / 1e3)
        recorder.record(row.phase, "bandwidth", achieved, "B/s", stat=row.stat)
        if row.stat in peaks:
            recorder.record(row.phase, "bandwidth_share", 100 * achieved / peaks[row.stat], "%",
                            stat=row.stat, higher_is_better=True)
        else:
            recorder.record(row.phase, "bandwidth_share", None, "%", stat=row.stat,
                            reason=f"no {row.stat} link on {device}")


def weight_bytes_per_token(model: Any) -> int:
    """Bytes of weights one decode step reads: every parameter, but the input embedding
    table (a token gathers one row of it) unless it is tied to the output layer."""
    embedding = model.get_input_embeddings().weight if hasattr(
        model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = output is not None and output.weight is embedding
    return sum(p.numel() * p.element_size() for p in model.parameters()
               if tied or p is not embedding)
