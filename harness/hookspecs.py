"""Every hook a harness plugin can implement, documented where it is declared.

A plugin is a module (or object) with functions decorated by ``harness.hookimpl`` and named
after the specs below. It is found through the entry-point group ``harness`` (what built-in
plugins use too), ``harness run -p module``, or a suite's ``plugins:`` list.

Hook functions take keyword arguments only and may accept a subset of the spec's arguments.
Registration hooks are called once per plugin, each call guarded on its own: a plugin that
raises is named in the error and the other plugins still register. Lifecycle hooks run in the
driver process (the one that writes the store); an exception there is reported with the
plugin's name and never loses a result.

Plugins must stay cheap to import: import torch, transformers and friends inside functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from harness.api import Method, ModelEntry, ModelSource, Probe, RunSpec, Scenario, Task

PROJECT = "harness"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------------------------
# Registration: what a plugin brings. Each returns a sequence (or None for nothing).
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_add_scenarios() -> Sequence[Scenario] | None:
    """Return scenarios (workload protocols) this plugin provides.

    A scenario name must be unique across all plugins; a duplicate is an error naming both
    plugins.
    """


@hookspec
def harness_add_methods() -> Sequence[Method] | None:
    """Return methods this plugin provides.

    Each method names the scenarios it supports and its params schema (a
    :class:`harness.api.Params` subclass). A method's name and ``version`` enter every run
    key, so results of different versions never mix.
    """


@hookspec
def harness_add_tasks() -> Sequence[Task] | None:
    """Return tasks (data plus metric, for one scenario) this plugin provides."""


@hookspec
def harness_add_models() -> Sequence[ModelEntry] | None:
    """Return built-in models, referenced in suites as ``builtin:NAME``."""


@hookspec
def harness_add_model_sources() -> Sequence[ModelSource] | None:
    """Return model sources: the loader behind a ``SOURCE:ID`` model reference."""


@hookspec
def harness_add_probes(device: str) -> Sequence[Probe] | None:
    """Return probes wrapped around every phase of a run on ``device`` (called in the worker).

    The core's own probes (host memory, CUDA memory, NVML) come through this hook too; a
    plugin adds one (say, a CPU energy counter) the same way.
    """


# ---------------------------------------------------------------------------------------------
# Lifecycle: observers in the driver (export to MLflow, notify, …). Return values are ignored.
# ---------------------------------------------------------------------------------------------


@hookspec
def harness_suite_start(suite: str, runs: Sequence[RunSpec], pending: Sequence[RunSpec]) -> None:
    """Called before the first run of a suite starts.

    :param suite: the suite's name.
    :param runs: every run of the expanded matrix.
    :param pending: the runs that will execute now (the others were resumed from the store).
    """


@hookspec
def harness_run_start(run: RunSpec) -> None:
    """Called in the driver when a run is handed to an executor."""


@hookspec
def harness_run_finish(run: RunSpec, result: Mapping[str, Any]) -> None:
    """Called in the driver after a run's result has been committed to the store.

    :param result: the stored result: ``status``, ``error``, ``metrics`` (list of dicts
        with phase, metric, stat, value, unit, reason), ``wall_s``.
    """


@hookspec
def harness_suite_finish(suite: str, results: Sequence[Mapping[str, Any]]) -> None:
    """Called after the last run of a suite, with the results of the runs executed now."""
