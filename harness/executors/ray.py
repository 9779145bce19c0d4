"""The ray executor: one Ray task per run on a Ray cluster; the driver commits each result.

Each task runs the worker code of the subprocess executor (:mod:`harness.executors.worker`)
on a node with the suite's ``resources`` (``num_cpus``, ``num_gpus``, ``memory``,
``accelerator_type``). Results stream back as they finish (``ray.wait``) and the driver
alone writes the store.

A task is a streaming generator that first says when its run starts (plugins loaded), and
``limits.timeout`` counts from then. So a run may wait in Ray's queue: one waits behind each
run the cluster's resources hold, ready to start the moment a worker is free. Past the
limit the task is cancelled (its worker killed) and the run recorded ``timeout``. A task
whose worker dies (segfault, ``os._exit``, node loss) is ``crashed``; one that Ray's memory
monitor kills is ``oom``. Ray retries neither: a rerun with ``--retry-failed`` does.

Worker output goes to one log per run in a folder of the driver's; on a local cluster or a
shared file system the driver reads a crashed run's tail from it (faulthandler's stacks).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.api import RunSpec
from harness.executors import Finished, Placement, RaySettings, Started
from harness.executors.worker import WorkerConfig, log_tail, staged_run
from harness.plugins import PluginSet

#: Seconds between looks at the cluster's size (it may grow or shrink under a suite).
CAPACITY_REFRESH_S = 30.0


def connect(settings: RaySettings) -> None:
    """Join the cluster at ``settings.address``, or start a local one; once per process
    (Ray shuts it down at exit)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)


def _run_task(
    config: WorkerConfig, spec: RunSpec, log_path: str | None
) -> Iterator[dict[str, Any] | None]:
    """A run's Ray task, a streaming generator: ``None`` when the run starts, then its
    result (:func:`~harness.executors.worker.staged_run`)."""
    if log_path is not None and not os.path.isdir(os.path.dirname(log_path)):
        log_path = None  # another host without the driver's file system
    yield from staged_run(config, spec, log_path)


def _probe(device: str, cpus: int) -> tuple[str, str]:
    from harness.environment import resolve_device

    return resolve_device(device, cpus=cpus)


def _task_options(placement: Placement, device: str) -> dict[str, Any]:
    resources = placement.resources
    options: dict[str, Any] = {
        "num_cpus": resources.cpus,
        "num_gpus": resources.gpus_per_run(device),
        "max_retries": 0,
    }
    if resources.memory_gb is not None:
        options["memory"] = int(resources.memory_gb * 2**30)
    if resources.accelerator_type is not None:
        options["accelerator_type"] = resources.accelerator_type
    return options


def probe_device(spec: str, placement: Placement) -> tuple[str, str]:
    """``(device, hardware label)`` as a node with a run's resources sees them."""
    import ray

    if spec.startswith("cuda:"):
        raise ValueError(f"device '{spec}': with the ray executor write 'cuda' (Ray picks "
                         "each run's GPU)")
    connect(placement.ray)
    if spec == "auto":
        spec = "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"
    options = _task_options(placement, spec)
    try:
        return ray.get(ray.remote(_probe).options(**options).remote(spec, placement.resources.cpus),
                       timeout=600)
    except ray.exceptions.GetTimeoutError as exc:
        raise ValueError(f"no node of the ray cluster took a task with {options} within "
                         "10 minutes: are the resources there?") from exc


class RayExecutor:
    def __init__(
        self,
        plugins: PluginSet,
        device: str,
        cache_dir: str,
        placement: Placement,
        *,
        base_dir: Path | None = None,
    ) -> None:
        self.placement = placement
        self.device = device
        self.config = WorkerConfig(
            modules=plugins.modules,
            blocked=plugins.blocked,
            base_dir=str(base_dir) if base_dir else None,
            device="cpu" if device == "cpu" else "cuda:0",
            cache_dir=cache_dir,
            threads=placement.resources.cpus,
        )

    def capacity(self) -> int:
        """How many runs the cluster holds at once with each run's resources."""
        import ray

        total = ray.cluster_resources()
        options = _task_options(self.placement, self.device)
        fits = [total.get("CPU", 0) // options["num_cpus"]]
        if options["num_gpus"]:
            fits.append(math.floor(total.get("GPU", 0) / options["num_gpus"]))
        return max(1, int(min(fits)))

    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        import ray

        connect(self.placement.ray)
        options = _task_options(self.placement, self.device)
        options["num_returns"] = "streaming"
        # isolation: run -> a worker process exits after its task (max_calls is no option)
        fresh = {"max_calls": 1} if self.placement.isolation == "run" else {}
        task = ray.remote(**fresh)(_run_task).options(**options) if fresh else (
            ray.remote(_run_task).options(**options))
        log_dir = Path(tempfile.mkdtemp(prefix="harness-ray-"))
        queue: deque[RunSpec] = deque(runs)
        flights: dict[Any, _Flight] = {}  # by the task's generator
        done: list[tuple[_Flight, dict[str, Any]]] = []
        capacity, counted = self.capacity(), time.monotonic()
        try:
            while queue or flights or done:
                if time.monotonic() - counted > CAPACITY_REFRESH_S:
                    capacity, counted = self.capacity(), time.monotonic()
                # A run queued behind each one that runs: a worker starts its next run the
                # moment it is free (a queued run's clock starts only when it does).
                while queue and len(flights) < 2 * capacity:
                    spec = queue.popleft()
                    log = log_dir / f"{spec.run_key}.log"
                    flights[task.remote(self.config, spec, str(log))] = _Flight(spec, log)
                # Results are stored after the next runs went out: commits overlap them.
                for flight, result in done:
                    if not flight.announced:
                        started(flight.spec)
                    finished(flight.spec, result)
                done.clear()
                if not flights:
                    continue
                deadlines = [f.deadline for f in flights.values() if f.deadline is not None]
                wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready, _ = ray.wait(list(flights), num_returns=1, timeout=wait_s)
                for generator in ready:
                    flight = flights[generator]
                    result = self._next(generator, flight)
                    if result is None:  # the run started on its worker
                        flight.announced = True
                        started(flight.spec)
                    else:
                        del flights[generator]
                        done.append((flight, result))
                now = time.monotonic()
                for generator, flight in list(flights.items()):
                    if flight.deadline is not None and now >= flight.deadline:
                        ray.cancel(generator, force=True)
                        del flights[generator]
                        error = (f"run exceeded limits.timeout={flight.spec.timeout_s:g} s; "
                                 "its task was cancelled")
                        done.append((flight, _failure(flight, "timeout", error)))
        finally:
            for generator in flights:
                ray.cancel(generator, force=True)
            shutil.rmtree(log_dir, ignore_errors=True)

    @staticmethod
    def _next(generator: Any, flight: _Flight) -> dict[str, Any] | None:
        """Take the task's next item: start the run's clock on its start, return its result
        (or the status of its end when it returned none)."""
        import ray

        try:
            item = ray.get(next(generator))
        except StopIteration:  # cannot happen: the task always yields its result last
            return _failure(flight, "crashed", "the Ray task ended without a result")
        except ray.exceptions.OutOfMemoryError as exc:
            return _failure(flight, "oom", _first_line(exc))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError) as exc:
            error = f"worker process died while running this run ({_first_line(exc)})"
            return _failure(flight, "crashed", error)
        except ray.exceptions.RayError as exc:  # the task raised: plugins did not load, ...
            error = f"the Ray task failed: {_first_line(exc)}"
            return _failure(flight, "crashed", error, str(exc))
        if item is not None:
            return item
        flight.started_at = time.time()
        if flight.spec.timeout_s:
            flight.deadline = time.monotonic() + flight.spec.timeout_s
        return None


@dataclass
class _Flight:
    """A run handed to Ray, and its clock once it started on a worker."""

    spec: RunSpec
    log: Path
    started_at: float = field(default_factory=time.time)
    deadline: float | None = None
    #: Whether the driver was told the run started (it is, at the latest, when it ends).
    announced: bool = False


    @staticmethod
    def _outcome(ref: Any, spec: RunSpec, log: Path, started_at: float) -> dict[str, Any]:
        """The task's result, or the status of its end when it returned none."""
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as exc:
            return _failure(spec, "oom", _first_line(exc), log, started_at)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError) as exc:
            error = f"worker process died while running this run ({_first_line(exc)})"
            return _failure(spec, "crashed", error, log, started_at)
        except ray.exceptions.RayError as exc:  # the task raised: plugins did not load, ...
            error = f"the Ray task failed: {_first_line(exc)}"
            return _failure(spec, "crashed", error, log, started_at, str(exc))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _failure(flight: _Flight, status: str, error: str, trace: str | None = None
             ) -> dict[str, Any]:
    now = time.time()
    return {
        "run_key": flight.spec.run_key, "status": status, "error": error,
        "traceback": log_tail(flight.log) or trace, "started_at": flight.started_at,
        "finished_at": now, "wall_s": now - flight.started_at, "metrics": [], "samples": [],
        "environment": {},
    }
