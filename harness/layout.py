"""How a suite's results are laid out on the leaderboard: roles and pivot views.

A suite decides two things about its leaderboard that its runs alone don't say: which rows
are references or bounds rather than contenders (each method's ``role``, which a suite
entry may override), and which pivot tables its paper would print (``views:``, e.g. method
× replay buffer). The suite resolver writes a :class:`Layout`, the driver keeps it in the
store beside the suite's text, and the report reads it back: a site shows a suite's views
without loading the suite or its plugins, and a role never enters a run key.

A view's rows and columns are *dimensions* of a run, named the same way everywhere:
``method``, ``model``, ``task``, ``params.NAME`` (a method param) and
``task_params.NAME`` (a task param); its columns may also be :data:`BINS`, the per-bin
breakdown its metric records (e.g. exact match per needle-depth bin).

This module imports nothing from ``harness``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

__all__ = ["BINS", "Layout", "View", "dimension_label", "run_dimensions"]

#: A view's ``columns`` when they are the bins of its metric's declared breakdown.
BINS = "bins"


def run_dimensions(method: str, model: str, task: str, params: Mapping[str, Any],
                   task_params: Mapping[str, Any]) -> dict[str, Any]:
    """Every dimension a view can name, with this run's value (params as plain JSON)."""
    return {
        "method": method, "model": model, "task": task,
        **{f"params.{k}": v for k, v in params.items()},
        **{f"task_params.{k}": v for k, v in task_params.items()},
    }


def dimension_label(dimension: str) -> str:
    """A dimension as a table heading: the param's own name, without its kind."""
    return dimension.rpartition(".")[2]


@dataclass(frozen=True)
class View:
    """One pivot table: ``rows`` × ``columns`` of one metric, each cell a mean over seeds.

    ``where`` keeps only the runs whose dimensions take one of the listed values; ``mean``
    adds a column with each row's mean over the columns (per seed, then over seeds);
    ``delta`` shows every contender's cell against the reference row of its column.
    ``phase`` picks the phase of a per-phase metric (None: its only or first phase).
    """

    title: str
    rows: tuple[str, ...]
    columns: str
    metric: str
    phase: str | None = None
    where: dict[str, list[Any]] = field(default_factory=dict)
    mean: bool = False
    delta: bool = False

    def matches(self, dimensions: Mapping[str, Any]) -> bool:
        return all(dimensions.get(d, _ABSENT) in values for d, values in self.where.items())


_ABSENT = object()


@dataclass(frozen=True)
class Layout:
    """A suite's roles (run key → role) and views, as kept in the store (JSON).

    ``runs`` are the run keys of the suite as its views were declared (kept only when it has
    views): a store also holds the runs of the suite's earlier versions, under the same name,
    and a view's cell must not average a configuration the suite no longer has with the one
    it has now.
    """

    roles: dict[str, str] = field(default_factory=dict)
    views: tuple[View, ...] = ()
    runs: tuple[str, ...] = ()

    def over(self, earlier: Layout) -> Layout:
        """This layout, keeping the roles ``earlier`` gave runs it no longer has: runs a
        plugin re-keyed stay in the store, and stay what they were (pinned, never ranked)."""
        return replace(self, roles={**earlier.roles, **self.roles})

    def to_json(self) -> str:
        return json.dumps({"roles": self.roles, "views": [asdict(v) for v in self.views],
                           "runs": list(self.runs)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Layout:
        if not text:
            return cls()
        data: dict[str, Any] = json.loads(text)
        views = tuple(View(**{**v, "rows": tuple(v["rows"])}) for v in data.get("views", ()))
        return cls(dict(data.get("roles", {})), views, tuple(data.get("runs", ())))
