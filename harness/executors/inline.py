"""The inline executor: runs in the driver's own process, one after another.

For debugging (a breakpoint in a method works) and tests. Timeouts are enforced with
SIGALRM; a crash or a hang in native code takes the driver down with it, which is what the
subprocess executor is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.api import RunSpec
from harness.context import execute_run
from harness.environment import collect_environment
from harness.executors import Finished, Started
from harness.plugins import PluginSet
from harness.registry import Components


class InlineExecutor:
    def __init__(
        self, plugins: PluginSet, components: Components, device: str, cache_dir: str
    ) -> None:
        self.plugins = plugins
        self.components = components
        self.device = "cuda:0" if device == "cuda" else device
        self.cache_dir = cache_dir
        self._environment: dict[str, Any] | None = None

    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        for spec in runs:
            started(spec)
            if self._environment is None:
                self._environment = collect_environment(self.device)
            result = execute_run(
                spec, self.components, self.plugins, self.device, self.cache_dir, alarm=True
            )
            finished(spec, {**result, "environment": self._environment})
