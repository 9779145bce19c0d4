"""The driver: pending runs -> executor -> results -> store, one committed run at a time.

The driver process is the only writer of the store. Each result is committed in its own
transaction as soon as it arrives, so a killed driver loses nothing that finished; a rerun
skips what is stored (resume). If a commit fails, the result is written as JSON beside the
store instead of being dropped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness import __version__
from harness.api import ResultColumns, RunSpec
from harness.executors import Executor
from harness.plugins import PluginSet, notify
from harness.store import Store
from harness.suite import Suite

#: Statuses ``--retry-failed`` runs again. ``ok`` and ``invalid`` are measurements and are
#: only redone with ``--rerun``.
RETRY_STATUSES = frozenset({"failed", "crashed", "timeout", "oom"})
#: Statuses that make ``harness run`` exit non-zero.
FAILURE_STATUSES = frozenset({"failed", "crashed", "timeout"})


class Reporter(Protocol):
    """Progress display (the CLI's is a rich progress bar); every method is a notification."""

    def begin(self, suite: Suite, pending: Sequence[RunSpec], skipped: int) -> None: ...
    def run_started(self, spec: RunSpec) -> None: ...
    def run_finished(self, spec: RunSpec, result: dict[str, Any]) -> None: ...
    def warn(self, message: str) -> None: ...
    def end(self) -> None: ...


def select_pending(
    runs: Sequence[RunSpec], statuses: dict[str, str], *, rerun: bool, retry_failed: bool
) -> list[RunSpec]:
    """Runs to execute now: unstored ones, plus failures or everything when asked."""
    if rerun:
        return list(runs)
    return [
        spec
        for spec in runs
        if spec.run_key not in statuses
        or (retry_failed and statuses[spec.run_key] in RETRY_STATUSES)
    ]


def run_row(spec: RunSpec, plugin_versions: dict[str, str]) -> dict[str, Any]:
    """The ``runs`` row of a spec (the result's columns are added by the store)."""
    plugin = spec.method_plugin
    return {
        "run_key": spec.run_key,
        "scenario": spec.scenario,
        "model": spec.model["ref"],
        "model_config": dict(spec.model),
        "task": spec.task,
        "task_params": dict(spec.task_params),
        "method": spec.method,
        "method_version": spec.method_version,
        "method_plugin": f"{plugin} {plugin_versions.get(plugin, '')}".strip(),
        "params": dict(spec.params),
        "seed": spec.seed,
        "device": spec.device,
        "hardware": spec.config["hardware"],
        "config": dict(spec.config),
        "harness_version": __version__,
    }


@dataclass
class SuiteOutcome:
    """What one ``harness run`` did: results of the runs executed now, and what it skipped."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    unsaved: list[Path] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] in FAILURE_STATUSES]


class Driver:
    def __init__(
        self,
        suite: Suite,
        store: Store,
        plugins: PluginSet,
        executor: Executor,
        reporter: Reporter,
        columns: ResultColumns | None = None,
    ) -> None:
        """``columns`` is what the suite's scenario declares about its leaderboard; it is
        kept in the store beside the results (docs/architecture.md, "One way through")."""
        self.suite = suite
        self.columns = columns
        self.store = store
        self.plugins = plugins
        self.executor = executor
        self.reporter = reporter
        self._env_ids: dict[str, str] = {}

    def run(self, *, rerun: bool = False, retry_failed: bool = False) -> SuiteOutcome:
        suite = self.suite
        suite_id = self.store.record_suite(suite.name, str(suite.path), suite.description,
                                           suite.text)
        if self.columns is not None:
            self.store.record_columns(suite.scenario, self.columns.to_json())
        statuses = self.store.statuses([spec.run_key for spec in suite.runs])
        pending = select_pending(suite.runs, statuses, rerun=rerun, retry_failed=retry_failed)
        outcome = SuiteOutcome(skipped=len(suite.runs) - len(pending))
        self._notify("harness_suite_start", suite=suite.name, runs=suite.runs, pending=pending)
        self.reporter.begin(suite, pending, outcome.skipped)

        def started(spec: RunSpec) -> None:
            self.reporter.run_started(spec)
            self._notify("harness_run_start", run=spec)

        def finished(spec: RunSpec, result: dict[str, Any]) -> None:
            saved = self._commit(suite_id, spec, result)
            if saved is not None:
                outcome.unsaved.append(saved)
            outcome.results.append(result)
            self.reporter.run_finished(spec, result)
            self._notify("harness_run_finish", run=spec, result=result)

        try:
            self.executor.execute(pending, started, finished)
        finally:
            self._notify("harness_suite_finish", suite=suite.name, results=outcome.results)
            self.reporter.end()
        return outcome

    def _commit(self, suite_id: str, spec: RunSpec, result: dict[str, Any]) -> Path | None:
        """Commit one result; on failure keep it as JSON beside the store and say where."""
        try:
            environment = result.get("environment") or {}
            env_key = json.dumps(environment, sort_keys=True, default=str)
            if env_key not in self._env_ids:
                self._env_ids[env_key] = self.store.record_environment(environment)
            self.store.commit_run(
                suite_id,
                run_row(spec, self.plugins.versions),
                {**result, "env_id": self._env_ids[env_key]},
            )
            return None
        except Exception as exc:
            folder = self.store.path.parent / f"{self.store.path.name}.unsaved"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{spec.run_key}-{int(time.time())}.json"
            payload = {"suite_id": suite_id, "run": run_row(spec, self.plugins.versions),
                       "result": result, "error": repr(exc)}
            path.write_text(json.dumps(payload, default=str, indent=1))
            self.reporter.warn(f"could not store run {spec.run_key} ({exc}); kept in {path}")
            return path

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for message in notify(self.plugins, hook, **kwargs):
            self.reporter.warn(message)
