"""The code that runs a run away from the driver: in a spawned worker, a Ray task or a Slurm job.

Plugins are modules, not objects, so a worker rebuilds the driver's plugin set from a
:class:`WorkerConfig` and runs each spec with :func:`harness.context.execute_run`, the same
probes and the same errors-become-statuses in every executor. A result leaves a worker with
the environment it ran in (host, GPU, software), which is what the store records per run.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.api import RunSpec


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to rebuild the driver's plugin set in a fresh process."""

    modules: tuple[str, ...]
    blocked: tuple[str, ...]
    base_dir: str | None
    #: The device inside the worker (``cpu`` or ``cuda:0``: GPUs are pinned by visibility).
    device: str
    cache_dir: str
    #: torch's intra-op threads in this worker; ``None`` keeps torch's default.
    threads: int | None = None

    @classmethod
    def on_cluster(cls, plugins: Any, device: str, cache_dir: str, cpus: int,
                   base_dir: Path | None) -> WorkerConfig:
        """The config of a cluster's worker: the node pins its GPU by visibility, and the
        run's CPUs are its threads."""
        return cls(modules=plugins.modules, blocked=plugins.blocked,
                   base_dir=str(base_dir) if base_dir else None,
                   device="cpu" if device == "cpu" else "cuda:0", cache_dir=cache_dir,
                   threads=cpus)


@lru_cache(maxsize=4)
def loaded(config: WorkerConfig) -> tuple[Any, Any]:
    """The plugin set and components of ``config``, loaded once per process (a Ray worker
    process runs many tasks)."""
    from harness.plugins import load_components, load_plugins

    base_dir = Path(config.base_dir) if config.base_dir else None
    plugins = load_plugins(config.modules, blocked=config.blocked, base_dir=base_dir)
    return plugins, load_components(plugins)


def set_threads(config: WorkerConfig) -> None:
    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)


@lru_cache(maxsize=8)
def _environment(device: str, visible_devices: str | None) -> dict[str, Any]:
    from harness.environment import collect_environment

    return collect_environment(device)


def environment(device: str) -> dict[str, Any]:
    """This process's environment row, collected once per device and GPU visibility."""
    return _environment(device, os.environ.get("CUDA_VISIBLE_DEVICES"))


def probe(device: str, cpus: int | None) -> tuple[str, str]:
    """``(device, hardware label)`` as a cluster's node sees them (a probe task's body)."""
    from harness.environment import resolve_device

    return resolve_device(device, cpus=cpus)


def hardware_label(config: WorkerConfig) -> str:
    """The hardware group of this worker, as the driver's device resolution would name it."""
    return probe("cuda" if config.device.startswith("cuda") else "cpu", config.threads)[1]


def timeout_error(timeout_s: float) -> str:
    """The error of a run stopped at its time limit, whichever executor stopped it."""
    return f"run exceeded limits.timeout={timeout_s:g} s; killed"


def failure(spec: RunSpec, status: str, error: str, *, started_at: float,
            trace: str | None = None, environment: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """The result of a run that ended without one of its own (crash, timeout, kill)."""
    now = time.time()
    return {
        "run_key": spec.run_key, "status": status, "error": error, "traceback": trace or None,
        "started_at": started_at, "finished_at": now, "wall_s": now - started_at,
        "metrics": [], "samples": [], "environment": environment or {},
    }


def run_spec(config: WorkerConfig, spec: RunSpec) -> dict[str, Any]:
    """Run ``spec`` here; its result with this worker's environment."""
    from harness.context import execute_run

    set_threads(config)
    plugins, components = loaded(config)
    with host_memory_cap(spec.memory_limit.host_gb):
        result = execute_run(spec, components, plugins, config.device, config.cache_dir)
    return {**result, "environment": environment(config.device)}


#: Starts the line a worker writes to its log before it kills itself over
#: ``limits.memory.host_gb``; the driver finds it there and stores the run as ``oom``.
OOM_MARK = "harness: limits.memory exceeded: "
#: Seconds between two looks at the run's RSS.
HOST_MEMORY_CHECK_S = 0.1


@contextlib.contextmanager
def host_memory_cap(host_gb: float | None) -> Iterator[None]:
    """Kill this worker and its children when their RSS passes ``host_gb`` GiB.

    SIGKILL, as the kernel's OOM killer would, but first a line in the log saying what was
    reached: a run can't be stopped cleanly from a watchdog thread while it allocates.
    """
    if host_gb is None:
        yield
        return
    from harness.probes.host_memory import PeriodicSampler, process_tree, tree_rss

    limit = host_gb * 2**30

    def check() -> None:
        rss = tree_rss()
        if rss <= limit:
            return
        os.write(2, (f"\n{OOM_MARK}the run's processes reached {rss / 2**30:.2f} GiB of "
                     f"host RSS, over limits.memory.host_gb={host_gb:g}; killed\n").encode())
        for child in process_tree()[1:]:
            with contextlib.suppress(Exception):
                child.kill()
        os.kill(os.getpid(), signal.SIGKILL)

    watchdog = PeriodicSampler(check, HOST_MEMORY_CHECK_S)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.stop()


def death(log: str, status: str, error: str) -> tuple[str, str]:
    """``(status, error)`` of a worker that died without a result: ``oom`` with the
    watchdog's words when ``limits.memory.host_gb`` killed it (its line in ``log``), else
    what the executor saw."""
    for line in reversed(log.splitlines()):
        if line.startswith(OOM_MARK):
            return "oom", line.removeprefix(OOM_MARK).strip()
    return status, error


def staged_run(
    config: WorkerConfig, spec: RunSpec, log_path: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Run ``spec`` on a cluster's node (a Ray task, a Slurm job) in two steps: yield
    ``("started", environment)`` once the plugins are loaded and the run starts, then
    ``("result", result)``.

    The driver starts the clock of ``limits.timeout`` at the first, as it does when a
    subprocess worker is ready, so a node's start-up is not counted against the run; and it
    knows the node should the run then die. Output goes to ``log_path`` when given (a crash
    leaves its native stack there), and the stacks are dumped there a little before the
    deadline, should the run hang.
    """
    with output_to(log_path):
        result = hardware_mismatch(config, spec)
        if result is None:
            set_threads(config)
            loaded(config)
            yield "started", environment(config.device)
            with _stacks_before(spec.timeout_s):
                result = run_spec(config, spec)
    yield "result", result


@contextlib.contextmanager
def _stacks_before(timeout_s: float | None) -> Iterator[None]:
    """Write every thread's Python stack to stderr a little before ``timeout_s``, should
    the run still be going: the driver kills a hung run without asking it first.

    A Python thread, not faulthandler's watchdog: that one reads the other threads' frames
    without the GIL while they run (the host-memory watchdog, a probe's sampler) and can
    crash the very process it describes.
    """
    if not timeout_s:
        yield
        return
    import threading
    import traceback

    def dump() -> None:
        names = {t.ident: t.name for t in threading.enumerate()}
        lines = [f"harness: the run is still going after {delay:g} s; its threads:\n"]
        for ident, frame in sys._current_frames().items():
            if ident != threading.get_ident():
                lines.append(f"\nThread {names.get(ident, ident)} (most recent call last):\n")
                lines.extend(traceback.format_stack(frame))
        os.write(2, "".join(lines).encode())

    delay = max(0.5, min(0.9 * timeout_s, timeout_s - 1.0))
    timer = threading.Timer(delay, dump)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def hardware_mismatch(config: WorkerConfig, spec: RunSpec) -> dict[str, Any] | None:
    """The failed result of a run placed on a node outside its hardware group, else None.

    A cluster may mix machines; a run keyed to one GPU model and measured on another would
    be ranked against figures that are not its peers'.
    """
    import socket

    here, expected = hardware_label(config), spec.config["hardware"]
    if here == expected:
        return None
    error = (f"this run was placed on {socket.gethostname()} ({here}), but the suite's runs "
             f"are keyed to '{expected}': the cluster mixes hardware; pin the suite's runs "
             "to one kind (ray: resources.accelerator_type; slurm: slurm.constraint or a "
             "partition of one kind)")
    return failure(spec, "failed", error, started_at=time.time(),
                   environment=environment(config.device))


@contextlib.contextmanager
def output_to(log_path: str | None) -> Iterator[None]:
    """Send this process's stdout/stderr (and faulthandler's dumps) to ``log_path`` while
    the block runs, then restore them: a Ray worker process outlives its task."""
    if log_path is None:
        faulthandler.enable()
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    faulthandler.enable()
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, log):
            os.close(fd)


def log_tail(path: Path, offset: int = 0, size: int = 12000) -> str:
    """The last ``size`` bytes of a worker log written after ``offset``."""
    try:
        with open(path, "rb") as fh:
            end = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, end - size))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
