"""Is the host busy? Load, other processes' CPU use and clocks, per phase (issue 19).

A timed loop that cannot pin its median down on a machine where a package manager compiles
in the background should say so: "host busy (load 3.1 on 2 CPUs, 48 % CPU used by other
processes)" explains an ``invalid`` verdict that a CV alone does not. A background thread
samples every ~0.25 s, cheaply (a few /proc reads; this process tree's children are
re-listed once a second):

* the 1-minute load average (``os.getloadavg``) against the logical CPU count;
* the share of all CPUs' capacity used by processes *other* than this run's: system-wide busy
  CPU time (``psutil.cpu_times``, as ``psutil.cpu_percent`` counts it: iowait is idle,
  steal is busy) minus the CPU time of :func:`run_root`'s tree (in a spawned worker the
  driver and every worker of the suite, so ``workers: 2`` is not a busy host), over the same
  window;
* the CPU clock (``psutil.cpu_freq``) where readable;
* on CUDA, through NVML: compute processes of other process trees on the GPU, and the SM
  clock against its maximum.

Rows per phase (``METRICS``; GPU rows only for CUDA devices): ``host_load`` (stat ``max``),
``host_cpus`` (count), ``other_cpu_share`` and ``own_cpu_share`` (%, over the whole phase),
``other_cpu_share_peak`` (%, the worst ~0.25 s window, stat ``max``), ``cpu_freq_mhz``
(mean), ``cpu_freq_max_mhz``, ``gpu_other_processes`` (stat ``max``), ``gpu_sm_clock_mhz``
(mean) and ``gpu_sm_clock_max_mhz``. Whatever can't be read is a null with the reason; the
probe never raises into a run. :func:`busy_host_reason` turns a phase's figures into a
diagnosis (thresholds: ``BUSY_OTHER_CPU_PCT``, ``BUSY_LOAD_FACTOR``,
``BUSY_LOAD_MIN_OTHER_PCT``); :func:`host_busy_now` takes one short sample for a
start-of-run warning.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.probes.host_memory import PeriodicSampler, process_tree

if TYPE_CHECKING:
    from harness.api import Recorder

__all__ = [
    "BUSY_LOAD_FACTOR",
    "BUSY_LOAD_MIN_OTHER_PCT",
    "BUSY_OTHER_CPU_PCT",
    "GPU_METRICS",
    "METRICS",
    "HostLoadProbe",
    "busy_host_reason",
    "host_busy_now",
    "run_root",
]

#: (metric, unit, stat) of the rows written for every device.
METRICS = (
    ("host_load", "", "max"),
    ("host_cpus", "count", "value"),
    ("other_cpu_share", "%", "value"),
    ("other_cpu_share_peak", "%", "max"),
    ("own_cpu_share", "%", "value"),
    ("cpu_freq_mhz", "MHz", "value"),
    ("cpu_freq_max_mhz", "MHz", "value"),
)

#: (metric, unit, stat) of the rows added on CUDA devices.
GPU_METRICS = (
    ("gpu_other_processes", "count", "max"),
    ("gpu_sm_clock_mhz", "MHz", "value"),
    ("gpu_sm_clock_max_mhz", "MHz", "value"),
)

#: Busy when other processes used more than this share (%) of all CPUs over the phase: on 2
#: CPUs, one other process spinning half the time; timing noise grows well before that.
BUSY_OTHER_CPU_PCT = 25.0

#: Busy when the 1-minute load average, less the CPUs this run's processes kept busy,
#: exceeds this many times the logical CPU count (runnable threads queueing for a CPU, or
#: tasks stuck in I/O) *and* other processes used at least ``BUSY_LOAD_MIN_OTHER_PCT`` % of
#: the CPUs (or that share is unknown). The load average counts our own threads too (a
#: 2-thread run on 2 CPUs is load 2) and lags by a minute, so a load left over from this
#: worker's own earlier work, with nobody else running now, is not called busy.
BUSY_LOAD_FACTOR = 1.0
BUSY_LOAD_MIN_OTHER_PCT = 10.0

#: Below this window /proc's 10 ms CPU-time ticks make a CPU share meaningless.
MIN_CPU_WINDOW_S = 0.1

#: How often the children of this process tree are re-listed (a full /proc scan, ~1 ms).
TREE_REFRESH_S = 1.0


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class _CpuSnapshot:
    """CPU seconds since boot: all CPUs' total and busy time, and this process tree's."""

    t: float
    total: float
    busy: float
    own: float


def _system_cpu() -> tuple[float, float]:
    """(total, busy) CPU seconds summed over all CPUs, counted as ``psutil.cpu_percent``
    does: guest time is already in user/nice, iowait counts as idle, steal as busy."""
    import psutil

    times = psutil.cpu_times()
    total = math.fsum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total, total - idle


def run_root() -> Any:
    """The process whose tree is "this run" (psutil): the driver when this is a worker the
    executor spawned, so that the suite's other workers count as its own load and not as
    another program's; this process otherwise (inline runs, tests, the CLI's start check)."""
    import multiprocessing

    import psutil

    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid is not None:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(parent.pid)
    return psutil.Process()


class _CpuAccount:
    """Snapshots of system and own-tree CPU time; children re-listed every ``refresh_s``.

    "Own" is :func:`run_root`'s tree: in a spawned worker, the driver and all its workers.
    """

    def __init__(self, refresh_s: float = TREE_REFRESH_S) -> None:
        self.proc = run_root()
        self.refresh_s = refresh_s
        self.procs = process_tree(self.proc)
        self.listed_at = time.perf_counter()

    def pids(self) -> set[int]:
        return {p.pid for p in self.procs}

    def own_seconds(self) -> float:
        import psutil

        now = time.perf_counter()
        if now - self.listed_at >= self.refresh_s:
            self.procs, self.listed_at = process_tree(self.proc), now

        def spent(proc: Any) -> float:
            c = proc.cpu_times()  # reaped children's time too, so exits don't lose it
            return c.user + c.system + c.children_user + c.children_system

        total = spent(self.procs[0])  # our own process must answer: errors propagate
        for child in self.procs[1:]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied,
                                     psutil.ZombieProcess):
                total += spent(child)
        return total

    def snapshot(self) -> _CpuSnapshot:
        t = time.perf_counter()
        total, busy = _system_cpu()
        return _CpuSnapshot(t, total, busy, self.own_seconds())


def _shares(a: _CpuSnapshot, b: _CpuSnapshot) -> tuple[float, float] | None:
    """(other, own) shares of all CPUs' capacity in % between two snapshots."""
    capacity = b.total - a.total
    if capacity <= 0:
        return None
    own = max(0.0, b.own - a.own)
    other = max(0.0, (b.busy - a.busy) - own)
    return min(100.0, 100 * other / capacity), min(100.0, 100 * own / capacity)


class _Series:
    """One quantity's readings plus the first error met reading it."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.error: str | None = None

    def read(self, fn: Callable[[], Any]) -> None:
        try:
            value = fn()
        except Exception as exc:
            if self.error is None:
                self.error = _why(exc)
            return
        if value is not None:
            self.values.append(value)

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason


Row = tuple[str, str, str, float | None, str | None]


def _cpu_freq() -> tuple[float, float]:
    """(current, max) CPU clock in MHz; max is 0 where the platform doesn't say."""
    import psutil

    freq = psutil.cpu_freq()
    if freq is None or not freq.current:
        raise RuntimeError("psutil.cpu_freq() reports no CPU frequency here")
    return float(freq.current), float(freq.max or 0.0)


def _cpu_count() -> int:
    import psutil

    count = psutil.cpu_count(logical=True) or os.cpu_count()
    if not count:
        raise RuntimeError("the number of logical CPUs is unknown")
    return int(count)


class _Gpu:
    """NVML readings of one CUDA device: other process trees' compute processes, SM clock."""

    def __init__(self, device: str) -> None:
        from harness.probes.nvml import NvmlProbe

        self.nvml, self.handle = NvmlProbe(device)._open()  # raises NvmlUnavailable
        self.others = _Series()
        self.clock = _Series()
        self.max_clock: float | None = None
        self.max_clock_error: str | None = None
        try:
            self.max_clock = float(
                self.nvml.nvmlDeviceGetMaxClockInfo(self.handle, self.nvml.NVML_CLOCK_SM)
            )
        except Exception as exc:
            self.max_clock_error = f"NVML: {_why(exc)}"

    def _other_processes(self, ours: set[int]) -> int | None:
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        pids = {p.pid for p in procs}
        if pids and not pids & ours:
            self.others.fail(
                "NVML lists no process of this process tree on the GPU (no CUDA context yet, "
                "or PIDs differ from NVML's, e.g. in a container): others can't be told apart"
            )
            return None
        return len(pids - ours)

    def sample(self, ours: set[int]) -> None:
        self.others.read(lambda: self._other_processes(ours))
        self.clock.read(lambda: float(
            self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM)))

    def rows(self) -> list[Row]:
        clocks = self.clock.values
        return [
            ("gpu_other_processes", "count", "max",
             float(max(self.others.values)) if self.others.values else None,
             None if self.others.values else self.others.error or "NVML returned no readings"),
            ("gpu_sm_clock_mhz", "MHz", "value",
             math.fsum(clocks) / len(clocks) if clocks else None,
             None if clocks else self.clock.error or "NVML returned no readings"),
            ("gpu_sm_clock_max_mhz", "MHz", "value", self.max_clock, self.max_clock_error),
        ]

    def close(self) -> None:
        from harness.probes.nvml import _shutdown

        _shutdown(self.nvml)


class _Session:
    """One phase's sampling; every reading fails on its own, with its reason."""

    def __init__(self, device: str, interval_s: float) -> None:
        self.interval_s = interval_s
        self.cpus = _Series()
        self.cpus.read(_cpu_count)
        self.load = _Series()
        self.cpu = _Series()
        self.freq = _Series()
        self.account: _CpuAccount | None = None
        try:
            self.account = _CpuAccount()
        except Exception as exc:
            self.cpu.fail(f"psutil failed: {_why(exc)}")
        self.gpu: _Gpu | None = None
        self.gpu_error: str | None = None
        if device.startswith("cuda"):
            try:
                self.gpu = _Gpu(device)
            except Exception as exc:
                self.gpu_error = str(exc) or _why(exc)
        self.freq_every = max(1, round(1.0 / interval_s))  # the clock: about once a second
        self.ticks = 0
        self.last = -math.inf
        self.sample(force=True)
        self.sampler = PeriodicSampler(self.sample, interval_s)
        self.sampler.start()

    def sample(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last < self.interval_s / 2:
            return  # the sampler's immediate first tick, right after the start reading
        self.last = now
        self.load.read(lambda: os.getloadavg()[0])
        if self.account is not None:
            self.cpu.read(self.account.snapshot)
        if force or self.ticks % self.freq_every == 0:
            self.freq.read(_cpu_freq)
        if self.gpu is not None:
            ours = self.account.pids() if self.account is not None else {os.getpid()}
            self.gpu.sample(ours)
        self.ticks += 1

    def finish(self) -> list[Row]:
        """Stop sampling; the rows as (metric, unit, stat, value, reason)."""
        self.sampler.stop()
        try:
            self.sample(force=True)
            return self.rows()
        finally:
            if self.gpu is not None:
                self.gpu.close()

    def rows(self) -> list[Row]:
        rows: list[Row] = []
        loads = self.load.values
        rows.append(("host_load", "", "max", max(loads) if loads else None,
                     None if loads else f"os.getloadavg failed: {self.load.error}"))
        cpus = self.cpus.values
        rows.append(("host_cpus", "count", "value", float(cpus[0]) if cpus else None,
                     None if cpus else self.cpus.error))
        rows.extend(self._share_rows())
        freqs = self.freq.values
        why = None if freqs else f"CPU frequency unreadable: {self.freq.error}"
        rows.append(("cpu_freq_mhz", "MHz", "value",
                     math.fsum(f for f, _ in freqs) / len(freqs) if freqs else None, why))
        top = max((m for _, m in freqs), default=0.0)
        rows.append(("cpu_freq_max_mhz", "MHz", "value", top or None,
                     why or (None if top else "psutil reports no maximum CPU frequency here")))
        if self.gpu is not None:
            rows.extend(self.gpu.rows())
        elif self.gpu_error is not None:
            rows.extend((m, u, s, None, self.gpu_error) for m, u, s in GPU_METRICS)
        return rows

    def _share_rows(self) -> list[Row]:
        snaps: list[_CpuSnapshot] = self.cpu.values
        reason = None
        if len(snaps) < 2:
            reason = f"CPU times unreadable: {self.cpu.error or 'fewer than two readings'}"
        elif snaps[-1].t - snaps[0].t < MIN_CPU_WINDOW_S:
            reason = (f"phase too short ({snaps[-1].t - snaps[0].t:.3g} s < "
                      f"{MIN_CPU_WINDOW_S:g} s) for CPU accounting in 10 ms ticks")
        whole = None if reason else _shares(snaps[0], snaps[-1])
        if whole is None:
            reason = reason or "no CPU time passed between the readings"
            return [(m, "%", s, None, reason) for m, s in
                    (("other_cpu_share", "value"), ("other_cpu_share_peak", "max"),
                     ("own_cpu_share", "value"))]
        windows = [
            shares for a, b in itertools.pairwise(snaps)
            if b.t - a.t >= self.interval_s / 2 and (shares := _shares(a, b)) is not None
        ]
        peak = max((other for other, _ in windows), default=whole[0])
        return [
            ("other_cpu_share", "%", "value", whole[0], None),
            ("other_cpu_share_peak", "%", "max", max(peak, whole[0]), None),
            ("own_cpu_share", "%", "value", whole[1], None),
        ]


class HostLoadProbe:
    """Samples host load (and, on CUDA, GPU sharing and clocks) during each phase.

    See the module docstring for the rows; :func:`busy_host_reason` reads them.
    """

    name = "host_load"

    def __init__(self, device: str = "cpu", interval_s: float = 0.25) -> None:
        self.device = device
        self.interval_s = interval_s

    def _metrics(self) -> tuple[tuple[str, str, str], ...]:
        return METRICS + (GPU_METRICS if self.device.startswith("cuda") else ())

    @contextlib.contextmanager
    def measure(self, phase: str, recorder: Recorder) -> Iterator[None]:
        session: _Session | None = None
        reason = None
        try:
            session = _Session(self.device, self.interval_s)
        except Exception as exc:
            reason = f"host load probe failed to start: {_why(exc)}"
        try:
            yield
        finally:
            if session is None:
                rows: list[Row] = [(m, u, s, None, reason) for m, u, s in self._metrics()]
            else:
                try:
                    rows = session.finish()
                except Exception as exc:  # never mask the phase's own outcome
                    why = f"host load probe failed: {_why(exc)}"
                    rows = [(m, u, s, None, why) for m, u, s in self._metrics()]
            for metric, unit, stat, value, why in rows:
                if value is None:
                    why = why or "not measured"
                recorder.record(phase, metric, value, unit, stat=stat, reason=why)


def busy_host_reason(metrics: Mapping[str, float | None]) -> str | None:
    """A diagnosis like "host busy (load 3.1 on 2 CPUs, 48 % CPU used by other processes)",
    or None when the figures don't show a busy host.

    ``metrics`` maps metric names to values: a phase's ``PhaseResult.metrics``, or a run's
    rows of one phase. Busy means any of: other processes used more than
    ``BUSY_OTHER_CPU_PCT`` % of all CPUs over the phase (``other_cpu_share``); the load
    average beyond the CPUs this worker kept busy (``host_load`` less ``own_cpu_share`` of
    ``host_cpus``) exceeded ``BUSY_LOAD_FACTOR`` x ``host_cpus`` while other processes used
    at least ``BUSY_LOAD_MIN_OTHER_PCT`` % (or their share is unknown); another process tree
    ran compute work on the GPU (``gpu_other_processes``). Missing or null figures count as
    not busy.
    """

    def get(name: str) -> float | None:
        value = metrics.get(name)
        return None if value is None or math.isnan(value) else float(value)

    load, cpus, other = get("host_load"), get("host_cpus"), get("other_cpu_share")
    own, gpu_others = get("own_cpu_share"), get("gpu_other_processes")
    busy = other is not None and other > BUSY_OTHER_CPU_PCT
    if load is not None and cpus and (other is None or other >= BUSY_LOAD_MIN_OTHER_PCT):
        own_cpus = (own or 0.0) / 100 * cpus
        busy = busy or load - own_cpus > BUSY_LOAD_FACTOR * cpus
    busy = busy or bool(gpu_others)
    if not busy:
        return None
    parts = []
    if load is not None and cpus:
        parts.append(f"load {load:.1f} on {cpus:g} CPUs")
    if other is not None:
        parts.append(f"{other:.0f} % CPU used by other processes")
    if gpu_others:
        parts.append(f"{gpu_others:g} other process{'es' if gpu_others != 1 else ''} "
                     "on the GPU")
    return f"host busy ({', '.join(parts)})"


def host_busy_now(seconds: float = 0.5) -> str | None:
    """Sample the host for ``seconds`` and diagnose it as :func:`busy_host_reason` does.

    For a start-of-run warning: this process's tree is "own", everything else "other". None
    when the host looks quiet or can't be read (it never raises).
    """
    try:
        account = _CpuAccount()
        loads = [os.getloadavg()[0]]
        start = account.snapshot()
        time.sleep(seconds)
        end = account.snapshot()
        loads.append(os.getloadavg()[0])
        shares = _shares(start, end)
        readings: dict[str, float | None] = {
            "host_load": max(loads),
            "host_cpus": float(_cpu_count()),
            "other_cpu_share": shares[0] if shares else None,
            "own_cpu_share": shares[1] if shares else None,
        }
        return busy_host_reason(readings)
    except Exception:
        return None
