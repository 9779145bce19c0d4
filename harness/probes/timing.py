"""Timed loops: cold call, warmup, then sample until the median is known precisely enough.

On CUDA each iteration is bracketed by a pair of CUDA events and the host synchronizes once
per batch, never per iteration (optimum-benchmark's latency tracker), so per-iteration sync
overhead never enters the numbers; elsewhere ``time.perf_counter_ns`` brackets each call. Raw
samples are kept; ``harness.api.TimingResult.invalid_reasons`` applies the suite's validity
rules (MLPerf LoadGen's idea).

Statistics are robust (issue 19): the headline is the median, and how well it is known is
its distribution-free 95 % confidence interval from order statistics (the ranks come from
Binomial(n, 1/2) quantiles: no normality assumed, no bootstrap needed). One 100 ms stall
among ten 6 ms forwards moves the mean and the CV a lot, and the median and its interval
hardly at all. Outliers are counted by Tukey's fences, never removed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

from harness.api import MeasureSettings, Recorder, TimingResult

__all__ = [
    "CI_CONFIDENCE",
    "MIN_CI_SAMPLES",
    "STAT_KEYS",
    "STAT_UNITS",
    "LoopTimer",
    "TimingResult",
    "median_ci",
    "median_ci_ranks",
    "record_latency",
    "stat_unit",
    "summarize",
    "time_callable",
]

#: Keys of ``TimingResult.stats``; units in ``STAT_UNITS`` (latencies in ms).
STAT_KEYS = (
    "n", "total_ms", "mean", "std", "cv", "median", "iqr",
    "p10", "p25", "p75", "p90", "p99", "min", "max",
    "median_ci_lo", "median_ci_hi", "median_rel_ci", "rel_iqr", "rel_mad", "outliers",
)  # fmt: skip

#: Unit of each statistic as stored in a metric row: counts, ratios ("") and milliseconds.
STAT_UNITS = {
    k: ("count" if k in ("n", "outliers")
        else "" if k in ("cv", "median_rel_ci", "rel_iqr", "rel_mad") else "ms")
    for k in STAT_KEYS
}  # fmt: skip

#: Confidence of the median's interval.
CI_CONFIDENCE = 0.95

#: Fewest samples with a 95 % order-statistic interval: with n = 5 even (min, max) covers
#: the median with probability 1 - 2/2^5 = 0.9375 only.
MIN_CI_SAMPLES = 6

#: Up to this n the ranks come from the exact Binomial(n, 1/2) distribution (integer
#: arithmetic); above it from the normal approximation with continuity correction.
EXACT_RANKS_MAX_N = 2000

#: A memory guard: once the minimums hold, a timed loop seeking precision stops at this many
#: samples (a microsecond call with a bimodal time could otherwise keep ~10^8 until
#: max_seconds).
MAX_SAMPLES = 1_000_000

#: The timed loop re-checks the interval once n has grown by this fraction since the last
#: check (sorting every sample on every iteration of a microsecond loop would dominate it).
CHECK_GROWTH = 0.10


def stat_unit(stat: str) -> str:
    """The unit a ``latency`` statistic is stored with (``ms`` unless a count or a ratio)."""
    return STAT_UNITS.get(stat, "ms")


def record_latency(recorder: Recorder, phase: str, samples_ms: Sequence[float],
                   stats: dict[str, float] | None = None) -> dict[str, float]:
    """Record ``phase``'s ``latency`` statistics (each with its unit) and its raw samples;
    returns the statistics. Every timed figure of a run is stored this way, whether a timed
    loop took the samples or a scenario collected them (decode steps, training steps)."""
    stats = summarize(samples_ms) if stats is None else stats
    for stat, value in stats.items():
        recorder.record(phase, "latency", value, stat_unit(stat), stat=stat)
    recorder.record_samples(phase, "latency", "ms", samples_ms)
    return stats


def _exact_lower_rank(n: int, confidence: float) -> int:
    """Largest j with P(Binomial(n, 1/2) <= j - 1) <= (1 - confidence) / 2; 0 if none."""
    tail = (1 - Fraction(str(confidence))) / 2
    bound = tail.numerator * 2**n  # P(B <= i) <= tail  <=>  den * cum <= num * 2^n
    cum, term, j = 0, 1, 0  # term = C(n, i)
    for i in range(n + 1):
        if (cum + term) * tail.denominator > bound:
            break
        cum += term
        j = i + 1
        term = term * (n - i) // (i + 1)
    return j


def _normal_lower_rank(n: int, confidence: float) -> int:
    """``_exact_lower_rank`` by the normal approximation with continuity correction:
    P(B <= j - 1) ~ Phi((j - 1/2 - n/2) / (sqrt(n)/2))."""
    z = statistics.NormalDist().inv_cdf((1 - confidence) / 2)  # negative
    return max(0, math.floor(n / 2 + 0.5 + z * math.sqrt(n) / 2))


@functools.lru_cache(maxsize=1024)
def median_ci_ranks(n: int, confidence: float = CI_CONFIDENCE) -> tuple[int, int] | None:
    """1-based ranks ``(j, k)``, ``j < k``, of the order statistics that bracket the median.

    Distribution-free: for any continuous distribution P(x_(j) <= median <= x_(k))
    = 1 - 2 P(Binomial(n, 1/2) <= j - 1) >= ``confidence``, with ``k = n + 1 - j`` and j
    the largest rank that keeps that. ``None`` when n is too small for any such pair (n < 6
    at 95 %): the interval is then unknown, never made up.
    """
    if n < 2:
        return None
    exact = n <= EXACT_RANKS_MAX_N
    j = _exact_lower_rank(n, confidence) if exact else _normal_lower_rank(n, confidence)
    if j < 1:
        return None
    return j, n + 1 - j


def median_ci(samples: Sequence[float], confidence: float = CI_CONFIDENCE) -> tuple[float, float]:
    """The median's ``confidence`` interval ``(lo, hi)`` of ``samples``; NaNs when n < 6."""
    import numpy as np

    a = np.asarray(samples, dtype=np.float64)
    ranks = median_ci_ranks(int(a.size), confidence)
    if ranks is None:
        return math.nan, math.nan
    j, k = ranks
    part = np.partition(a, [j - 1, k - 1])
    return float(part[j - 1]), float(part[k - 1])


def _rel_halfwidth(samples: Sequence[float]) -> float:
    """(hi - lo) / 2 / median of the 95 % interval; NaN when unknown. O(n): partitions."""
    import numpy as np

    a = np.asarray(samples, dtype=np.float64)
    n = int(a.size)
    ranks = median_ci_ranks(n)
    if ranks is None:
        return math.nan
    j, k = ranks
    mid = sorted({j - 1, k - 1, (n - 1) // 2, n // 2})
    part = np.partition(a, mid)
    median = (part[(n - 1) // 2] + part[n // 2]) / 2
    return _ratio((part[k - 1] - part[j - 1]) / 2, median)


def _ratio(spread: float, median: float) -> float:
    """``spread / median`` for a spread of a positive latency; 0/0 is 0 (constant samples)."""
    if median > 0:
        return float(spread / median)
    return 0.0 if spread == 0 else math.nan


def summarize(samples_ms: Sequence[float]) -> dict[str, float]:
    """Summary statistics of latencies in ms (percentiles by linear interpolation).

    ``std`` is the sample standard deviation (ddof=1) and ``cv = std / mean``; both are NaN
    with fewer than two samples, since spread can't be measured from one. Robust ones:
    ``median_ci_lo``/``median_ci_hi`` bound the median's 95 % interval (order statistics;
    NaN below 6 samples), ``median_rel_ci`` is its relative half-width
    ``(hi - lo) / 2 / median``, ``rel_iqr = iqr / median``, ``rel_mad`` the median absolute
    deviation over the median (unscaled: x 1.4826 estimates sigma for normal data), and
    ``outliers`` counts samples outside Tukey's fences [p25 - 1.5 iqr, p75 + 1.5 iqr]. With
    no samples every statistic but ``n`` and ``total_ms`` is NaN.
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
    iqr = p75 - p25
    lo, hi = median_ci(a)
    mad = float(np.median(np.abs(a - p50)))
    outliers = int(np.count_nonzero((a < p25 - 1.5 * iqr) | (a > p75 + 1.5 * iqr)))
    return {
        "n": float(n),
        "total_ms": float(math.fsum(a.tolist())),
        "mean": mean,
        "std": std,
        "cv": cv,
        "median": p50,
        "iqr": iqr,
        "p10": p10,
        "p25": p25,
        "p75": p75,
        "p90": p90,
        "p99": p99,
        "min": float(a.min()),
        "max": float(a.max()),
        "median_ci_lo": lo,
        "median_ci_hi": hi,
        "median_rel_ci": _ratio((hi - lo) / 2, p50),
        "rel_iqr": _ratio(iqr, p50),
        "rel_mad": _ratio(mad, p50),
        "outliers": float(outliers),
    }


def time_callable(fn: Callable[[], Any], measure: MeasureSettings, device: str) -> TimingResult:
    """Time ``fn`` under ``measure``: cold call, ``warmup`` untimed calls, then the timed loop.

    The timed loop samples until ``n >= min_repeats``, the measured time (the sum of the
    samples) ``>= min_seconds`` and, unless ``rel_precision`` is None, the median's 95 %
    interval has a relative half-width ``<= rel_precision``. It stops early only once the
    loop's wall time passes ``max_seconds`` (cold call and warmup are not counted against
    it), or, seeking precision past the minimums, at ``MAX_SAMPLES``. The interval is
    re-checked whenever n has grown by ``CHECK_GROWTH`` (CPU) or after each batch (CUDA),
    never per iteration. At least one timed iteration always runs. Exceptions from ``fn``
    propagate: they are the workload's failure.
    """
    if device.startswith("cuda"):
        return _time_cuda(fn, measure, device)
    return _time_cpu(fn, measure)


def _precise(samples: Sequence[float], measure: MeasureSettings) -> bool:
    return measure.rel_precision is None or _rel_halfwidth(samples) <= measure.rel_precision


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
    start = clock()
    deadline = start + measure.max_seconds * 1e9
    next_check = 0
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        samples.append((t1 - t0) / 1e6)
        measured_ns += t1 - t0
        if t1 >= deadline:
            break
        n = len(samples)
        if n < measure.min_repeats or measured_ns < min_ns:
            continue
        if n >= MAX_SAMPLES:
            break
        if n < next_check:
            continue
        if _precise(samples, measure):
            break
        next_check = max(n + 1, math.ceil(n * (1 + CHECK_GROWTH)))
    wall_s = (clock() - start) / 1e9
    return TimingResult(tuple(samples), cold_ms, measure.warmup, summarize(samples),
                        "perf_counter", wall_s)


def _more_for_precision(n: int, rel: float, target: float) -> int:
    """Iterations to add so the interval's half-width may reach ``target`` (it shrinks like
    1/sqrt(n)): between 10 % more and twice as many as now, at least enough for an interval."""
    if n < MIN_CI_SAMPLES or math.isnan(rel):
        return max(MIN_CI_SAMPLES - n, math.ceil(n / 2), 1)
    wanted = math.ceil(n * (rel / target) ** 2 * 1.1) - n
    return max(1, math.ceil(n * CHECK_GROWTH), min(wanted, n))


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
        while more:
            n, measured_ms = len(samples), math.fsum(samples)
            per_iter = max(measured_ms / n, 1e-6)
            missing_ms = measure.min_seconds * 1e3 - measured_ms
            if n < measure.min_repeats or missing_ms > 0:
                # Events measure GPU time only; when the CPU ran ahead of (or idled between)
                # kernels the event sum can trail the wall clock: top up the GPU time.
                need = max(measure.min_repeats - n, math.ceil(1.1 * missing_ms / per_iter) + 1)
            else:
                if measure.rel_precision is None:
                    break
                rel = _rel_halfwidth(samples)
                if rel <= measure.rel_precision:
                    break
                need = min(_more_for_precision(n, rel, measure.rel_precision), MAX_SAMPLES - n)
            # Size the batch to the time left, so the queue doesn't outrun the deadline.
            left_ms = (deadline - time.perf_counter()) * 1e3
            need = min(need, math.ceil(left_ms / per_iter))
            if need < 1:
                break
            more = batch(need, 0.0)
        wall_s = time.perf_counter() - wall_start

    return TimingResult(tuple(samples), cold_ms, measure.warmup, summarize(samples),
                        "cuda_event", wall_s)


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
