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
import json
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

#: The job time limit past ``limits.timeout``: start-up, and the driver's own cancel first.
BACKSTOP_MIN = 5
#: Job time limit when runs have no ``limits.timeout``.
UNLIMITED_MIN = 24 * 60
#: The file a job writes into its folder when its run starts.
STARTED = "harness-run-started"
#: Slurm job states that mean what a harness status says.
STATE_STATUS = {"OUT_OF_MEMORY": "oom", "TIMEOUT": "timeout"}
#: States of a job that ended and will leave no result file (no need to wait for one to
#: show on a shared file system); a local job that ended is FINISHED or INTERRUPTED.
ENDED_WITHOUT_RESULT = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                                  "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"})


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
    """A run's job: the run, with a mark in the job's folder (the node's environment) when
    it starts."""
    import submitit

    folder = Path(submitit.JobEnvironment().paths.folder)
    for kind, item in staged_run(config, spec):
        if kind == "started":
            (folder / STARTED).write_text(json.dumps(item, default=str))
        else:
            return item
    raise AssertionError("staged_run ends with the result")


def probe_device(spec: str, placement: Placement, folder: Path) -> tuple[str, str]:
    """``(device, hardware label)`` as a node with a run's resources sees them: one short
    job, waited for."""
    if spec.startswith("cuda:"):
        raise ValueError(f"device '{spec}': with the slurm executor write 'cuda' (the job's "
                         "node decides which GPU)")
    if spec == "auto":  # what the jobs ask for decides
        spec = "cuda" if placement.resources.gpus else "cpu"
    job = None
    try:
        executor = _submitit_executor(placement, spec, folder, 600.0, "harness-probe")
        job = executor.submit(probe, spec, placement.resources.cpus)
        return job.result()
    except Exception as exc:
        where = f"the probe job {job.job_id}" if job is not None else "submitting a probe job"
        raise ValueError(f"{where}, which asks a node its hardware, failed: {exc}") from exc
    finally:
        if job is not None:
            if not job.done():  # interrupted while it queued
                job.cancel(check=False)
            shutil.rmtree(job.paths.folder, ignore_errors=True)


@dataclass
class _Flight:
    """A submitted job and the run it carries."""

    spec: RunSpec
    job: Any
    submitted_at: float
    #: The node's environment once the run started in its job (its mark is seen).
    environment: dict[str, Any] | None = None
    started_at: float | None = None
    deadline: float | None = None

    def failed(self, status: str, error: str, trace: str | None = None) -> dict[str, Any]:
        return failure(self.spec, status, error, trace=trace, environment=self.environment,
                       started_at=self.started_at or self.submitted_at)


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
        self.local = placement.slurm.cluster == "local"
        #: Seconds between looks at the jobs: a local job's state is a process poll, a
        #: cluster's one ``sacct`` call for all of them.
        self.poll_s = poll_s if poll_s is not None else (0.1 if self.local else 15.0)
        self.config = WorkerConfig.on_cluster(plugins, device, cache_dir,
                                              placement.resources.cpus, base_dir)

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
                    flights.extend(self._submit(executors, timeout_s, specs, started, finished))
                if not self._poll(flights, started, finished):
                    time.sleep(self.poll_s)
        finally:
            for flight in flights:
                self._cancel(flight.job)
            with contextlib.suppress(OSError):  # submitit's "%j" template folder, if empty
                (self.folder / "%j").rmdir()

    def _submit(self, executors: dict[float | None, Any], timeout_s: float | None,
                specs: list[RunSpec], started: Started, finished: Finished) -> list[_Flight]:
        """Submit ``specs`` as one job array; a refused submission fails its runs."""
        try:
            if timeout_s not in executors:
                executors[timeout_s] = _submitit_executor(
                    self.placement, self.device, self.folder, timeout_s, self.name)
            executor = executors[timeout_s]
            with executor.batch():
                jobs = [executor.submit(_run_job, self.config, spec) for spec in specs]
        except Exception as exc:  # sbatch said no: a partition's limit, an account, ...
            now = time.time()
            for spec in specs:
                started(spec)
                finished(spec, failure(spec, "failed", f"Slurm refused the job: {exc}",
                                       started_at=now))
            return []
        now = time.time()
        return [_Flight(spec, job, now) for spec, job in zip(specs, jobs, strict=True)]

    def _poll(self, flights: list[_Flight], started: Started, finished: Finished) -> bool:
        """Report every run that started, ended or ran past its limit; whether one ended."""
        if not self.local and flights:
            from submitit.slurm.slurm import SlurmJob

            SlurmJob.watcher.update()  # one sacct call for every job
        any_done = False
        now = time.monotonic()
        for flight in list(flights):
            spec, job = flight.spec, flight.job
            ended = job.done()
            mark = Path(job.paths.folder) / STARTED
            if flight.environment is None and mark.exists():
                with contextlib.suppress(OSError, ValueError):
                    flight.environment = json.loads(mark.read_text())
                if flight.environment is not None:
                    flight.started_at = time.time()
                    flight.deadline = now + spec.timeout_s if spec.timeout_s else None
                    started(spec)
            if ended:
                result = self._outcome(flight)
            elif flight.deadline is not None and now >= flight.deadline:
                self._cancel(job)
                tail = _stderr_tail(job)  # the memory watchdog may have killed it unseen
                result = flight.failed(*death(tail, "timeout", timeout_error(spec.timeout_s or 0)),
                                       tail)
            else:
                continue
            flights.remove(flight)
            any_done = True
            if flight.environment is None:  # it never started
                started(spec)
            finished(spec, result)
            shutil.rmtree(job.paths.folder, ignore_errors=True)  # committed: pickles not needed
        return any_done

    def _cancel(self, job: Any) -> None:
        if self.local:  # a process tree here: kill it quietly
            kill_tree(int(job.job_id))
        else:
            job.cancel(check=False)

    def _outcome(self, flight: _Flight) -> dict[str, Any]:
        """The job's result, or the status of its end when it returned none."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        job = flight.job
        try:
            state = str(job.state).split()[0] if job.state else "UNKNOWN"
            if not job.paths.result_pickle.exists() and (
                    self.local or state in ENDED_WITHOUT_RESULT):
                # No result will show: don't wait for a shared file system to show one.
                raise UncompletedJobError(f"job {job.job_id} left no result")
            return job.result()
        except FailedJobError as exc:  # the job raised: plugins did not load, ...
            error = f"job {job.job_id} failed: {_last_line(str(exc))}"
            return flight.failed("crashed", error, _stderr_tail(job) or str(exc))
        except UncompletedJobError:
            tail = _stderr_tail(job)
            status, error = death(tail, STATE_STATUS.get(state, "crashed"),
                                  f"job {job.job_id} ended without a result (state {state})")
            return flight.failed(status, error, tail)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _stderr_tail(job: Any) -> str:
    return log_tail(Path(job.paths.stderr)).strip()
