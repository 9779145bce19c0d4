"""The default executor: spawned worker processes that run runs one after another.

One worker per visible GPU (pinned with ``CUDA_VISIBLE_DEVICES``), one on CPU. A worker
that dies (segfault, killed by the OS) is recorded against its run as ``crashed`` with the
tail of its log (``faulthandler`` writes the native stack there) and replaced; a run past
its timeout has its worker's process tree killed and is recorded as ``timeout``. With
``isolation: run`` every run gets a fresh worker.

A finished worker is handed its next run before the driver stores the last result, so the
store's commit overlaps the next run's set-up (model loading) instead of idling the worker.
"""

from __future__ import annotations

import contextlib
import faulthandler
import multiprocessing as mp
import multiprocessing.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import psutil

from harness.api import RunSpec
from harness.executors import Finished, Started
from harness.executors.worker import (
    WorkerConfig,
    death,
    environment,
    failure,
    loaded,
    log_tail,
    run_spec,
    set_threads,
    timeout_error,
)
from harness.plugins import PluginSet

#: A worker that dies this many times in a row before becoming ready fails the suite's rest.
MAX_START_FAILURES = 2


def worker_main(
    conn: Connection, config: WorkerConfig, visible_devices: str | None, log_path: str
) -> None:
    """Entry point of a worker process: load plugins, then run specs until told to stop."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    faulthandler.enable()
    if visible_devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible_devices
    set_threads(config)
    loaded(config)
    conn.send(("ready", environment(config.device)))
    while True:
        try:
            spec = conn.recv()
        except EOFError:  # the driver is gone
            return
        if spec is None:
            # Everything is sent and logged; skip interpreter teardown (seconds with torch),
            # but run multiprocessing's exit finalizers first: they unregister the semaphores
            # this process made (tqdm's lock, say) from the resource tracker it shares with
            # the driver, which otherwise reports them leaked when the suite ends.
            sys.stdout.flush()
            sys.stderr.flush()
            multiprocessing.util._exit_function()
            os._exit(0)
        conn.send(("result", run_spec(config, spec)))


@dataclass
class Worker:
    """A slot for one worker process and the run it is busy with."""

    name: str
    device: str
    visible_devices: str | None
    log_path: Path
    process: Any = None
    conn: Connection | None = None
    environment: dict[str, Any] | None = None
    run: RunSpec | None = None
    deadline: float | None = None
    start_failures: int = 0
    ready: bool = False
    #: Where this run's output starts in the log, so an error shows only its own lines.
    log_offset: int = 0

    @property
    def busy(self) -> bool:
        return self.run is not None

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_tail(self) -> str:
        """The last lines this worker wrote since its current run started."""
        return log_tail(self.log_path, self.log_offset)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and everything it started (a hung run may have spawned helpers)."""
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=5)


def _dump_stacks(pid: int) -> None:
    """Ask a hung worker's faulthandler for its Python stacks (they land in its log)."""
    try:
        os.kill(pid, signal.SIGABRT)
    except OSError:
        return
    with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        psutil.Process(pid).wait(timeout=2)


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class SubprocessExecutor:
    def __init__(
        self,
        plugins: PluginSet,
        device: str,
        cache_dir: str,
        *,
        isolation: str = "worker",
        base_dir: Path | None = None,
        workers: int = 1,
    ) -> None:
        self.plugins = plugins
        self.cache_dir = cache_dir
        self.isolation = isolation
        self.base_dir = base_dir
        # Worker logs only matter while a run is in flight: crash tails are stored with it.
        self.log_dir = Path(tempfile.mkdtemp(prefix="harness-workers-"))
        self.workers = [
            Worker(f"worker-{i}", dev, visible, self.log_dir / f"worker-{i}.log")
            for i, (dev, visible) in enumerate(self._slots(device, workers))
        ]
        # CPU workers share the cores instead of each spawning a thread per core.
        from harness.environment import usable_cpu_count

        cores = usable_cpu_count()
        self.threads = max(1, cores // workers) if device == "cpu" and workers > 1 else None
        self._context = mp.get_context("spawn")

    @staticmethod
    def _slots(device: str, workers: int) -> list[tuple[str, str | None]]:
        """(device inside the worker, CUDA_VISIBLE_DEVICES) per worker: ``workers`` on a
        CPU, one per visible GPU on CUDA."""
        if device == "cpu":
            return [("cpu", os.environ.get("CUDA_VISIBLE_DEVICES"))] * workers
        from harness.environment import cuda_device_count

        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        physical = (
            [v.strip() for v in visible.split(",") if v.strip()]
            if visible
            else [str(i) for i in range(cuda_device_count())]
        )
        if device.startswith("cuda:"):
            physical = [physical[int(device.split(":")[1])]]
        return [("cuda:0", p) for p in physical]

    # -- worker lifecycle ------------------------------------------------------------------

    def _start(self, worker: Worker) -> None:
        parent, child = self._context.Pipe()
        config = WorkerConfig(
            modules=self.plugins.modules,
            blocked=self.plugins.blocked,
            base_dir=str(self.base_dir) if self.base_dir else None,
            device=worker.device,
            cache_dir=self.cache_dir,
            threads=self.threads,
        )
        process = self._context.Process(
            target=worker_main,
            args=(child, config, worker.visible_devices, str(worker.log_path)),
            name=worker.name,
            daemon=True,
        )
        process.start()
        child.close()
        worker.process, worker.conn, worker.ready = process, parent, False

    def _stop(self, worker: Worker, *, kill: bool = False) -> None:
        if worker.process is None:
            return
        if kill:
            kill_tree(worker.process.pid)
        else:
            try:
                assert worker.conn is not None
                worker.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                kill_tree(worker.process.pid)
        worker.process.join(timeout=5)
        if worker.conn is not None:
            worker.conn.close()
        worker.process, worker.conn, worker.ready = None, None, False

    # -- the loop --------------------------------------------------------------------------

    def execute(self, runs: Sequence[RunSpec], started: Started, finished: Finished) -> None:
        queue: deque[RunSpec] = deque(runs)
        try:
            self._loop(queue, started, finished)
        finally:
            for worker in self.workers:
                self._stop(worker, kill=worker.busy)
            shutil.rmtree(self.log_dir, ignore_errors=True)

    @staticmethod
    def _release(worker: Worker, result: dict[str, Any]) -> tuple[RunSpec, dict[str, Any]]:
        """Free ``worker`` of its run; return the run and its result."""
        spec, worker.run, worker.deadline = worker.run, None, None
        assert spec is not None
        return spec, result

    def _failure(self, worker: Worker, status: str, error: str, started_at: float) -> dict:
        assert worker.run is not None
        return failure(worker.run, status, error, started_at=started_at,
                       trace=worker.log_tail(), environment=worker.environment)

    def _loop(self, queue: deque[RunSpec], started: Started, finished: Finished) -> None:
        started_at: dict[str, float] = {}
        done: list[tuple[RunSpec, dict[str, Any]]] = []
        while queue or done or any(w.busy for w in self.workers):
            for worker in self.workers:
                if worker.process is None and (queue or worker.busy):
                    self._start(worker)
                if worker.ready and not worker.busy and queue:
                    spec = queue.popleft()
                    worker.run, worker.log_offset = spec, worker.log_size()
                    worker.deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
                    started_at[spec.run_key] = time.time()
                    started(spec)
                    assert worker.conn is not None
                    worker.conn.send(spec)
            # Idle workers got their next run first: storing results overlaps it, not a gap.
            for spec, result in done:
                finished(spec, result)
            done.clear()
            if not (queue or any(w.busy for w in self.workers)):
                break

            deadlines = [w.deadline for w in self.workers if w.deadline is not None]
            wait_s = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            waitables = {}
            for worker in self.workers:
                if worker.process is not None:
                    waitables[worker.conn] = worker
                    waitables[worker.process.sentinel] = worker
            ready = wait(list(waitables), timeout=wait_s)

            for handle in ready:
                worker = waitables[handle]
                if handle is not worker.conn or worker.process is None:
                    continue
                try:
                    kind, payload = worker.conn.recv()
                except (EOFError, OSError):
                    continue  # the process is dying: its sentinel reports it below
                if kind == "ready":
                    worker.ready, worker.environment, worker.start_failures = True, payload, 0
                elif kind == "result":
                    done.append(self._release(worker, payload))
                    if self.isolation == "run":
                        self._stop(worker)

            for worker in self.workers:
                if worker.process is None or worker.process.is_alive():
                    continue
                description = _exit_description(worker.process.exitcode)
                if worker.busy:
                    status, error = death(worker.log_tail(), "crashed", "worker process died "
                                          f"({description}) while running this run")
                    result = self._failure(worker, status, error, started_at[worker.run.run_key])
                    self._stop(worker)
                    done.append(self._release(worker, result))
                    continue
                if not worker.ready:
                    worker.start_failures += 1
                    tail = worker.log_tail()
                    self._stop(worker)
                    if worker.start_failures >= MAX_START_FAILURES:
                        self._fail_all(queue, started, finished,
                                       f"worker failed to start ({description}):\n{tail}")
                    continue
                self._stop(worker)

            now = time.monotonic()
            for worker in self.workers:
                if worker.busy and worker.deadline is not None and now >= worker.deadline:
                    assert worker.run is not None
                    error = timeout_error(worker.run.timeout_s)
                    _dump_stacks(worker.process.pid)
                    result = self._failure(worker, "timeout", error, started_at[worker.run.run_key])
                    self._stop(worker, kill=True)
                    done.append(self._release(worker, result))

    @staticmethod
    def _fail_all(queue: deque[RunSpec], started: Started, finished: Finished, error: str) -> None:
        """No worker can start: record every queued run as crashed with the reason."""
        while queue:
            spec = queue.popleft()
            started(spec)
            finished(spec, failure(spec, "crashed", error.splitlines()[0], trace=error,
                                   started_at=time.time()))
