"""The run context a scenario receives, and the execution of one run into a result.

This is the worker side of a run: whichever executor runs it, :func:`execute_run` turns a
:class:`~harness.api.RunSpec` into a result dict (status, error, metrics, samples) and never
raises for anything the run itself does.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

from harness.api import (
    RESERVED_MODEL_KEYS,
    TIMING_ONLY_INVALID,
    MeasureSettings,
    PhaseResult,
    Recorder,
    RunSpec,
    Unsupported,
)
from harness.plugins import PluginSet, probes_for
from harness.probes.bandwidth import record_bandwidth
from harness.probes.counters import count_parameters
from harness.probes.host_load import busy_host_reason
from harness.probes.timing import TimingResult, record_latency, time_callable
from harness.registry import Components


class RunTimeout(Exception):
    """The run exceeded its suite's ``limits.timeout`` (raised in the inline executor)."""


@contextlib.contextmanager
def _guarded(probe: Any, phase: str, recorder: Recorder) -> Iterator[None]:
    """Enter and exit ``probe`` so that a broken probe never fails the run it measures."""
    manager = None
    try:
        manager = probe.measure(phase, recorder)
        manager.__enter__()
    except Exception as exc:
        recorder.unavailable(phase, f"{probe.name}_probe", "", f"probe failed to start: {exc!r}")
        manager = None
    try:
        yield
    finally:
        if manager is not None:
            try:
                manager.__exit__(*sys.exc_info())
            except Exception as exc:
                recorder.unavailable(phase, f"{probe.name}_probe", "", f"probe failed: {exc!r}")


def _with_host_diagnosis(
    timing: TimingResult, measure: MeasureSettings, readings: dict[str, float | None]
) -> list[str]:
    """The loop's invalid reasons; the precision miss (else the last reason) gets the host
    diagnosis of the same phase appended (the host-load probe's figures in ``readings``)."""
    reasons = timing.invalid_reasons(measure)
    if not reasons:
        return reasons
    diagnosis = busy_host_reason(readings)
    if diagnosis is None:
        return reasons
    precision = timing.precision_reason(measure)
    at = reasons.index(precision) if precision in reasons else len(reasons) - 1
    reasons[at] = f"{reasons[at]}: {diagnosis}"
    return reasons


class Context:
    """The core's :class:`harness.api.RunContext` for one run."""

    def __init__(
        self,
        spec: RunSpec,
        components: Components,
        probes: list[Any],
        device: str,
        cache_dir: str,
    ) -> None:
        self.spec = spec
        self.components = components
        self.recorder = Recorder()
        self.device = device
        self.cache_dir = cache_dir
        self.method = components.methods.get(spec.method)
        self.task = components.tasks.get(spec.task)
        self.scenario = components.scenarios.get(spec.scenario)
        self._probes = probes
        self._source = components.model_sources.get(spec.model["source"])
        self._model_options = {
            k: v for k, v in spec.model.items() if k not in ("ref", *RESERVED_MODEL_KEYS)
        }
        self._prepared = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseResult]:
        """Wrap a phase with every probe; its wall time is recorded as ``seconds``."""
        result = PhaseResult(name)
        first_row = len(self.recorder.metrics)
        with contextlib.ExitStack() as stack:
            for probe in self._probes:
                stack.enter_context(_guarded(probe, name, self.recorder))
            start = time.perf_counter()
            try:
                yield result
            finally:
                result.seconds = time.perf_counter() - start
        self.recorder.record(name, "seconds", result.seconds, "s")
        result.metrics = {
            row.metric: row.value
            for row in self.recorder.metrics[first_row:]
            if row.stat in ("value", "max")
        }

    def time(
        self,
        phase: str,
        fn: Callable[[], Any],
        *,
        items: float | None = None,
        item_unit: str = "item",
    ) -> TimingResult:
        record = self.recorder.record
        with self.phase(phase) as probed:
            timing = time_callable(fn, self.spec.measure, self.device)
        record_latency(self.recorder, phase, timing.samples_ms, timing.stats)
        record(phase, "latency", timing.cold_ms, "ms", stat="cold")
        if items:
            record(phase, "throughput", items / (timing.stats["median"] / 1e3),
                   f"{item_unit}/s", stat="median")
            calls = 1 + timing.warmup + int(timing.stats["n"])
            energy = probed.metrics.get("energy")
            if energy is None:
                self.recorder.unavailable(phase, "energy_per_item", f"J/{item_unit}",
                                          "no energy reading for this phase (see 'energy')")
            else:
                record(phase, "energy_per_item", energy / (calls * items), f"J/{item_unit}")
        for reason in _with_host_diagnosis(timing, self.spec.measure, probed.metrics):
            self.recorder.mark_invalid(f"{phase}: {reason}", timing=True)
        return timing

    def _prepare(self) -> None:
        if self._prepared or not hasattr(self._source, "prepare"):
            return
        start = time.perf_counter()
        self._source.prepare(self.spec.model["id"], self._model_options, self)
        self.recorder.record("prepare", "seconds", time.perf_counter() - start, "s")
        self._prepared = True

    def load_model(self, kind: str) -> Any:
        self._prepare()
        with self.phase("load"):
            return self._source.load(self.spec.model["id"], kind, self._model_options, self)

    def load_tokenizer(self) -> Any:
        self._prepare()
        return self._source.load_tokenizer(self.spec.model["id"], self._model_options, self)

    def count_parameters(self, model: Any, phase: str = "model") -> tuple[int, int]:
        total, trainable = count_parameters(model)
        self.recorder.record(phase, "params_total", total, "count")
        # Trainable params mean something only where methods train (ResultColumns.trains).
        if getattr(getattr(self.scenario, "columns", None), "trains", None) is not False:
            self.recorder.record(phase, "params_trainable", trainable, "count")
        return total, trainable


def _is_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, MemoryError)


def record_baseline(device: str, recorder: Recorder) -> None:
    """Release what earlier runs left behind and record the idle baseline of this run."""
    gc.collect()
    recorder.record("baseline", "worker_pid", os.getpid(), "pid")
    if not device.startswith("cuda"):
        return
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    recorder.record("baseline", "cuda_allocated", torch.cuda.memory_allocated(device), "bytes")
    recorder.record("baseline", "cuda_reserved", torch.cuda.memory_reserved(device), "bytes")
    free, total = torch.cuda.mem_get_info(device)
    recorder.record("baseline", "vram_used", total - free, "bytes")


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RunTimeout` after ``seconds`` (main thread only; else no limit)."""
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expire(signum: int, frame: Any) -> None:
        raise RunTimeout(f"run exceeded limits.timeout={seconds:g} s")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _cuda_memory_cap(cuda_gb: float | None, device: str) -> Iterator[None]:
    """Cap what torch's allocator may hold on ``device`` (``limits.memory.cuda_gb``): an
    allocation past it raises torch's OutOfMemoryError, which stores the run as ``oom``."""
    if cuda_gb is None or not device.startswith("cuda"):
        yield
        return
    import torch

    index = torch.device(device).index or 0
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, cuda_gb * 2**30 / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)  # the worker runs on


def execute_run(
    spec: RunSpec,
    components: Components,
    plugins: PluginSet,
    device: str,
    cache_dir: str,
    *,
    alarm: bool = False,
) -> dict[str, Any]:
    """Run one cell; return its result. Errors become statuses, never exceptions.

    :param alarm: enforce ``spec.timeout_s`` with SIGALRM (the inline executor; worker
        processes are timed out and killed by the driver instead).
    """
    started = time.time()
    status, error, trace = "ok", None, None
    ctx: Context | None = None
    recorder = Recorder()
    try:
        with _alarm(spec.timeout_s if alarm else None), \
                _cuda_memory_cap(spec.memory_limit.cuda_gb, device):
            ctx = Context(spec, components, probes_for(plugins, device), device, cache_dir)
            recorder = ctx.recorder
            record_baseline(device, recorder)
            ctx.scenario.run(ctx)
            try:
                record_bandwidth(recorder, device)
            except Exception as exc:  # a probe never takes the run down
                recorder.unavailable("baseline", "peak_bandwidth", "B/s",
                                     f"{type(exc).__name__}: {exc}")
    except Unsupported as exc:
        status, error = "unsupported", str(exc)
    except RunTimeout as exc:
        status, error, trace = "timeout", str(exc), traceback.format_exc()
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        status = "oom" if _is_oom(exc) else "failed"
        error = (
            f"{type(exc).__name__}: {exc} [in method '{spec.method}' "
            f"(plugin '{spec.method_plugin}'), scenario '{spec.scenario}']"
        )
        trace = traceback.format_exc()
        if status == "oom" and spec.memory_limit.cuda_gb is not None and device != "cpu":
            error += f" (limits.memory.cuda_gb={spec.memory_limit.cuda_gb:g} caps this run)"
    finally:
        ctx = None
        gc.collect()
    if status == "ok" and recorder.invalid_reasons:
        status, error = "invalid", "; ".join(recorder.invalid_reasons)
        if recorder.only_timing_invalid:
            recorder.record(*TIMING_ONLY_INVALID, 1.0, "")
    finished = time.time()
    return {
        "run_key": spec.run_key,
        "status": status,
        "error": error,
        "traceback": trace,
        "started_at": started,
        "finished_at": finished,
        "wall_s": finished - started,
        "metrics": [asdict(row) for row in recorder.metrics],
        "samples": [asdict(row) for row in recorder.samples],
    }
