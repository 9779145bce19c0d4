"""What a scenario's results look like on the leaderboard: its columns and its plots.

A scenario declares, as its ``columns`` attribute, a :class:`ResultColumns`: the quality
metrics it records (the first is the headline that orders a leaderboard), the cost figures
of its own (bytes a KV cache keeps resident, bytes of a replay buffer, host→device traffic
per token…) and which quality-versus-cost plots it wants. The generic probe costs
(:data:`CORE_COSTS`: latency, throughput, peak VRAM, peak host RAM, energy, trainable
params) are the core's and show wherever they were measured; the report knows nothing else
by name. The driver stores each scenario's declaration with its results, so a site built
from the store shows a third-party scenario's columns without loading its plugin.

This module imports nothing from ``harness``: :mod:`harness.api` re-exports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "CORE_COSTS",
    "CostColumn",
    "CostPlot",
    "QualityColumn",
    "ResultColumns",
    "merged",
]


@dataclass(frozen=True)
class QualityColumn:
    """A quality metric a scenario records with ``higher_is_better`` set.

    ``breakdown`` is the stat prefix of a per-bin breakdown recorded beside the metric's
    ``value`` (e.g. ``"depth_"`` for exact match per needle-depth bin, stats ``depth_00``…):
    shown on run pages, never as leaderboard columns.
    """

    metric: str
    higher_is_better: bool
    phase: str = "eval"
    breakdown: str | None = None

    def describe(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        text = f"{self.metric} · {self.phase} ({direction} is better)"
        return f"{text}, by {self.breakdown}*" if self.breakdown else text


@dataclass(frozen=True)
class CostColumn:
    """A cost column: the stored figure ``(metric, stat)`` it shows and how.

    ``key`` names the column (and its CSV/JSON fields); ``unit`` is the unit the figure is
    recorded in, for readers of ``harness list``; the site formats the stored unit.
    ``per_phase`` costs get one column per phase that recorded them (timed loops); the
    others show the maximum over phases (a peak is the peak of the whole run).
    ``noise`` is the relative spread below which two values of this cost are
    indistinguishable (0.02: within 2 % of the larger), for noise that seeds' confidence
    intervals miss (one seed per row, a process's resident memory): a Pareto plot against a
    cost whose values all lie within it draws no trade-off.
    ``training`` marks a cost that only means something where a method trains (trainable
    params): it shows only for scenarios that declare ``trains``.
    """

    key: str
    label: str
    metric: str
    unit: str
    stat: str = "value"
    higher_is_better: bool = False
    per_phase: bool = False
    noise: float = 0.0
    training: bool = False

    def describe(self) -> str:
        direction = "higher" if self.higher_is_better else "lower"
        where = "per phase" if self.per_phase else "max over phases"
        stat = "" if self.stat == "value" else f" ({self.stat})"
        return (f"{self.label}: {self.metric}{stat} in {self.unit or 'units'}, {where}, "
                f"{direction} is better")


@dataclass(frozen=True)
class CostPlot:
    """A quality-versus-cost Pareto plot of the headline quality against one cost column.

    ``cost`` is a cost column's key (the scenario's own or a core one); ``axis`` titles the
    x axis; ``what`` completes "no run here recorded …" when no row has the cost.
    """

    cost: str
    title: str
    axis: str
    what: str


@dataclass(frozen=True)
class ResultColumns:
    """Everything a scenario declares about its leaderboard (see the module docstring).

    ``trains`` says whether the scenario's methods train: the ``training`` costs (trainable
    params) show only where it is true, never on, say, a perplexity row where nothing
    trains. None (a declaration stored before it said) shows them wherever recorded.
    """

    quality: tuple[QualityColumn, ...] = ()
    costs: tuple[CostColumn, ...] = ()
    plots: tuple[CostPlot, ...] = field(default=())
    trains: bool | None = None

    def __post_init__(self) -> None:
        keys = [c.key for c in (*CORE_COSTS, *self.costs)]
        clash = sorted({k for k in keys if keys.count(k) > 1})
        if clash:
            raise ValueError(f"cost column keys must be unique (core ones included): {clash}")
        unknown = sorted({p.cost for p in self.plots} - set(keys))
        if unknown:
            raise ValueError(f"plots name unknown cost columns {unknown} (known: {keys})")

    def cost_columns(self) -> dict[str, CostColumn]:
        """Every cost column by key: the core's first, in order, then the scenario's own."""
        return {c.key: c for c in (*CORE_COSTS, *self.costs)}

    def headline_by_metric(self) -> dict[str, QualityColumn]:
        """Each declared quality metric's first declaration (its headline phase)."""
        first: dict[str, QualityColumn] = {}
        for q in self.quality:
            first.setdefault(q.metric, q)
        return first

    def to_json(self) -> str:
        """Canonical JSON, as the store keeps it."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ResultColumns:
        data: dict[str, Any] = json.loads(text)
        return cls(
            quality=tuple(QualityColumn(**q) for q in data.get("quality", ())),
            costs=tuple(CostColumn(**c) for c in data.get("costs", ())),
            plots=tuple(CostPlot(**p) for p in data.get("plots", ())),
            trains=data.get("trains"),
        )

    def describe(self) -> list[str]:
        """One line per declared column and plot, for ``harness list scenarios``."""
        return [
            *(f"quality: {q.describe()}" for q in self.quality),
            *(f"cost: {c.describe()}" for c in self.costs),
            *(f"plot: {p.title} (x: {p.axis})" for p in self.plots),
            *([] if self.trains is None else [f"trains: {'yes' if self.trains else 'no'}"]),
        ]


def _core(key: str, label: str, metric: str, unit: str, stat: str, per_phase: bool,
          higher_is_better: bool = False, noise: float = 0.0,
          training: bool = False) -> CostColumn:
    return CostColumn(key, label, metric, unit, stat, higher_is_better, per_phase, noise,
                      training)


#: The probes' costs, shown for every scenario wherever they were measured, in this order
#: before a scenario's own.
CORE_COSTS: tuple[CostColumn, ...] = (
    _core("latency", "latency", "latency", "ms", "median", True),
    _core("throughput", "throughput", "throughput", "item/s", "median", True, True),
    _core("vram", "peak VRAM", "cuda_allocated_peak", "bytes", "max", False),
    # A process's peak RSS moves by a few MiB between identical runs (allocator, imports).
    _core("host_ram", "peak host RAM", "host_rss_peak", "bytes", "max", False, noise=0.02),
    _core("energy", "energy per item", "energy_per_item", "J/item", "value", True),
    _core("trainable", "trainable params", "params_trainable", "count", "value", False,
          training=True),
    # Achieved bandwidth as a share of the worker's measured peak (harness.probes.bandwidth),
    # where a method reports the bytes a step moves.
    _core("memory_roofline", "memory bandwidth, % of peak", "bandwidth_share", "%", "memory",
          True, True),
    _core("h2d_roofline", "host→device bandwidth, % of peak", "bandwidth_share", "%", "h2d",
          True, True),
)

def merged(declarations: Sequence[ResultColumns]) -> ResultColumns:
    """One declaration from several (a leaderboard whose runs span scenarios): each
    quality metric, cost column and plot once, in first-declared order."""
    quality: dict[tuple[str, str], QualityColumn] = {}
    costs: dict[str, CostColumn] = {}
    plots: dict[str, CostPlot] = {}
    for columns in declarations:
        for q in columns.quality:
            quality.setdefault((q.metric, q.phase), q)
        for c in columns.costs:
            costs.setdefault(c.key, c)
        for p in columns.plots:
            plots.setdefault(p.cost, p)
    trains = [columns.trains for columns in declarations]
    # Any scenario that trains brings the training costs; unknown (None) keeps them too.
    return ResultColumns(tuple(quality.values()), tuple(costs.values()), tuple(plots.values()),
                         True if True in trains else None if None in trains or not trains
                         else False)
