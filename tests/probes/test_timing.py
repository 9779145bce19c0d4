"""Timed loops: statistics (robust ones too), the stopping rule, warmup/cold handling,
validity, and the host diagnosis in ``Context.time``."""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import time
from types import SimpleNamespace

import numpy as np
import pytest

from harness.api import MeasureSettings
from harness.probes import timing as timing_mod
from harness.probes.timing import (
    STAT_KEYS,
    STAT_UNITS,
    LoopTimer,
    TimingResult,
    median_ci,
    median_ci_ranks,
    stat_unit,
    summarize,
    time_callable,
)

NO_TARGET = {"rel_precision": None}


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
    # robust ones: 4 samples are too few for a 95 % interval of the median
    assert math.isnan(s["median_ci_lo"]) and math.isnan(s["median_ci_hi"])
    assert math.isnan(s["median_rel_ci"])
    assert s["rel_iqr"] == pytest.approx(1.5 / 2.5)
    assert s["rel_mad"] == pytest.approx(1.0 / 2.5)  # |x - 2.5| = 1.5, .5, .5, 1.5
    assert s["outliers"] == 0


def test_summarize_one_and_no_samples_give_nan_spread_not_zero() -> None:
    one = summarize([5.0])
    assert one["n"] == 1 and one["median"] == 5.0 and one["mean"] == 5.0
    assert math.isnan(one["std"]) and math.isnan(one["cv"])
    assert math.isnan(one["median_ci_lo"]) and math.isnan(one["median_rel_ci"])
    empty = summarize([])
    assert set(empty) == set(STAT_KEYS)
    assert empty["n"] == 0 and empty["total_ms"] == 0
    assert math.isnan(empty["median"]) and math.isnan(empty["median_ci_lo"])


def test_robust_stats_by_hand() -> None:
    s = summarize([float(x) for x in range(20, 0, -1)])  # 1..20, unsorted
    assert median_ci_ranks(20) == (6, 15)
    assert (s["median_ci_lo"], s["median_ci_hi"]) == (6.0, 15.0)
    assert s["median"] == 10.5
    assert s["median_rel_ci"] == pytest.approx((15 - 6) / 2 / 10.5)
    assert s["rel_iqr"] == pytest.approx((15.25 - 5.75) / 10.5)
    assert s["rel_mad"] == pytest.approx(5.0 / 10.5)
    # Tukey's fences: p25 - 1.5 iqr and p75 + 1.5 iqr
    t = summarize([10.0, 10.2, 9.8, 10.1, 9.9, 10.0, 10.3, 9.7, 30.0, 1.0])
    assert t["p25"] - 1.5 * t["iqr"] < 9.7 and 10.3 < t["p75"] + 1.5 * t["iqr"] < 30
    assert t["outliers"] == 2  # 30 and 1
    u = summarize([10.0] * 8 + [10.5, 30.0])
    assert u["iqr"] == 0 and u["outliers"] == 2  # a zero IQR fences out every other value
    assert median_ci_ranks(10) == (2, 9)
    assert (u["median_ci_lo"], u["median_ci_hi"]) == (10.0, 10.5)
    assert u["median_rel_ci"] == pytest.approx(0.25 / 10)


def test_stat_units() -> None:
    assert set(STAT_UNITS) == set(STAT_KEYS)
    assert stat_unit("n") == stat_unit("outliers") == "count"
    for ratio in ("cv", "median_rel_ci", "rel_iqr", "rel_mad"):
        assert stat_unit(ratio) == ""
    for ms in ("median", "median_ci_lo", "median_ci_hi", "iqr", "p99", "total_ms"):
        assert stat_unit(ms) == "ms"


def _binom_cdf(n: int, j: int) -> float:
    """P(Binomial(n, 1/2) <= j), exactly."""
    return sum(math.comb(n, i) for i in range(j + 1)) / 2**n


@pytest.mark.parametrize(("n", "ranks"), [
    (1, None), (5, None), (6, (1, 6)), (8, (1, 8)), (9, (2, 8)), (10, (2, 9)), (20, (6, 15)),
    (30, (10, 21)), (50, (18, 33)), (100, (40, 61)), (1000, (469, 532)),
])
def test_median_ci_ranks_match_binomial_tables(n: int, ranks: tuple[int, int] | None) -> None:
    assert median_ci_ranks(n) == ranks


def test_median_ci_ranks_are_the_tightest_with_95_percent_coverage() -> None:
    for n in range(6, 301):
        j, k = median_ci_ranks(n)
        assert k == n + 1 - j and j < k
        assert 1 - 2 * _binom_cdf(n, j - 1) >= 0.95  # P(x_(j) <= median <= x_(k))
        assert 1 - 2 * _binom_cdf(n, j) < 0.95  # one rank tighter would miss
    for n in range(0, 6):
        assert median_ci_ranks(n) is None


def test_normal_approximation_is_exact_or_one_rank_safer() -> None:
    exact, normal = timing_mod._exact_lower_rank, timing_mod._normal_lower_rank
    ns = [*range(6, 400), *range(1500, 2600, 7), 5003, 10_007]
    diffs = {exact(n, 0.95) - normal(n, 0.95) for n in ns}
    assert diffs <= {0, 1}  # never wider than the exact interval
    assert sum(exact(n, 0.95) == normal(n, 0.95) for n in ns) > 0.9 * len(ns)
    big = timing_mod.EXACT_RANKS_MAX_N + 1
    j, k = median_ci_ranks(big)
    assert j == normal(big, 0.95) and k == big + 1 - j


def test_median_ci_covers_the_true_median_by_simulation() -> None:
    rng = np.random.default_rng(19)
    true_median = 6.0  # lognormal(log 6, 0.4): skewed like latencies
    for n in (6, 11, 25, 60):
        hits = 0
        for _ in range(2000):
            lo, hi = median_ci(rng.lognormal(math.log(true_median), 0.4, n))
            hits += lo <= true_median <= hi
        assert hits / 2000 >= 0.93, (n, hits)


def test_one_stall_is_valid_under_the_robust_rule() -> None:
    """Ten ~6 ms forwards and one 100 ms stall: the old CV rule (max_cv 0.5) failed it."""
    samples = (6.0, 6.02, 5.98, 6.01, 5.99, 6.0, 6.03, 5.97, 6.0, 6.01, 100.0)
    stats = summarize(samples)
    assert stats["cv"] > 0.5  # what the old rule judged
    assert stats["outliers"] == 1
    assert stats["median"] == pytest.approx(6.0, abs=0.02)
    r = TimingResult(samples, 1.0, 0, stats, "perf_counter")
    measure = MeasureSettings(min_repeats=10, min_seconds=0.0, rel_precision=0.05)
    assert r.invalid_reasons(measure) == []
    old = MeasureSettings(min_repeats=10, min_seconds=0.0, max_cv=0.5)  # read as precision
    assert old.rel_precision == 0.5 and r.invalid_reasons(old) == []


def test_meets_both_minimums_repeats_bound() -> None:
    measure = MeasureSettings(warmup=1, min_repeats=5, min_seconds=0.05, max_seconds=10)
    r = time_callable(_sleeper(0.001), measure, "cpu")
    assert r.clock == "perf_counter"
    assert len(r.samples_ms) >= 5
    assert r.stats["n"] == len(r.samples_ms)
    assert r.stats["total_ms"] >= 50
    assert r.wall_s is not None and r.wall_s >= 0.05
    assert r.invalid_reasons(measure.model_copy(update=NO_TARGET)) == []


def test_meets_both_minimums_seconds_bound() -> None:
    measure = MeasureSettings(warmup=0, min_repeats=3, min_seconds=0.2, max_seconds=10,
                              rel_precision=None)
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

    measure = MeasureSettings(warmup=4, min_repeats=6, min_seconds=0.0, max_seconds=10,
                              rel_precision=None)
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


def test_invalid_reasons_seconds_and_precision() -> None:
    samples = (1.0, 10.0) * 3
    r = TimingResult(samples, 1.0, 0, summarize(samples), "perf_counter")
    measure = MeasureSettings(min_repeats=4, min_seconds=1.0, rel_precision=0.25)
    reasons = r.invalid_reasons(measure)
    assert reasons == [
        "measured 0.033 s < min_seconds=1.0",
        # samples a scenario collected itself: no loop wall time to claim
        "median not within 25 % after 6 samples (0.033 s measured): "
        "95 % CI 1.00–10.0 ms (±82 %, n=6)",
    ]
    assert r.precision_reason(measure) == reasons[1]
    assert r.invalid_reasons(measure.model_copy(update={"min_seconds": 0.0, **NO_TARGET})) == []
    few = TimingResult(samples[:5], 1.0, 0, summarize(samples[:5]), "perf_counter", 0.25)
    assert few.precision_reason(measure) == (
        "median not within 25 % after 0.2 s: too few samples for a 95 % confidence interval "
        "(n=5, needs 6)")


def test_cv_no_longer_decides_and_max_cv_is_read_as_rel_precision() -> None:
    default = MeasureSettings()
    assert default.rel_precision == 0.05 and default.max_cv is None
    assert MeasureSettings(max_cv=0.3).rel_precision == 0.3
    assert MeasureSettings(max_cv=None).rel_precision is None  # "no CV check" stays off
    assert MeasureSettings(max_cv=0.3, rel_precision=0.02).rel_precision == 0.02
    dumped = MeasureSettings(max_cv=0.3).model_dump()
    assert MeasureSettings.model_validate(dumped) == MeasureSettings(max_cv=0.3)
    samples = (6.0,) * 12 + (60.0,) * 2  # cv ~ 1.4, median exactly known
    r = TimingResult(samples, 1.0, 0, summarize(samples), "perf_counter")
    assert r.stats["cv"] > 1.0
    assert r.invalid_reasons(MeasureSettings(min_repeats=1, min_seconds=0, max_cv=0.25)) == []


class _FakeClock:
    """Stands in for ``perf_counter_ns``: only ``fn`` advances it, by its scripted durations."""

    def __init__(self, durations_ms) -> None:
        self.now = 0
        self.durations = itertools.cycle(durations_ms)
        self.calls = 0

    def __call__(self) -> int:
        return self.now

    def fn(self) -> None:
        self.calls += 1
        self.now += round(next(self.durations) * 1e6)


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the interval checks of the timed loop (the n at each)."""
    seen: list[int] = []
    real = timing_mod._rel_halfwidth

    def counted(samples):
        seen.append(len(samples))
        return real(samples)

    monkeypatch.setattr(timing_mod, "_rel_halfwidth", counted)
    return seen


def test_loop_stops_as_soon_as_precise(monkeypatch: pytest.MonkeyPatch, checks) -> None:
    clock = _FakeClock([1.0, 1.01, 0.99, 1.02, 0.98])
    monkeypatch.setattr(timing_mod.time, "perf_counter_ns", clock)
    measure = MeasureSettings(warmup=2, min_repeats=10, min_seconds=0.0, max_seconds=60)
    r = time_callable(clock.fn, measure, "cpu")
    assert len(r.samples_ms) == 10  # the first check, at min_repeats, already holds
    assert checks == [10]
    assert r.invalid_reasons(measure) == []
    assert r.stats["median_rel_ci"] <= 0.05


def test_loop_samples_more_until_precise(monkeypatch: pytest.MonkeyPatch, checks) -> None:
    rng = np.random.default_rng(7)
    clock = _FakeClock(rng.lognormal(0.0, 0.3, 5000))  # ~1 ms, sigma 0.3: needs n ~ 200
    monkeypatch.setattr(timing_mod.time, "perf_counter_ns", clock)
    measure = MeasureSettings(warmup=0, min_repeats=10, min_seconds=0.0, max_seconds=60)
    r = time_callable(clock.fn, measure, "cpu")
    n = len(r.samples_ms)
    assert 100 < n < 600
    assert r.invalid_reasons(measure) == [] and r.stats["median_rel_ci"] <= 0.05
    assert len(checks) < 40  # checked as n grew by 10 %, not on every iteration
    assert checks[-1] == n and all(b >= a * 1.1 for a, b in itertools.pairwise(checks))


def test_loop_gives_up_at_max_seconds_with_the_interval(
    monkeypatch: pytest.MonkeyPatch, checks
) -> None:
    clock = _FakeClock([1.0, 3.0])  # bimodal: the median is anywhere between
    monkeypatch.setattr(timing_mod.time, "perf_counter_ns", clock)
    measure = MeasureSettings(warmup=0, min_repeats=10, min_seconds=0.0, max_seconds=2.0)
    r = time_callable(clock.fn, measure, "cpu")
    assert len(r.samples_ms) == 1000  # 2 s of 2 ms pairs
    assert len(checks) < 60
    (reason,) = r.invalid_reasons(measure)
    assert reason == "median not within 5 % after 2.0 s: 95 % CI 1.00–3.00 ms (±50 %, n=1000)"


def test_precision_seeking_stops_at_max_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _FakeClock([1.0, 3.0])
    monkeypatch.setattr(timing_mod.time, "perf_counter_ns", clock)
    monkeypatch.setattr(timing_mod, "MAX_SAMPLES", 300)
    measure = MeasureSettings(warmup=0, min_repeats=10, min_seconds=0.0, max_seconds=60)
    r = time_callable(clock.fn, measure, "cpu")
    assert len(r.samples_ms) == 300
    assert r.precision_reason(measure).startswith("median not within 5 % after 0.6 s")
    # ... but never short of the minimums
    more = measure.model_copy(update={"min_repeats": 500})
    assert len(time_callable(clock.fn, more, "cpu").samples_ms) == 500


def test_bimodal_sleeper_is_invalid_with_the_interval() -> None:
    """Real sleeps alternating 1 ms and 3 ms never pin the median down."""
    flip = itertools.cycle([0.001, 0.003])
    measure = MeasureSettings(warmup=1, min_repeats=10, min_seconds=0.05, max_seconds=0.5)
    t0 = time.perf_counter()
    r = time_callable(lambda: time.sleep(next(flip)), measure, "cpu")
    assert time.perf_counter() - t0 < 2.0
    assert r.wall_s is not None and r.wall_s >= 0.5
    reasons = r.invalid_reasons(measure)
    assert len(reasons) == 1
    match = re.fullmatch(r"median not within 5 % after 0\.5 s: 95 % CI ([\d.]+)–([\d.]+) ms "
                         r"\(±(\d+) %, n=(\d+)\)", reasons[0])
    assert match, reasons
    lo, hi, pct, n = match.groups()
    assert float(lo) < float(hi) and int(pct) > 5 and int(n) == len(r.samples_ms)
    assert float(lo) == pytest.approx(r.stats["median_ci_lo"], rel=0.01)


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
    measure = MeasureSettings(warmup=2, min_repeats=5, min_seconds=0.1, max_seconds=10,
                              rel_precision=None)
    _FakeEvent.records = 0
    r = time_callable(_sleeper(0.002, calls), measure, "cuda:0")
    assert r.clock == "cuda_event"
    assert len(calls) == 1 + 2 + len(r.samples_ms)
    assert _FakeEvent.records == 2 * len(r.samples_ms)
    assert sum(r.samples_ms) >= 100  # event time, not wall time, satisfied min_seconds
    # cold (2 syncs) + after warmup (1) + one per batch: far fewer than one per iteration
    assert len(syncs) < 10 < len(r.samples_ms)
    assert r.invalid_reasons(measure) == []


class _ScriptedEvent(_FakeEvent):
    """GPU time from a script (alternating durations), whatever the wall clock says."""

    script = itertools.cycle([1.0])

    def elapsed_time(self, end: _FakeEvent) -> float:
        return next(_ScriptedEvent.script)


@pytest.mark.parametrize("steady", [True, False])
def test_cuda_path_checks_precision_once_per_batch(
    monkeypatch: pytest.MonkeyPatch, steady: bool, checks
) -> None:
    """Steady GPU times stop after the first batch that meets the minimums; bimodal ones grow
    the batches (sized from the per-iteration time, one sync each) until max_seconds."""
    torch = pytest.importorskip("torch")
    syncs: list[int] = []
    monkeypatch.setattr(torch.cuda, "Event", _ScriptedEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(1))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    script = [1.0] if steady else [1.0, 3.0]
    monkeypatch.setattr(_ScriptedEvent, "script", itertools.cycle(script))
    sleeps = itertools.cycle([ms / 1e3 for ms in script])  # wall time to match the GPU's
    measure = MeasureSettings(warmup=0, min_repeats=10, min_seconds=0.0, max_seconds=0.5)
    r = time_callable(lambda: time.sleep(next(sleeps)), measure, "cuda:0")
    n = len(r.samples_ms)
    batches = len(syncs) - 3  # cold call (2) and after warmup (1)
    if steady:
        assert n == 10 and batches == 1 and len(checks) == 1
        assert r.invalid_reasons(measure) == []
        return
    # one check per batch, none per iteration; the last batch may end at the deadline
    assert batches - len(checks) in (0, 1)
    assert r.wall_s is not None and r.wall_s >= 0.5
    assert n > 100 and batches < 15
    (reason,) = r.invalid_reasons(measure)
    # the median is 1 or 2 or 3 ms depending on n's parity: ±100 % or ±50 %
    assert reason.startswith("median not within 5 % after 0.5 s: 95 % CI 1.00–3.00 ms (±")
    assert reason.endswith(f" %, n={n})")


def test_loop_timer_times_each_iteration_of_a_loop_it_does_not_own() -> None:
    timer = LoopTimer("cpu")
    for pause in (0.002, 0.02, 0.002):
        with timer.step():
            time.sleep(pause)
        time.sleep(0.01)  # between steps: not timed
    samples = timer.samples_ms()
    assert timer.clock == "perf_counter" and len(samples) == 3
    assert 2 <= samples[0] < 9 and 20 <= samples[1] < 29 and 2 <= samples[2] < 9


class _FixedHostLoad:
    """A host-load probe with canned figures (rows as HostLoadProbe writes them)."""

    name = "host_load"

    def __init__(self, **figures: float) -> None:
        self.figures = figures

    @contextlib.contextmanager
    def measure(self, phase: str, recorder):
        yield
        for metric, value in self.figures.items():
            stat = "max" if metric in ("host_load", "gpu_other_processes") else "value"
            recorder.record(phase, metric, value, "", stat=stat)


def _context(measure: MeasureSettings, probes: list):
    from harness.context import Context

    registry = SimpleNamespace(get=lambda name: None)
    components = SimpleNamespace(methods=registry, tasks=registry, scenarios=registry,
                                 model_sources=registry)
    spec = SimpleNamespace(method="m", task="t", scenario="s", measure=measure,
                           model={"ref": "builtin:x", "source": "builtin", "id": "x"})
    return Context(spec, components, probes, "cpu", "/tmp")


BIMODAL = MeasureSettings(warmup=0, min_repeats=10, min_seconds=0.0, max_seconds=0.3)


def _bimodal():
    flip = itertools.cycle([0.001, 0.003])
    return lambda: time.sleep(next(flip))


def test_context_time_appends_the_host_diagnosis_to_a_precision_miss() -> None:
    busy = _FixedHostLoad(host_load=3.1, host_cpus=2, other_cpu_share=48.0, own_cpu_share=45.0)
    ctx = _context(BIMODAL, [busy])
    timing = ctx.time("forward", _bimodal())
    (reason,) = ctx.recorder.invalid_reasons
    assert reason.startswith("forward: median not within 5 % after 0.3 s: 95 % CI ")
    assert reason.endswith(
        f", n={len(timing.samples_ms)}): host busy (load 3.1 on 2 CPUs, "
        "48 % CPU used by other processes)")


def test_context_time_leaves_a_quiet_host_out_of_the_reason() -> None:
    quiet = _FixedHostLoad(host_load=2.2, host_cpus=2, other_cpu_share=3.0, own_cpu_share=50.0)
    ctx = _context(BIMODAL, [quiet])
    ctx.time("forward", _bimodal())
    (reason,) = ctx.recorder.invalid_reasons
    assert re.fullmatch(r"forward: median not within 5 % after 0\.3 s: 95 % CI \S+ ms "
                        r"\(±\d+ %, n=\d+\)", reason), reason


def test_context_time_records_robust_stats_and_host_figures_with_units() -> None:
    from harness.probes import default_probes

    measure = MeasureSettings(warmup=1, min_repeats=12, min_seconds=0.3, rel_precision=None)
    ctx = _context(measure, default_probes("cpu"))
    ctx.time("forward", lambda: time.sleep(0.002), items=8, item_unit="token")
    assert ctx.recorder.invalid_reasons == []
    rows = {(r.metric, r.stat): r for r in ctx.recorder.metrics if r.phase == "forward"}
    for stat in STAT_KEYS:
        assert rows[("latency", stat)].unit == STAT_UNITS[stat]
    assert rows[("latency", "median_ci_lo")].unit == "ms"
    assert rows[("latency", "outliers")].unit == "count"
    assert rows[("latency", "median_rel_ci")].unit == ""
    lo, hi = rows[("latency", "median_ci_lo")].value, rows[("latency", "median_ci_hi")].value
    assert lo <= rows[("latency", "median")].value <= hi
    # the host's figures of the same phase, for a run page to diagnose even valid runs
    assert rows[("host_load", "max")].value is not None
    assert rows[("host_cpus", "value")].value >= 1
    assert 0 <= rows[("other_cpu_share", "value")].value <= 100
    assert rows[("own_cpu_share", "value")].value is not None
