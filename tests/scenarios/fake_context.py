"""A stand-in for the core's run context, so a scenario runs in a test without the core."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from harness.api import MeasureSettings, PhaseResult, Recorder, RunSpec, TimingResult
from harness.models.sources import HFConfigSource, HFSource
from harness.probes.timing import summarize


class FakeContext:
    """Just enough of :class:`harness.api.RunContext` to run a scenario without the core:
    phases and timing only note what ran (timing returns a plain perf_counter summary);
    loading uses the real ``hf`` source code, and kind ``config`` the ``hf-config`` one with
    ``model_options``."""

    def __init__(
        self,
        model_dir: str,
        method: Any,
        task: Any,
        params: Mapping[str, Any] | None = None,
        task_params: Mapping[str, Any] | None = None,
        seed: int = 0,
        measure: MeasureSettings | None = None,
        cache_dir: str = "",
        model_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.model_options = dict(model_options or {})
        self.recorder = Recorder()
        self.device = "cpu"
        self.method = method
        self.task = task
        self.components = None
        self.cache_dir = cache_dir
        self.phases: list[str] = []
        self.timed: dict[str, tuple[float | None, str, int]] = {}
        self.spec = RunSpec(
            run_key="test",
            suite="test",
            scenario=task.scenario,
            model={"ref": f"hf:{model_dir}"},
            task=task.name,
            task_params=task.params(**(task_params or {})).model_dump(),
            method=method.name,
            method_version=method.version,
            method_plugin="test",
            params=method.params(**(params or {})).model_dump(),
            seed=seed,
            device="cpu",
            measure=measure or MeasureSettings(),
            timeout_s=None,
            config={},
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseResult]:
        self.phases.append(name)
        yield PhaseResult(name)

    def time(
        self,
        phase: str,
        fn: Callable[[], Any],
        *,
        items: float | None = None,
        item_unit: str = "item",
    ) -> TimingResult:
        calls = 3
        samples: list[float] = []
        with self.phase(phase):
            for _ in range(calls):
                start = time.perf_counter_ns()
                fn()
                samples.append((time.perf_counter_ns() - start) / 1e6)
        self.timed[phase] = (items, item_unit, calls)
        return TimingResult(tuple(samples), samples[0], 0, summarize(samples), "perf_counter")

    def load_model(self, kind: str) -> Any:
        if kind == "config":
            return HFConfigSource().load(self.model_dir, kind, self.model_options, self)
        return HFSource().load(self.model_dir, kind, {}, self)

    def load_tokenizer(self) -> Any:
        return HFSource().load_tokenizer(self.model_dir, {}, self)

    def count_parameters(self, model: Any, phase: str = "model") -> tuple[int, int]:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.recorder.record(phase, "total_params", total, "count")
        self.recorder.record(phase, "trainable_params", trainable, "count")
        return total, trainable
