"""Executors: how pending runs get executed. The driver stays the only writer of the store.

An executor takes the pending runs and two callbacks: ``started(spec)`` when a run is handed
to a worker and ``finished(spec, result)`` with its result dict (see
:func:`harness.context.execute_run`) plus an ``environment`` dict. Every run handed to
``execute`` gets exactly one ``finished`` call, whatever happens to the process running it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from harness.api import RunSpec

Started = Callable[[RunSpec], None]
Finished = Callable[[RunSpec, dict[str, Any]], None]

#: Executors a suite may name (``executor:``); the first is the default.
EXECUTORS = ("subprocess", "inline")


class Executor(Protocol):
    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        """Execute ``runs``, reporting each through the callbacks as it starts and ends."""
        ...
