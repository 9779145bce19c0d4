"""The slurm executor: one Slurm job per run through submitit; the driver commits each result.

Runs go out as job arrays of at most ``slurm.max_jobs`` jobs in flight, each job running
:func:`harness.executors.worker.remote_run` in a fresh process on a node with the suite's
``resources`` (a job is a run's isolation). submitit pickles the result into the job folder
and the driver, polling, commits it the moment it is there. A job that ends without a result
is a status too: Slurm's ``OUT_OF_MEMORY`` is ``oom``, ``TIMEOUT`` is ``timeout``, anything
else (a segfault, a node failure, a cancel) is ``crashed`` with the tail of its stderr.
``limits.timeout`` counts from when the run starts in its job (plugins loaded: the job
leaves a mark in its folder), not while it queues or starts; past it the driver cancels the
job. The job's own time limit is a backstop a little longer.

``slurm.cluster: local`` runs the same jobs as processes on this machine (submitit's local
executor): a suite can be tried before it goes to the cluster, and the tests use it.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.api import RunSpec
from harness.executors import Finished, Placement, Started
from harness.executors.subprocess import kill_tree
from harness.executors.worker import WorkerConfig, log_tail, staged_run
from harness.plugins import PluginSet

#: The job time limit past ``limits.timeout``: start-up, and the driver's own cancel first.
BACKSTOP_MIN = 5
#: Job time limit when runs have no ``limits.timeout``.
UNLIMITED_MIN = 24 * 60
#: The file a job writes into its folder when its run starts.
STARTED = "harness-run-started"
#: Slurm job states that mean what a harness status says.
STATE_STATUS = {"OUT_OF_MEMORY": "oom", "TIMEOUT": "timeout"}


def _submitit_executor(placement: Placement, device: str, folder: Path, timeout_s: float | None,
                       name: str) -> Any:
    import submitit

    settings, resources = placement.slurm, placement.resources
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=settings.cluster)
    time_min = settings.time_min or (
        math.ceil(timeout_s / 60) + BACKSTOP_MIN if timeout_s else UNLIMITED_MIN)
    parameters: dict[str, Any] = {
        "name": name,
        "timeout_min": time_min,
        "cpus_per_task": resources.cpus,
        "gpus_per_node": math.ceil(resources.gpus_per_run(device)),
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if resources.memory_gb is not None:
        parameters["mem_gb"] = resources.memory_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(settings, key) is not None:
            parameters[f"slurm_{key}"] = getattr(settings, key)
    if settings.additional:
        parameters["slurm_additional_parameters"] = dict(settings.additional)
    executor.update_parameters(**parameters)
    return executor


def default_folder(store: Path, placement: Placement) -> Path:
    """submitit's job folder: ``slurm.folder``, or beside the store."""
    if placement.slurm.folder:
        return Path(placement.slurm.folder)
    return store.parent / f"{store.name}.slurm"


def _run_job(config: WorkerConfig, spec: RunSpec) -> dict[str, Any]:
    """A run's job: the run, with a mark in the job's folder when it starts."""
    import submitit

    folder = Path(submitit.JobEnvironment().paths.folder)
    result = None
    for result in staged_run(config, spec):
        if result is None:
            (folder / STARTED).touch()
    assert result is not None
    return result


def _probe(device: str, cpus: int) -> tuple[str, str]:
    from harness.environment import resolve_device

    return resolve_device(device, cpus=cpus)


def probe_device(spec: str, placement: Placement, folder: Path) -> tuple[str, str]:
    """``(device, hardware label)`` as a node with a run's resources sees them: one short
    job, waited for."""
    if spec.startswith("cuda:"):
        raise ValueError(f"device '{spec}': with the slurm executor write 'cuda' (the job's "
                         "node decides which GPU)")
    if spec == "auto":  # what the jobs ask for decides
        spec = "cuda" if placement.resources.gpus else "cpu"
    executor = _submitit_executor(placement, spec, folder, 600.0, "harness-probe")
    job = executor.submit(_probe, spec, placement.resources.cpus)
    try:
        return job.result()
    except Exception as exc:
        raise ValueError(f"the probe job {job.job_id} that asks a node its hardware "
                         f"failed: {exc}") from exc
    finally:
        shutil.rmtree(job.paths.folder, ignore_errors=True)


@dataclass
class _Flight:
    """A submitted job and the run it carries."""

    spec: RunSpec
    job: Any
    #: When the run started in its job (time.time), once its mark is seen.
    started_at: float | None = None
    deadline: float | None = None


class SlurmExecutor:
    def __init__(
        self,
        plugins: PluginSet,
        device: str,
        cache_dir: str,
        placement: Placement,
        folder: Path,
        *,
        suite_name: str = "harness",
        base_dir: Path | None = None,
        poll_s: float | None = None,
    ) -> None:
        self.placement = placement
        self.device = device
        self.folder = folder
        self.name = f"harness-{suite_name}"
        #: Seconds between looks at the jobs: a local job's state is a process poll,
        #: a cluster's is a call to the scheduler.
        self.poll_s = poll_s if poll_s is not None else (
            0.1 if placement.slurm.cluster == "local" else 5.0)
        self.config = WorkerConfig(
            modules=plugins.modules,
            blocked=plugins.blocked,
            base_dir=str(base_dir) if base_dir else None,
            device="cpu" if device == "cpu" else "cuda:0",
            cache_dir=cache_dir,
            threads=placement.resources.cpus,
        )

    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        queue: deque[RunSpec] = deque(runs)
        flights: list[_Flight] = []
        executors: dict[float | None, Any] = {}
        try:
            while queue or flights:
                free = self.placement.slurm.max_jobs - len(flights)
                batch = [queue.popleft() for _ in range(min(free, len(queue)))]
                by_timeout: dict[float | None, list[RunSpec]] = {}
                for spec in batch:
                    by_timeout.setdefault(spec.timeout_s, []).append(spec)
                for timeout_s, specs in by_timeout.items():
                    if timeout_s not in executors:
                        executors[timeout_s] = _submitit_executor(
                            self.placement, self.device, self.folder, timeout_s, self.name)
                    flights.extend(self._submit(executors[timeout_s], specs, started))
                if not self._poll(flights, finished):
                    time.sleep(self.poll_s)
        finally:
            for flight in flights:
                self._cancel(flight.job)
            with contextlib.suppress(OSError):  # submitit's "%j" template folder, if empty
                (self.folder / "%j").rmdir()

    def _submit(self, executor: Any, specs: list[RunSpec], started: Started) -> list[_Flight]:
        """Submit ``specs`` as one job array."""
        with executor.batch():
            jobs = [executor.submit(_run_job, self.config, spec) for spec in specs]
        for spec in specs:
            started(spec)
        return [_Flight(spec, job) for spec, job in zip(specs, jobs, strict=True)]

    def _poll(self, flights: list[_Flight], finished: Finished) -> bool:
        """Report every job that ended or ran past its limit; whether any did."""
        any_done = False
        now = time.monotonic()
        for flight in list(flights):
            spec, job = flight.spec, flight.job
            if flight.started_at is None and (Path(job.paths.folder) / STARTED).exists():
                flight.started_at = time.time()
                flight.deadline = now + spec.timeout_s if spec.timeout_s else None
            if job.done():
                result = self._outcome(flight, local=self.placement.slurm.cluster == "local")
            else:
                if flight.deadline is None or now < flight.deadline:
                    continue
                self._cancel(job)
                error = f"run exceeded limits.timeout={spec.timeout_s:g} s; job {job.job_id} " \
                        "cancelled"
                result = _failure(flight, "timeout", error, _stderr_tail(job))
            flights.remove(flight)
            any_done = True
            finished(spec, result)
            shutil.rmtree(job.paths.folder, ignore_errors=True)  # committed: pickles not needed
        return any_done

    def _cancel(self, job: Any) -> None:
        if self.placement.slurm.cluster == "local":  # a process tree here: kill it quietly
            kill_tree(int(job.job_id))
        else:
            job.cancel(check=False)

    @staticmethod
    def _outcome(flight: _Flight, *, local: bool) -> dict[str, Any]:
        """The job's result, or the status of its end when it returned none."""
        from submitit.core.utils import UncompletedJobError

        job = flight.job
        try:
            if local and not job.paths.result_pickle.exists():
                # A local job's files are there when it ends (submitit waits for a shared
                # file system to show a cluster job's, which needs no wait here).
                raise UncompletedJobError(f"job {job.job_id} left no result")
            return job.result()
        except UncompletedJobError:
            state = str(job.state).split()[0] if job.state else "UNKNOWN"
            status = STATE_STATUS.get(state, "crashed")
            error = f"job {job.job_id} ended without a result (state {state})"
            return _failure(flight, status, error, _stderr_tail(job))
        except Exception as exc:  # the job raised: plugins did not load, ...
            error = f"job {job.job_id} failed: {type(exc).__name__}: " \
                    f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            return _failure(flight, "crashed", error, _stderr_tail(job) or str(exc))


def _stderr_tail(job: Any) -> str:
    return log_tail(Path(job.paths.stderr)).strip()


def _failure(flight: _Flight, status: str, error: str, trace: str | None) -> dict[str, Any]:
    now = time.time()
    started_at = flight.started_at or now
    return {
        "run_key": flight.spec.run_key, "status": status, "error": error,
        "traceback": trace or None, "started_at": started_at, "finished_at": now,
        "wall_s": now - started_at, "metrics": [], "samples": [], "environment": {},
    }
