"""Timed loops: cold call, warmup, then repeat until both minimums hold.

On CUDA each iteration is bracketed by a pair of CUDA events and the host synchronizes once
at the end (optimum-benchmark's latency tracker), so per-iteration sync overhead never enters
the numbers; elsewhere ``time.perf_counter_ns`` brackets each call. Raw samples are kept;
``harness.api.TimingResult.invalid_reasons`` applies the suite's validity rules (MLPerf
LoadGen's idea).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from harness.api import MeasureSettings, TimingResult

__all__ = ["STAT_KEYS", "LoopTimer", "TimingResult", "summarize", "time_callable"]

#: Keys of ``TimingResult.stats`` (latencies in ms; ``n`` is a count, ``cv`` a ratio).
STAT_KEYS = (
    "n", "total_ms", "mean", "std", "cv", "median", "iqr",
    "p10", "p25", "p75", "p90", "p99", "min", "max",
)  # fmt: skip


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Summary statistics of latencies in ms (percentiles by linear interpolation).

    ``std`` is the sample standard deviation (ddof=1) and ``cv = std / mean``; both are NaN
    with fewer than two samples, since spread can't be measured from one. With no samples
    every statistic but ``n`` and ``total_ms`` is NaN.
    """
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    n = int(a.size)
    nan = math.nan
    if n == 0:
        return {k: (0.0 if k in ("n", "total_ms") else nan) for k in STAT_KEYS}
    p10, p25, p50, p75, p90, p99 = (
        float(x) for x in np.percentile(a, [10, 25, 50, 75, 90, 99], method="linear")
    )
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else nan
    cv = std / mean if n > 1 and mean > 0 else nan
    return {
        "n": float(n),
        "total_ms": float(math.fsum(a.tolist())),
        "mean": mean,
        "std": std,
        "cv": cv,
        "median": p50,
        "iqr": p75 - p25,
        "p10": p10,
        "p25": p25,
        "p75": p75,
        "p90": p90,
        "p99": p99,
        "min": float(a.min()),
        "max": float(a.max()),
    }


def time_callable(fn: Callable[[], Any], measure: MeasureSettings, device: str) -> TimingResult:
    """Time ``fn`` under ``measure``: cold call, ``warmup`` untimed calls, then the timed loop.

    The timed loop repeats until ``n >= min_repeats`` and the measured time (the sum of the
    samples) ``>= min_seconds``; it stops early only once the loop's wall time passes
    ``max_seconds`` (cold call and warmup are not counted against it). At least one timed
    iteration always runs. Exceptions from ``fn`` propagate: they are the workload's failure.
    """
    if device.startswith("cuda"):
        return _time_cuda(fn, measure, device)
    return _time_cpu(fn, measure)


def _time_cpu(fn: Callable[[], Any], measure: MeasureSettings) -> TimingResult:
    clock = time.perf_counter_ns
    t0 = clock()
    fn()
    cold_ms = (clock() - t0) / 1e6
    for _ in range(measure.warmup):
        fn()

    samples: list[float] = []
    measured_ns = 0
    min_ns = measure.min_seconds * 1e9
    deadline = clock() + measure.max_seconds * 1e9
    while len(samples) < measure.min_repeats or measured_ns < min_ns:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        measured_ns += t1 - t0
        if t1 >= deadline:
            break
    return TimingResult(tuple(samples), cold_ms, measure.warmup, summarize(samples), "perf_counter")


def _time_cuda(fn: Callable[[], Any], measure: MeasureSettings, device: str) -> TimingResult:
    import torch

    dev = torch.device(device)
    # Events record on the current stream of the *current* device: make it the run's device.
    with torch.cuda.device(dev):
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter_ns()
        fn()
        torch.cuda.synchronize(dev)
        cold_ms = (time.perf_counter_ns() - t0) / 1e6
        for _ in range(measure.warmup):
            fn()
        torch.cuda.synchronize(dev)

        samples: list[float] = []
        wall_start = time.perf_counter()
        deadline = wall_start + measure.max_seconds

        def batch(min_iters: int, min_wall_s: float) -> bool:
            """Run >= min_iters iterations and >= min_wall_s wall seconds, unsynchronized.

            Returns False when the ``max_seconds`` cap ended the batch.
            """
            pairs: list[tuple[Any, Any]] = []
            start = time.perf_counter()
            capped = False
            while len(pairs) < min_iters or time.perf_counter() - start < min_wall_s:
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                fn()
                end.record()
                pairs.append((begin, end))
                if time.perf_counter() >= deadline:
                    capped = True
                    break
            torch.cuda.synchronize(dev)  # once per batch, never per iteration
            samples.extend(b.elapsed_time(e) for b, e in pairs)
            return not capped and time.perf_counter() < deadline

        more = batch(max(1, measure.min_repeats), measure.min_seconds)
        # Events measure GPU time only; when the CPU ran ahead of (or idled between) kernels
        # the event sum can trail the wall clock, so top up until the GPU time is there too.
        while more and math.fsum(samples) < measure.min_seconds * 1e3:
            missing_ms = measure.min_seconds * 1e3 - math.fsum(samples)
            per_iter = max(math.fsum(samples) / len(samples), 1e-6)
            more = batch(math.ceil(1.1 * missing_ms / per_iter) + 1, 0.0)

    return TimingResult(tuple(samples), cold_ms, measure.warmup, summarize(samples), "cuda_event")


class LoopTimer:
    """Times the iterations of a loop the caller owns (e.g. a training loop's steps).

    :func:`time_callable` repeats one call; a training step can't be repeated without changing
    what it measures, so here the caller brackets each real iteration with :meth:`step`. On
    CUDA each iteration is a pair of events and the host synchronizes only in :meth:`samples_ms`
    (call it between epochs, not per step); elsewhere ``perf_counter_ns`` brackets it.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.clock = "cuda_event" if device.startswith("cuda") else "perf_counter"
        self._pending: list[tuple[Any, Any]] = []
        self._samples: list[float] = []

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Time the body of the ``with`` block as one iteration."""
        if self.clock == "cuda_event":
            import torch

            with torch.cuda.device(torch.device(self.device)):
                begin = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                begin.record()
                yield
                end.record()
            self._pending.append((begin, end))
            return
        t0 = time.perf_counter_ns()
        yield
        self._samples.append((time.perf_counter_ns() - t0) / 1e6)

    def samples_ms(self) -> list[float]:
        """Every iteration's time so far, in ms (synchronizes the device once if needed)."""
        if self._pending:
            import torch

            torch.cuda.synchronize(torch.device(self.device))
            self._samples.extend(b.elapsed_time(e) for b, e in self._pending)
            self._pending.clear()
        return list(self._samples)
