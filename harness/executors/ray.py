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
import re
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
from harness.executors.worker import (
    WorkerConfig,
    death,
    failure,
    log_tail,
    probe,
    staged_run,
    timeout_error,
)
from harness.plugins import PluginSet

#: Seconds between looks at the cluster's size (it may grow or shrink under a suite).
CAPACITY_REFRESH_S = 30.0
#: How long the device probe waits for a node with a run's resources.
PROBE_TIMEOUT_S = 600.0


def connect(settings: RaySettings) -> None:
    """Join the cluster at ``settings.address`` (Ray's default without one: the cluster
    ``ray start`` began on this machine, else a new local one); once per process."""
    import ray

    if ray.is_initialized():
        return
    if settings.address and settings.address.startswith("ray://"):
        raise ValueError(f"ray.address '{settings.address}': Ray Client (ray://) cannot "
                         "stream a task's results, which the ray executor needs; run harness "
                         "on a node of the cluster with --address auto (or HOST:6379)")
    try:
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise ValueError(f"could not join the Ray cluster at "
                         f"'{settings.address or 'this machine'}': {exc}") from exc


def _run_task(
    config: WorkerConfig, spec: RunSpec, log_path: str | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A run's Ray task, a streaming generator (:func:`~harness.executors.worker.staged_run`):
    ``("started", environment)``, then ``("result", result)``."""
    if log_path is not None and not os.path.isdir(os.path.dirname(log_path)):
        log_path = None  # another host without the driver's file system
    yield from staged_run(config, spec, log_path)


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


def _fits(placement: Placement, device: str) -> int:
    """How many runs the cluster holds at once with each run's resources (0: none)."""
    import ray

    total = ray.cluster_resources()
    options = _task_options(placement, device)
    fits = [total.get("CPU", 0) // options["num_cpus"]]
    if options["num_gpus"]:
        fits.append(math.floor(total.get("GPU", 0) / options["num_gpus"]))
    if "accelerator_type" in options:
        fits.append(math.inf if total.get(
            f"accelerator_type:{options['accelerator_type']}") else 0)
    return int(min(fits))


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
    if _fits(placement, spec) == 0:
        raise ValueError(f"no node of the Ray cluster has what a run asks ({options}); "
                         f"the cluster has {ray.cluster_resources()}")
    ref = ray.remote(probe).options(**options).remote(spec, placement.resources.cpus)
    try:
        return ray.get(ref, timeout=PROBE_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError as exc:
        ray.cancel(ref, force=True)
        raise ValueError(f"no node of the Ray cluster took a task with {options} within "
                         f"{PROBE_TIMEOUT_S:g} s") from exc


@dataclass
class _Flight:
    """A run handed to Ray, and its clock once it started on a worker."""

    spec: RunSpec
    log: Path
    started_at: float = field(default_factory=time.time)
    deadline: float | None = None
    #: The node's environment, from the task's start (the driver was told it started).
    environment: dict[str, Any] | None = None

    def failed(self, status: str, error: str, trace: str | None = None) -> dict[str, Any]:
        return failure(self.spec, status, error, started_at=self.started_at,
                       trace=log_tail(self.log) or trace, environment=self.environment)


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
        self.config = WorkerConfig.on_cluster(plugins, device, cache_dir,
                                              placement.resources.cpus, base_dir)

    def _task(self) -> Any:
        import ray

        options = {**_task_options(self.placement, self.device), "num_returns": "streaming"}
        # A process that touched CUDA keeps its first GPU whatever CUDA_VISIBLE_DEVICES Ray
        # sets for the next task: GPU runs (and isolation: run) get a fresh worker each.
        fresh = self.placement.isolation == "run" or options["num_gpus"] > 0
        return ray.remote(max_calls=1 if fresh else 0)(_run_task).options(**options)

    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        import ray

        connect(self.placement.ray)
        task = self._task()
        log_dir = Path(tempfile.mkdtemp(prefix="harness-ray-"))
        queue: deque[RunSpec] = deque(runs)
        flights: dict[Any, _Flight] = {}  # by the task's generator
        done: list[tuple[_Flight, dict[str, Any]]] = []

        def report() -> None:
            for flight, result in done:
                if flight.environment is None:  # it never started
                    started(flight.spec)
                finished(flight.spec, result)
            done.clear()

        capacity, counted = max(1, _fits(self.placement, self.device)), time.monotonic()
        try:
            while queue or flights or done:
                if time.monotonic() - counted > CAPACITY_REFRESH_S:
                    capacity = max(1, _fits(self.placement, self.device))
                    counted = time.monotonic()
                # A run queued behind each one that runs: a worker starts its next run the
                # moment it is free (a queued run's clock starts only when it does).
                while queue and len(flights) < 2 * capacity:
                    spec = queue.popleft()
                    log = log_dir / f"{spec.run_key}.log"
                    flights[task.remote(self.config, spec, str(log))] = _Flight(spec, log)
                report()  # after the next runs went out: storing overlaps them
                if not flights:
                    continue
                deadlines = [f.deadline for f in flights.values() if f.deadline is not None]
                wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                ready, _ = ray.wait(list(flights), num_returns=1, timeout=wait_s)
                if ready:  # and all else ready by now, before any deadline is judged
                    ready, _ = ray.wait(list(flights), num_returns=len(flights), timeout=0)
                for generator in ready:
                    flight = flights[generator]
                    result = self._next(generator, flight)
                    if result is None:
                        started(flight.spec)
                    else:
                        del flights[generator]
                        done.append((flight, result))
                now = time.monotonic()
                for generator, flight in list(flights.items()):
                    if flight.deadline is not None and now >= flight.deadline:
                        ray.cancel(generator, force=True)
                        del flights[generator]
                        # The memory watchdog may have killed it before Ray said so.
                        status, error = death(log_tail(flight.log), "timeout",
                                              timeout_error(flight.spec.timeout_s or 0))
                        done.append((flight, flight.failed(status, error)))
        finally:
            report()
            for generator in flights:
                ray.cancel(generator, force=True)
            shutil.rmtree(log_dir, ignore_errors=True)

    @staticmethod
    def _next(generator: Any, flight: _Flight) -> dict[str, Any] | None:
        """Take the task's next item: on its start, start the run's clock and return None;
        then its result, or the status of its end when it returned none."""
        import ray

        try:
            kind, item = ray.get(next(generator))
        except ray.exceptions.OutOfMemoryError as exc:  # Ray's memory monitor killed it
            return flight.failed("oom", _first_line(exc))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.LocalRayletDiedError) as exc:
            return flight.failed(*death(log_tail(flight.log), "crashed", "worker process died "
                                        f"while running this run ({_first_line(exc)})"))
        except ray.exceptions.RayTaskError as exc:  # the task raised: plugins did not load
            error, trace = task_error(exc)
            return flight.failed("crashed", error, trace)
        except ray.exceptions.RayError as exc:
            return flight.failed("crashed", f"the Ray task failed: {_first_line(exc)}")
        if kind == "result":
            return item
        flight.environment, flight.started_at = item, time.time()
        if flight.spec.timeout_s:
            flight.deadline = time.monotonic() + flight.spec.timeout_s
        return None


def task_error(exc: Any) -> tuple[str, str | None]:
    """A failed task's error (its exception, not Ray's wrapper) and traceback."""
    cause = getattr(exc, "cause", None)
    error = f"{type(cause).__name__}: {cause}" if cause is not None else _first_line(exc)
    return f"the Ray task failed: {error}", getattr(exc, "traceback_str", None)


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # no terminal colours
    return text.splitlines()[0] if text else type(exc).__name__
