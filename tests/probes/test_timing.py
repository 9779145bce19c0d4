"""Timed loops: statistics, the dual stopping rule, warmup/cold handling, validity."""

from __future__ import annotations

import contextlib
import math
import time

import pytest

from harness.api import MeasureSettings
from harness.probes.timing import STAT_KEYS, LoopTimer, TimingResult, summarize, time_callable


def _sleeper(seconds: float, calls: list[int] | None = None):
    def fn() -> None:
        if calls is not None:
            calls.append(1)
        time.sleep(seconds)

    return fn


def test_summarize_matches_hand_values() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert set(s) == set(STAT_KEYS)
    assert s["n"] == 4
    assert s["total_ms"] == 10
    assert s["mean"] == 2.5
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))  # sample std (ddof=1)
    assert s["cv"] == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert s["median"] == 2.5
    # linear interpolation: position p/100 * (n-1)
    assert s["p10"] == pytest.approx(1.3)
    assert s["p25"] == pytest.approx(1.75)
    assert s["p75"] == pytest.approx(3.25)
    assert s["iqr"] == pytest.approx(1.5)
    assert s["p90"] == pytest.approx(3.7)
    assert s["p99"] == pytest.approx(3.97)
    assert (s["min"], s["max"]) == (1.0, 4.0)


def test_summarize_one_and_no_samples_give_nan_spread_not_zero() -> None:
    one = summarize([5.0])
    assert one["n"] == 1 and one["median"] == 5.0 and one["mean"] == 5.0
    assert math.isnan(one["std"]) and math.isnan(one["cv"])
    empty = summarize([])
    assert empty["n"] == 0 and empty["total_ms"] == 0
    assert math.isnan(empty["median"])


def test_meets_both_minimums_repeats_bound() -> None:
    measure = MeasureSettings(warmup=1, min_repeats=5, min_seconds=0.05, max_seconds=10)
    r = time_callable(_sleeper(0.001), measure, "cpu")
    assert r.clock == "perf_counter"
    assert len(r.samples_ms) >= 5
    assert r.stats["n"] == len(r.samples_ms)
    assert r.stats["total_ms"] >= 50
    assert r.invalid_reasons(measure.model_copy(update={"max_cv": None})) == []


def test_meets_both_minimums_seconds_bound() -> None:
    measure = MeasureSettings(warmup=0, min_repeats=3, min_seconds=0.2, max_seconds=10)
    r = time_callable(_sleeper(0.02), measure, "cpu")
    # time, not the repeat count, decides here: ~200 ms / 20 ms
    assert 5 <= len(r.samples_ms) <= 10
    assert sum(r.samples_ms) >= 200
    assert all(s >= 20 for s in r.samples_ms)


def test_warmup_calls_happen_and_cold_call_is_separate() -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        time.sleep(0.06 if len(calls) == 1 else 0.001)

    measure = MeasureSettings(warmup=4, min_repeats=6, min_seconds=0.0, max_seconds=10)
    r = time_callable(fn, measure, "cpu")
    assert len(calls) == 1 + 4 + len(r.samples_ms)
    assert r.warmup == 4
    assert r.cold_ms >= 60
    assert max(r.samples_ms) < 60  # the cold call is not among the samples


def test_max_seconds_cap_is_reported_invalid() -> None:
    measure = MeasureSettings(warmup=0, min_repeats=1000, min_seconds=0.01, max_seconds=0.1)
    t0 = time.perf_counter()
    r = time_callable(_sleeper(0.02), measure, "cpu")
    assert time.perf_counter() - t0 < 1.0
    assert 1 <= len(r.samples_ms) <= 7
    reasons = r.invalid_reasons(measure)
    assert any("min_repeats=1000" in x for x in reasons)
    assert reasons[0] == f"n={len(r.samples_ms)} < min_repeats=1000"


def test_invalid_reasons_seconds_and_cv() -> None:
    samples = (1.0, 10.0, 1.0, 10.0)
    r = TimingResult(samples, 1.0, 0, summarize(samples), "perf_counter")
    measure = MeasureSettings(min_repeats=4, min_seconds=1.0, max_cv=0.25)
    reasons = r.invalid_reasons(measure)
    assert "measured 0.022 s < min_seconds=1.0" in reasons
    assert any(x == "cv 0.94 > max_cv 0.25" for x in reasons)
    assert not any("min_repeats" in x for x in reasons)
    no_cv = r.invalid_reasons(measure.model_copy(update={"max_cv": None, "min_seconds": 0.0}))
    assert no_cv == []


class _FakeEvent:
    """Stands in for torch.cuda.Event: 'GPU time' is a fraction of the wall time."""

    scale = 0.5
    records = 0

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing
        self.t = 0.0

    def record(self) -> None:
        _FakeEvent.records += 1
        self.t = time.perf_counter()

    def elapsed_time(self, end: _FakeEvent) -> float:
        return (end.t - self.t) * 1e3 * self.scale


def test_cuda_path_syncs_once_per_batch_and_tops_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA loop's logic, with fake events: events that trail the wall clock (the CPU ran
    ahead) trigger another batch until the event-measured time reaches min_seconds."""
    torch = pytest.importorskip("torch")
    syncs: list[int] = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(1))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    calls: list[int] = []
    measure = MeasureSettings(warmup=2, min_repeats=5, min_seconds=0.1, max_seconds=10)
    r = time_callable(_sleeper(0.002, calls), measure, "cuda:0")
    assert r.clock == "cuda_event"
    assert len(calls) == 1 + 2 + len(r.samples_ms)
    assert _FakeEvent.records == 2 * len(r.samples_ms)
    assert sum(r.samples_ms) >= 100  # event time, not wall time, satisfied min_seconds
    # cold (2 syncs) + after warmup (1) + one per batch: far fewer than one per iteration
    assert len(syncs) < 10 < len(r.samples_ms)
    assert r.invalid_reasons(measure.model_copy(update={"max_cv": None})) == []


def test_loop_timer_times_each_iteration_of_a_loop_it_does_not_own() -> None:
    timer = LoopTimer("cpu")
    for pause in (0.002, 0.02, 0.002):
        with timer.step():
            time.sleep(pause)
        time.sleep(0.01)  # between steps: not timed
    samples = timer.samples_ms()
    assert timer.clock == "perf_counter" and len(samples) == 3
    assert 2 <= samples[0] < 9 and 20 <= samples[1] < 29 and 2 <= samples[2] < 9
