"""Peak host RAM of the run's process tree, per phase.

Offloading methods move bytes from the GPU to the host; a leaderboard that shows VRAM only
would flatter them. A 10 ms sampler sums RSS over this process and its recursive children
(data-loader workers, compile workers); on Linux the kernel's own high-water mark (VmHWM,
reset per phase through ``/proc/self/clear_refs``) also catches spikes shorter than a tick.
RSS sums count pages shared between processes once per process, as optimum-benchmark does.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.api import Recorder

__all__ = ["HostMemoryProbe", "PeriodicSampler", "process_tree", "tree_rss"]


class PeriodicSampler:
    """Call ``fn`` every ``interval_s`` on a daemon thread until ``stop()``.

    An exception in ``fn`` is kept in ``error`` (the first one) and sampling goes on: a probe
    must never take the run down.
    """

    def __init__(self, fn: Callable[[], None], interval_s: float) -> None:
        self._fn = fn
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="harness-probe", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _loop(self) -> None:
        next_t = time.perf_counter()
        while not self._stop.is_set():
            try:
                self._fn()
            except Exception as exc:  # keep sampling; report the first failure
                if self.error is None:
                    self.error = exc
            next_t += self._interval
            self._stop.wait(max(0.0, next_t - time.perf_counter()))


def process_tree(proc: Any = None) -> list[Any]:
    """This process (or ``proc``) and all its recursive children, as psutil processes."""
    import psutil

    proc = proc if proc is not None else psutil.Process()
    try:
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        children = []
    return [proc, *children]


def tree_rss(proc: Any = None) -> int:
    """Sum of RSS (bytes) over a process tree; processes that vanish meanwhile are skipped."""
    return _rss_sum(process_tree(proc))


def _rss_sum(procs: list[Any]) -> int:
    import psutil

    total = procs[0].memory_info().rss  # our own process must answer: errors propagate
    for child in procs[1:]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            total += child.memory_info().rss
    return total


class _TreeSampler:
    """RSS of a process tree, re-listing the children only every ``refresh_s``.

    Listing children scans all of /proc (~1-2 ms, holding the GIL); reading one process's
    RSS costs ~10 us. Re-listing at 10 Hz keeps the 10 ms sampler from slowing a
    Python-bound workload, at the price of missing children that live under ~0.1 s.
    """

    def __init__(self, proc: Any, refresh_s: float = 0.1) -> None:
        self.proc = proc
        self.refresh_s = refresh_s
        self.procs = process_tree(proc)
        self.listed_at = time.perf_counter()

    def __call__(self) -> int:
        now = time.perf_counter()
        if now - self.listed_at >= self.refresh_s:
            self.procs, self.listed_at = process_tree(self.proc), now
        return _rss_sum(self.procs)


def _reset_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not permitted."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> int | None:
    """VmHWM of this process in bytes, or None where /proc doesn't have it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    value, unit = line.split()[1:3]
                    return int(value) * 1024 if unit == "kB" else None
    except (OSError, ValueError, IndexError):
        return None
    return None


class HostMemoryProbe:
    """Records ``host_rss_start`` and ``host_rss_peak`` (bytes, stat ``max``) per phase."""

    name = "host_memory"

    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s

    @contextlib.contextmanager
    def measure(self, phase: str, recorder: Recorder) -> Iterator[None]:
        reason = None
        try:
            import psutil

            tree = _TreeSampler(psutil.Process())
            start = tree()
        except Exception as exc:
            reason = f"psutil failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            try:
                yield
            finally:
                recorder.record(phase, "host_rss_start", None, "bytes", reason=reason)
                recorder.record(phase, "host_rss_peak", None, "bytes", stat="max", reason=reason)
            return

        peak = [start]

        def sample() -> None:
            rss = tree()
            if rss > peak[0]:
                peak[0] = rss

        hwm_reset = _reset_hwm()
        sampler = PeriodicSampler(sample, self.interval_s)
        sampler.start()
        try:
            yield
        finally:
            try:
                sampler.stop()
                with contextlib.suppress(Exception):
                    tree.listed_at = -math.inf  # one last full reading as the phase ends
                    sample()
                hwm = _read_hwm() if hwm_reset else None
                best = max(peak[0], hwm or 0)
                recorder.record(phase, "host_rss_start", start, "bytes")
                recorder.record(phase, "host_rss_peak", best, "bytes", stat="max")
            except Exception as exc:  # never mask the phase's own outcome
                reason = f"host memory probe failed: {type(exc).__name__}: {exc}"
                recorder.record(phase, "host_rss_peak", None, "bytes", stat="max", reason=reason)
