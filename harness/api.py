"""Public contracts between the core and plugins.

Everything a plugin author touches is defined here: the objects a plugin registers
(scenarios, methods, tasks, built-in models, model sources, probes), the run context a
scenario receives, and the rows a run produces. A plugin imports ``harness.api``,
``harness.hookimpl`` and the method protocol of a scenario it serves
(``harness.scenarios.<name>_protocol``); the rest of ``harness`` is private to the core
(docs/architecture.md, "Import rules"; the test suite enforces it).

This module imports neither torch nor transformers so that discovery, ``harness list`` and
``--dry-run`` stay fast.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.columns import CORE_COSTS, CostColumn, CostPlot, QualityColumn, ResultColumns

__all__ = [
    "CORE_COSTS",
    "RESERVED_MODEL_KEYS",
    "ROLES",
    "STATUSES",
    "TIMING_ONLY_INVALID",
    "CostColumn",
    "CostPlot",
    "MeasureSettings",
    "Method",
    "MetricRow",
    "ModelEntry",
    "ModelSource",
    "NoParams",
    "Params",
    "PhaseResult",
    "Probe",
    "QualityColumn",
    "Recorder",
    "ResultColumns",
    "RunContext",
    "RunSpec",
    "SampleRow",
    "Scenario",
    "Task",
    "TimingResult",
    "Unsupported",
]

#: Every status a run can end with. ``ok`` and ``invalid`` are measurements (``invalid``
#: missed the suite's measurement rules); ``oom`` is a real result for memory benchmarks;
#: ``failed``, ``timeout`` and ``crashed`` carry an error and a traceback or reason;
#: ``unsupported`` says why the run can't be done on this hardware (:class:`Unsupported`):
#: not a failure, and not retried there.
STATUSES = ("ok", "invalid", "oom", "failed", "timeout", "crashed", "unsupported")

#: ``(phase, metric)`` of the figure (1.0) an ``invalid`` run stores when only its timings are
#: in doubt (every reason given to :meth:`Recorder.mark_invalid` with ``timing=True``): its
#: quality still counts in the leaderboard's quality cells beside its ok seeds; its costs don't.
TIMING_ONLY_INVALID = ("validity", "timing_only")

#: What a method may be on a leaderboard instead of a contender (its ``role``, which a
#: suite entry may override): the ``reference`` that other rows are compared with (the
#: uncompressed model, the full cache), or the ``upper-bound`` and ``lower-bound`` that a
#: paper prints apart (joint training, plain fine-tuning). Such rows are pinned above the
#: ranked ones and never starred, led or put on a Pareto front.
ROLES = ("reference", "upper-bound", "lower-bound")


class Params(BaseModel):
    """Base class of every params schema (method, task or model params).

    Unknown keys are errors, so a misspelt parameter in a suite fails validation with the
    field's file:line instead of silently running with a default. Subclass it and declare
    fields with defaults, each with a one-line doc: a docstring under the field (or
    ``Field(description=...)``), which ``harness show`` and the README's tables print.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NoParams(Params):
    """Params schema of a component that takes none."""


class MeasureSettings(Params):
    """How long timed loops run, and when a run counts as valid (MLPerf LoadGen's idea).

    A timed loop samples until ``min_repeats`` and ``min_seconds`` hold and the median's 95 %
    confidence interval is within ``rel_precision`` of the median (relative half-width;
    None: no precision target), stopping early only at ``max_seconds`` of loop wall time. A
    run that ends below either minimum, or short of the precision, is stored with status
    ``invalid`` and the reason.

    ``max_cv`` is deprecated: the CV no longer decides validity (one stall among fast
    iterations inflates it while the median barely moves). Set alone, its value is read as
    ``rel_precision`` (``max_cv: null`` as no precision target).
    """

    warmup: int = 3
    min_repeats: int = 10
    min_seconds: float = 1.0
    max_seconds: float = 60.0
    rel_precision: float | None = 0.05
    max_cv: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _max_cv_means_rel_precision(cls, data: Any) -> Any:
        """A deprecated ``max_cv`` set without ``rel_precision`` is read as ``rel_precision``.

        Only a number or null is carried over; anything else is left for the field's own
        validation to report under ``max_cv``.
        """
        if not isinstance(data, Mapping) or "max_cv" not in data or "rel_precision" in data:
            return data
        value = data["max_cv"]
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return {**data, "rel_precision": value}
        return data


def _fmt(value: float) -> str:
    """A latency with three significant digits (``6.10``, ``123``, ``0.0412``)."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    decimals = min(6, max(0, 2 - math.floor(math.log10(abs(value)))))
    return f"{value:.{decimals}f}"


def _pct(ratio: float) -> str:
    """A ratio as a percentage: ``13 %``, ``5 %``, ``2.5 %``."""
    value = ratio * 100
    return f"{value:.0f} %" if abs(value) >= 10 else f"{value:.2g} %"


@dataclass(frozen=True)
class TimingResult:
    """What one timed loop measured: raw per-iteration samples plus their summary.

    ``cold_ms`` is the first call, timed alone (it includes lazy initialisation, compilation,
    autotuning), and is not among ``samples_ms``. ``clock`` is ``"cuda_event"`` or
    ``"perf_counter"``. ``stats`` holds the summary of ``harness.probes.timing.summarize``.
    ``wall_s`` is the timed loop's wall time when a harness loop took the samples (None for
    samples a scenario collected itself).
    """

    samples_ms: tuple[float, ...]
    cold_ms: float
    warmup: int
    stats: dict[str, float]
    clock: str
    wall_s: float | None = None

    def invalid_reasons(self, measure: MeasureSettings) -> list[str]:
        """Why this loop misses the suite's measurement rules (empty when it is valid)."""
        reasons: list[str] = []
        n = len(self.samples_ms)
        if n < measure.min_repeats:
            reasons.append(f"n={n} < min_repeats={measure.min_repeats}")
        measured_s = math.fsum(self.samples_ms) / 1e3
        if measured_s < measure.min_seconds:
            reasons.append(f"measured {measured_s:.3g} s < min_seconds={measure.min_seconds}")
        precision = self.precision_reason(measure)
        if precision is not None:
            reasons.append(precision)
        return reasons

    def precision_reason(self, measure: MeasureSettings) -> str | None:
        """Why the median is not known within ``measure.rel_precision``; None when it is
        (or when there is no precision target). Reads the interval from ``stats``."""
        target = measure.rel_precision
        if target is None:
            return None
        n = len(self.samples_ms)
        lo, hi, rel = (self.stats.get(k, math.nan)
                       for k in ("median_ci_lo", "median_ci_hi", "median_rel_ci"))
        if not math.isnan(rel) and rel <= target:
            return None
        if self.wall_s is not None:
            after = f"after {self.wall_s:.1f} s"
        else:
            measured_s = math.fsum(self.samples_ms) / 1e3
            after = f"after {n} samples ({measured_s:.3g} s measured)"
        head = f"median not within {_pct(target)} {after}"
        if any(k not in self.stats for k in ("median_ci_lo", "median_ci_hi", "median_rel_ci")):
            return f"{head}: no confidence interval in the stats (n={n})"
        if math.isnan(lo) or math.isnan(hi):
            return f"{head}: too few samples for a 95 % confidence interval (n={n}, needs 6)"
        spread = f"±{_pct(rel)}" if not math.isnan(rel) else "relative width unknown"
        return f"{head}: 95 % CI {_fmt(lo)}–{_fmt(hi)} ms ({spread}, n={n})"


@dataclass(frozen=True)
class MetricRow:
    """One stored figure: ``(phase, metric, stat) -> value [unit]``.

    ``value`` is ``None`` only together with a ``reason`` (a probe that cannot measure
    here says why; it never reports 0). ``higher_is_better`` is set on quality metrics so
    the leaderboard knows which way is better; costs leave it ``None`` (lower is better).
    """

    phase: str
    metric: str
    value: float | None
    unit: str
    stat: str = "value"
    reason: str | None = None
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        if self.value is None and not self.reason:
            raise ValueError(f"metric {self.phase}/{self.metric}: a null value needs a reason")


@dataclass(frozen=True)
class SampleRow:
    """Raw samples behind a statistic (e.g. every timed iteration, in ``unit``)."""

    phase: str
    metric: str
    unit: str
    values: tuple[float, ...]


class Recorder:
    """Collects a run's rows; scenarios, methods and probes write through it."""

    def __init__(self) -> None:
        self.metrics: list[MetricRow] = []
        self.samples: list[SampleRow] = []
        self.invalid_reasons: list[str] = []
        #: Whether every reason is a timed loop's (its timings are in doubt, its quality not).
        self.only_timing_invalid = True

    def record(
        self,
        phase: str,
        metric: str,
        value: float | None,
        unit: str,
        *,
        stat: str = "value",
        reason: str | None = None,
        higher_is_better: bool | None = None,
    ) -> None:
        """Record one figure. Pass ``value=None`` with a ``reason`` when it can't be had."""
        if value is not None:
            value = float(value)
        self.metrics.append(
            MetricRow(phase, metric, value, unit, stat, reason, higher_is_better)
        )

    def unavailable(self, phase: str, metric: str, unit: str, reason: str) -> None:
        """Record that ``metric`` cannot be measured here, and why (stored as null)."""
        self.record(phase, metric, None, unit, reason=reason)

    def record_samples(self, phase: str, metric: str, unit: str, values: Sequence[float]) -> None:
        """Keep the raw samples behind a statistic."""
        self.samples.append(SampleRow(phase, metric, unit, tuple(float(v) for v in values)))

    def mark_invalid(self, reason: str, *, timing: bool = False) -> None:
        """Mark the run ``invalid`` (it finishes and is stored, with this reason).

        ``timing``: only its timings are in doubt (a timed loop missed the suite's precision
        target on a busy host); its quality figures still count in the leaderboard's quality
        cells (:data:`TIMING_ONLY_INVALID`), its costs do not.
        """
        self.invalid_reasons.append(reason)
        self.only_timing_invalid &= timing

    def value(self, phase: str, metric: str, stat: str = "value") -> float | None:
        """The latest recorded value of a figure, or ``None`` if absent or null."""
        for row in reversed(self.metrics):
            if (row.phase, row.metric, row.stat) == (phase, metric, stat):
                return row.value
        return None

class MemoryLimit(BaseModel):
    """``limits.memory``: caps on one run's memory. A run past one is stopped and stored as
    ``oom`` with the figure it reached, and the suite goes on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Peak RSS of the run's process tree, in GiB (a watchdog in the worker samples it).
    host_gb: float | None = Field(None, gt=0)
    #: CUDA memory the run may allocate, in GiB (torch's per-process memory fraction).
    cuda_gb: float | None = Field(None, gt=0)


#: Keys of a resolved model (``RunSpec.model``, besides ``ref``) that name it rather than
#: being options of its model source; a suite may not set them.
RESERVED_MODEL_KEYS = ("source", "id", "version")


@dataclass(frozen=True)
class RunSpec:
    """One cell of a suite's matrix, fully resolved (defaults filled in).

    ``config`` is the canonical JSON-able dict hashed into ``run_key``; the other fields are
    views of it for convenience.
    """

    run_key: str
    suite: str
    scenario: str
    model: Mapping[str, Any]
    task: str
    task_params: Mapping[str, Any]
    method: str
    method_version: str
    method_plugin: str
    params: Mapping[str, Any]
    seed: int
    device: str
    measure: MeasureSettings
    timeout_s: float | None
    config: Mapping[str, Any]
    #: Not part of the run key, like ``timeout_s``: limits stop a run, they don't shape it.
    memory_limit: MemoryLimit = field(default_factory=lambda: MemoryLimit())

    @property
    def label(self) -> str:
        """A short human label: ``method(k=v) · task · model · seed``."""
        params = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        method = f"{self.method}({params})" if params else self.method
        return f"{method} · {self.task} · {self.model['ref']} · seed {self.seed}"


class Unsupported(Exception):
    """Raised by a method or scenario when a run can't be done on this machine.

    The run is stored as ``unsupported`` with the message as its reason (e.g. "offloading
    needs a CUDA device"): the suite's exit status does not count it as a failure, and
    ``--retry-failed`` does not run it again (on other hardware its run key differs).
    """


@dataclass
class PhaseResult:
    """What a probed phase measured; filled when its ``with`` block exits."""

    name: str
    seconds: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)


@runtime_checkable
class Probe(Protocol):
    """A measurement wrapped around every phase of a run.

    ``measure(phase, recorder)`` is a context manager: it starts measuring on enter and
    records its rows on exit. When its source is unavailable (no GPU, no NVML, no per-process
    VRAM in a container) it records nulls with a reason and never raises.
    """

    name: str

    def measure(self, phase: str, recorder: Recorder) -> contextlib.AbstractContextManager[Any]:
        ...


@runtime_checkable
class RunContext(Protocol):
    """What a scenario gets for one run. Implemented by the core."""

    spec: RunSpec
    recorder: Recorder
    device: str
    method: Method
    task: Task
    #: Every registered component (a :class:`harness.registry.Components`).
    components: Any
    #: Where built-in models and datasets are cached (``$HARNESS_CACHE_DIR`` or the user's
    #: cache dir), keyed by recipe hash.
    cache_dir: str

    def phase(self, name: str) -> contextlib.AbstractContextManager[PhaseResult]:
        """Wrap a phase (``load``, ``prefill``, ``train``, …) with every probe."""
        ...

    def time(
        self,
        phase: str,
        fn: Callable[[], Any],
        *,
        items: float | None = None,
        item_unit: str = "item",
    ) -> TimingResult:
        """Time ``fn`` under the suite's measure settings inside ``phase``.

        Records the cold first call, latency statistics and raw samples, throughput when
        ``items`` (processed per call) is given, and validity against the measure settings.
        """
        ...

    def load_model(self, kind: str) -> Any:
        """Load this run's model as ``kind`` (e.g. ``"causal-lm"``) on ``device``.

        Preparing a built-in model (training it on first use) happens outside the probes;
        loading is timed in the ``load`` phase.
        """
        ...

    def load_tokenizer(self) -> Any:
        """Load the tokenizer that goes with this run's model (from its model source)."""
        ...

    def count_parameters(self, model: Any, phase: str = "model") -> tuple[int, int]:
        """Record and return ``(total, trainable)`` parameter counts of a torch module (the
        trainable count is recorded only for a scenario whose ``columns`` say it trains)."""
        ...


@runtime_checkable
class Scenario(Protocol):
    """The protocol of one kind of workload. It owns the loop and the phases.

    ``method_protocol`` names the attributes a method must provide to take part (checked
    when a suite is validated); ``model_kinds`` the kinds it asks ``load_model`` for.
    An optional ``columns`` (:class:`ResultColumns`) declares its quality metrics, its own
    cost columns and the quality-versus-cost plots it wants on the leaderboard; without one
    it gets the core's cost columns and plots, and every quality metric it records.

    An optional ``contract`` (``str``) is the method contract, written once and printed by
    ``harness show scenario NAME``: what each ``method_protocol`` attribute (and each
    optional one the scenario looks for) receives, returns and when it is called; what
    ``params`` holds (the run's method params as validated by the method's ``params``
    schema, defaults filled in — as a plain dict or as that schema's object: say which);
    and which parts of ``ctx`` (:class:`RunContext`) a method may use — typically
    ``device``, ``spec.seed``, ``cache_dir`` and ``recorder.record`` for figures of its own
    — against those that are the scenario's (``phase``, ``time``, ``count_parameters``,
    ``task``, the scenario's own metrics). Built-in scenarios set it to the docstring of
    their protocol module (``harness.scenarios.<name>_protocol``) or of their own module, so
    the text lives in one place.
    """

    name: str
    description: str
    method_protocol: tuple[str, ...]

    def run(self, ctx: RunContext) -> None:
        ...


@runtime_checkable
class Method(Protocol):
    """A named method: the scenarios it supports, its params schema, its scenario side.

    ``version`` goes into every run key, so bump it when the method's results change.
    An optional ``role`` (one of :data:`ROLES`) marks a reference or a bound rather than
    a contender; it changes how the leaderboard shows the method's rows, never a run key.
    The scenario-specific side is extra attributes named by the scenario's
    ``method_protocol`` (e.g. ``apply(model, params, ctx)`` for ``perplexity``).
    """

    name: str
    version: str
    description: str
    scenarios: tuple[str, ...]
    params: type[Params]


@runtime_checkable
class Task(Protocol):
    """Data plus metric for one scenario. ``params`` is its schema (defaults shown in list).

    ``data(params, seed, **inputs)`` yields the task's data for one run, in the form its
    scenario's protocol names (held-out text, episodes, train/val/test splits, a stream of
    tasks). ``inputs`` are what that scenario hands every task of its kind (e.g. the
    tokenizer); a task that needs no seed ignores it.
    """

    name: str
    description: str
    scenario: str
    params: type[Params]

    def data(self, params: Any, seed: int, **inputs: Any) -> Any:
        ...


@runtime_checkable
class ModelEntry(Protocol):
    """A built-in model (``builtin:NAME``): made offline, cached under the cache dir.

    ``prepare(cache_dir)`` builds it if absent (e.g. trains it) and returns the local path
    that ``hf`` loading code can read; it must be safe to call from several processes. An
    optional ``version`` (e.g. the recipe's hash) goes into every run key, so runs of a
    rebuilt model are measured anew instead of resumed.
    """

    name: str
    description: str
    kinds: tuple[str, ...]

    def prepare(self, cache_dir: str) -> str:
        ...


@runtime_checkable
class ModelSource(Protocol):
    """How a model reference ``SOURCE:ID`` is loaded (``hf``, ``hf-config``, ``builtin``).

    ``kind`` says which head the scenario needs (``causal-lm``, ``image-classification``,
    ``base``). ``options`` are the other keys of the suite's model entry (``dtype``,
    ``overrides``, …). A source may also define ``prepare(id, options, ctx)``, run once
    before loading and outside the probes (a built-in model trains there on first use).
    """

    name: str
    description: str

    def load(self, id: str, kind: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        ...

    def load_tokenizer(self, id: str, options: Mapping[str, Any], ctx: RunContext) -> Any:
        ...
