"""Executors: how pending runs get executed. The driver stays the only writer of the store.

An executor takes the pending runs and two callbacks: ``started(spec)`` when a run is handed
to a worker and ``finished(spec, result)`` with its result dict (see
:func:`harness.context.execute_run`) plus an ``environment`` dict. Every run handed to
``execute`` gets exactly one ``finished`` call, whatever happens to the process running it.

``subprocess`` and ``inline`` run on this machine; ``ray`` and ``slurm`` hand each run to a
cluster (:data:`REMOTE_EXECUTORS`), whose nodes run the same worker code
(:mod:`harness.executors.worker`) and send results back to the driver to commit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from harness.api import RunSpec

Started = Callable[[RunSpec], None]
Finished = Callable[[RunSpec, dict[str, Any]], None]

#: Executors a suite may name (``executor:``); the first is the default.
EXECUTORS = ("subprocess", "inline", "ray", "slurm")
#: Executors whose runs execute on a cluster's nodes, not in or beside the driver.
REMOTE_EXECUTORS = ("ray", "slurm")


class Executor(Protocol):
    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        """Execute ``runs``, reporting each through the callbacks as it starts and ends."""
        ...


class Resources(BaseModel):
    """What each run asks of a cluster (suite key ``resources:``; ray and slurm)."""

    model_config = ConfigDict(extra="forbid")

    cpus: int = Field(1, ge=1, description="CPU cores per run, and its torch threads")
    gpus: float | None = Field(None, ge=0, description="GPUs per run (default: 1 on a CUDA "
                               "device, 0 on CPU); Ray accepts a fraction")
    memory_gb: float | None = Field(None, gt=0, description="host memory to reserve per run")
    accelerator_type: str | None = Field(None, description="Ray: place runs only on nodes "
                                         "with this GPU type (e.g. H100)")

    def gpus_per_run(self, device: str) -> float:
        if self.gpus is not None:
            return self.gpus
        return 0.0 if device == "cpu" else 1.0


class RaySettings(BaseModel):
    """Suite key ``ray:``."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="the cluster to join: 'auto' (the one "
                                "`ray start` began on this machine), 'HOST:6379', or 'local' "
                                "(a new one); default: Ray's, 'auto' if there is one, else "
                                "'local'")


class SlurmSettings(BaseModel):
    """Suite key ``slurm:``: where submitit sends the jobs."""

    model_config = ConfigDict(extra="forbid")

    cluster: Literal["slurm", "local"] = Field("slurm", description="'local' runs the jobs "
                                                "as processes on this machine (a dry run)")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="node features, e.g. a GPU kind")
    time_min: int | None = Field(None, ge=1, description="job time limit (default: "
                                 "limits.timeout plus 5 minutes)")
    max_jobs: int = Field(64, ge=1, description="jobs queued or running at once")
    folder: str | None = Field(None, description="submitit's job folder, on a file system "
                               "the nodes share (default: beside the store)")
    additional: dict[str, Any] = Field(default_factory=dict, description="more sbatch "
                                       "options, passed as given")


@dataclass(frozen=True)
class Placement:
    """Where and how a suite's runs execute: the executor and what it needs."""

    executor: str = EXECUTORS[0]
    isolation: str = "worker"
    #: Worker processes on a CPU device (subprocess executor).
    workers: int = 1
    resources: Resources = field(default_factory=Resources)
    ray: RaySettings = field(default_factory=RaySettings)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)

    @property
    def remote(self) -> bool:
        return self.executor in REMOTE_EXECUTORS
