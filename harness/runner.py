"""The driver: pending runs -> executor -> results -> store, one committed run at a time.

The driver process is the only writer of the store. Each result is committed in its own
transaction as soon as it arrives, so a killed driver loses nothing that finished; a rerun
skips what is stored (resume). If a commit fails (a full disk, a store gone read-only), the
suite stops: the result in hand, and any that arrive while the executor winds down, are
spooled as JSON beside the store (``<store>.unsaved/``), and the next run on that store
commits them before anything else.
"""

from __future__ import annotations

import contextlib
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


class StopSuite(Exception):
    """Raised through the executor when the store can't take a result: stop scheduling."""


@dataclass
class SuiteOutcome:
    """What one ``harness run`` did: results of the runs executed now, and what it skipped."""

    results: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    #: Results spooled beside the store because it could not take them.
    unsaved: list[Path] = field(default_factory=list)
    #: Results that could be neither stored nor spooled (run keys).
    lost: list[str] = field(default_factory=list)
    #: Why the suite stopped before its end (the store's fault), if it did.
    stopped: str | None = None
    #: Runs that never ran because the suite stopped.
    not_run: int = 0
    #: Spooled results of an earlier run, committed first.
    recovered: int = 0

    @property
    def stored(self) -> int:
        return len(self.results) - len(self.unsaved) - len(self.lost)

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
        outcome = SuiteOutcome()
        outcome.recovered = self._recover_spool()
        suite_id = self.store.record_suite(suite.name, str(suite.path), suite.description,
                                           suite.text, suite.layout.to_json())
        if self.columns is not None:
            self.store.record_columns(suite.scenario, self.columns.to_json())
        statuses = self.store.statuses([spec.run_key for spec in suite.runs])
        pending = select_pending(suite.runs, statuses, rerun=rerun, retry_failed=retry_failed)
        outcome.skipped = len(suite.runs) - len(pending)
        self._notify("harness_suite_start", suite=suite.name, runs=suite.runs, pending=pending)
        self.reporter.begin(suite, pending, outcome.skipped)

        def started(spec: RunSpec) -> None:
            self.reporter.run_started(spec)
            self._notify("harness_run_start", run=spec)

        def finished(spec: RunSpec, result: dict[str, Any]) -> None:
            outcome.results.append(result)
            error = None if outcome.stopped else self._commit(suite_id, spec, result)
            if outcome.stopped or error:
                spooled = self._spool(suite_id, spec, result, error or outcome.stopped or "")
                if spooled is None:
                    outcome.lost.append(spec.run_key)
                else:
                    outcome.unsaved.append(spooled)
            self.reporter.run_finished(spec, result)
            self._notify("harness_run_finish", run=spec, result=result)
            if error and not outcome.stopped:
                outcome.stopped = error
                raise StopSuite(error)

        try:
            self.executor.execute(pending, started, finished)
        except StopSuite:
            outcome.not_run = len(pending) - len(outcome.results)
        finally:
            self._notify("harness_suite_finish", suite=suite.name, results=outcome.results)
            self.reporter.end()
        return outcome

    @property
    def spool_dir(self) -> Path:
        return self.store.path.parent / f"{self.store.path.name}.unsaved"

    def _commit(self, suite_id: str, spec: RunSpec, result: dict[str, Any]) -> str | None:
        """Commit one result; on failure, what went wrong."""
        try:
            self._store(suite_id, run_row(spec, self.plugins.versions), result)
            return None
        except Exception as exc:
            return f"could not store run {spec.run_key}: {exc}"

    def _store(self, suite_id: str, run: dict[str, Any], result: dict[str, Any]) -> None:
        environment = result.get("environment") or {}
        env_key = json.dumps(environment, sort_keys=True, default=str)
        if env_key not in self._env_ids:
            self._env_ids[env_key] = self.store.record_environment(environment)
        self.store.commit_run(suite_id, run, {**result, "env_id": self._env_ids[env_key]})

    def _spool(self, suite_id: str, spec: RunSpec, result: dict[str, Any], error: str
               ) -> Path | None:
        """Keep a result the store could not take as JSON beside it, whole or not at all
        (a full disk must not leave a truncated file behind); its path, or None."""
        path = self.spool_dir / f"{spec.run_key}-{int(time.time() * 1e3)}.json"
        partial = path.with_suffix(".part")
        payload = {"suite_id": suite_id, "run": run_row(spec, self.plugins.versions),
                   "result": result, "error": error}
        try:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(payload, default=str, indent=1))
            partial.replace(path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            self.reporter.warn(f"could not keep run {spec.run_key} in {self.spool_dir} either "
                               f"({exc}): it will run again")
            return None
        return path

    def _recover_spool(self) -> int:
        """Commit the results an earlier run spooled; set aside files that hold none."""
        if not self.spool_dir.is_dir():
            return 0
        recovered = 0
        for path in sorted(self.spool_dir.glob("*.json")):
            try:
                payload = json.loads(path.read_text())
                suite_id, run, result = payload["suite_id"], payload["run"], payload["result"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                aside = self.spool_dir / "set-aside"
                aside.mkdir(exist_ok=True)
                path.replace(aside / path.name)
                self.reporter.warn(f"set aside {path.name}: it holds no whole result ({exc}); "
                                   f"moved to {aside}")
                continue
            self._store(suite_id, run, result)  # failing here, the store is at fault: stop
            path.unlink()
            recovered += 1
        for partial in self.spool_dir.glob("*.part"):  # a spool write cut short
            partial.unlink(missing_ok=True)
        if recovered:
            self.reporter.warn(f"recovered {recovered} result(s) from {self.spool_dir}")
        with contextlib.suppress(OSError):
            self.spool_dir.rmdir()  # only when nothing is left in it
        return recovered

    def _notify(self, hook: str, **kwargs: Any) -> None:
        for message in notify(self.plugins, hook, **kwargs):
            self.reporter.warn(message)
