"""Device-level GPU readings through NVML: VRAM, per-process VRAM, power, energy, thermals.

torch's allocator stats miss the CUDA context, cuBLAS/cuDNN workspaces and other processes'
memory; NVML sees the device as the driver does. A sampler thread polls every ~10 ms
(optimum-benchmark's memory tracker rate) for device used memory, this process tree's VRAM,
power, temperature and SM clock. Energy comes from the cumulative counter
(``nvmlDeviceGetTotalEnergyConsumption``, mJ, Volta and newer), which beats 1 Hz power
sampling; where the counter is unsupported, sampled power is integrated and the row flagged
with stat ``integrated_power``. Energy and device memory are device-wide: other tenants of
the GPU are counted too.

``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set (unless already set) when this module is imported, so
CUDA numbers GPUs as NVML does; it must happen before CUDA is initialised, which is why the
core imports the probes early. Without it torch and NVML can disagree on indices and the
probe reads the wrong GPU (optimum-benchmark issue #136).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from harness.probes.host_memory import PeriodicSampler

if TYPE_CHECKING:
    from harness.api import Recorder

os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

__all__ = ["NvmlProbe", "gpu_inventory", "physical_ids", "visible_gpu_count"]

#: (metric, unit, stat) of every row this probe writes.
METRICS = (
    ("vram_used_peak", "bytes", "max"),
    ("vram_used_baseline", "bytes", "value"),
    ("vram_process_peak", "bytes", "max"),
    ("power_mean", "W", "value"),
    ("temperature_start", "C", "value"),
    ("temperature_end", "C", "value"),
    ("sm_clock_start", "MHz", "value"),
    ("sm_clock_end", "MHz", "value"),
    ("energy", "J", "value"),
)

#: Below this window the energy counter (updated every ~20-100 ms) is too coarse to trust.
MIN_ENERGY_WINDOW_S = 1.0

#: How often the sampler re-lists this process tree's PIDs (children come and go rarely).
PID_REFRESH_S = 0.1


class NvmlUnavailable(Exception):
    """NVML can't measure the requested device here; the message is the reason."""


def _text(value: Any) -> str:
    """NVML strings are bytes in old pynvml releases and str in new ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml() -> Any:
    """Import pynvml and initialise NVML (reference-counted; pair with ``nvmlShutdown``)."""
    try:
        import pynvml
    except Exception as exc:
        raise NvmlUnavailable(f"pynvml is not importable: {exc}") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        raise NvmlUnavailable(f"NVML unavailable: {_text(exc)}") from exc
    return pynvml


def _shutdown(pynvml: Any) -> None:
    with contextlib.suppress(Exception):
        pynvml.nvmlShutdown()


def physical_ids(visible: str | None, uuids: Sequence[str]) -> list[int | str]:
    """Map CUDA's visible order to NVML devices, following CUDA's own rules.

    ``visible`` is ``CUDA_VISIBLE_DEVICES`` (None when unset: every device, in NVML order);
    ``uuids`` are the NVML devices' UUIDs by NVML index. Entries are integer indices,
    ``GPU-…`` UUIDs or unique prefixes of them (→ NVML index), or ``MIG-…`` UUIDs (kept as
    strings). As in CUDA, the list ends at the first invalid or repeated entry.
    """
    if visible is None:
        return list(range(len(uuids)))
    out: list[int | str] = []
    for raw in visible.split(","):
        token = raw.strip()
        entry: int | str | None = None
        if token.lstrip("+-").isdigit():
            index = int(token)
            entry = index if 0 <= index < len(uuids) else None
        elif token.startswith("GPU-"):
            matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(token)]
            entry = matches[0] if len(matches) == 1 else None
        elif token.startswith("MIG-"):
            entry = token
        if entry is None or entry in out:
            break
        out.append(entry)
    return out


def _visible(pynvml: Any) -> list[int | str]:
    count = pynvml.nvmlDeviceGetCount()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    uuids: list[str] = []
    if visible is not None and "GPU-" in visible:
        uuids = [
            _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(count)
        ]
    else:
        uuids = [""] * count
    return physical_ids(visible, uuids)


def _handle_for(pynvml: Any, entry: int | str) -> Any:
    if isinstance(entry, int):
        return pynvml.nvmlDeviceGetHandleByIndex(entry)
    return pynvml.nvmlDeviceGetHandleByUUID(entry)


def _device_index(device: str) -> int:
    """torch's index for ``device``; a bare ``cuda`` is torch's current device."""
    _, _, index = device.partition(":")
    if index:
        return int(index)
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(Exception):
            if torch.cuda.is_initialized():
                return int(torch.cuda.current_device())
    return 0


def visible_gpu_count() -> int:
    """GPUs this process may use (NVML, honouring ``CUDA_VISIBLE_DEVICES``); 0 without NVML."""
    try:
        pynvml = _nvml()
    except NvmlUnavailable:
        return 0
    try:
        return len(_visible(pynvml))
    except Exception:
        return 0
    finally:
        _shutdown(pynvml)


def gpu_inventory() -> list[dict[str, Any]]:
    """The GPUs this process may use, in torch's order; [] without NVML.

    Each entry: ``index`` (torch's), ``nvml_index`` (None for a MIG instance), ``name``,
    ``uuid``, ``memory_total`` (bytes) and ``driver_version``.
    """
    try:
        pynvml = _nvml()
    except NvmlUnavailable:
        return []
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        out = []
        for index, entry in enumerate(_visible(pynvml)):
            handle = _handle_for(pynvml, entry)
            out.append(
                {
                    "index": index,
                    "nvml_index": entry if isinstance(entry, int) else None,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "uuid": _text(pynvml.nvmlDeviceGetUUID(handle)),
                    "memory_total": int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    "driver_version": driver,
                }
            )
        return out
    except Exception:
        return []
    finally:
        _shutdown(pynvml)


def _tree_pids() -> set[int]:
    try:
        from harness.probes.host_memory import process_tree

        return {p.pid for p in process_tree()}
    except Exception:
        return {os.getpid()}


class _Reading:
    """One quantity's samples plus the first error met reading it."""

    def __init__(self) -> None:
        self.values: list[tuple[float, float]] = []  # (perf_counter seconds, value)
        self.error: str | None = None

    def add(self, t: float, read: Any) -> None:
        try:
            value = read()
        except Exception as exc:
            if self.error is None:
                self.error = f"NVML: {type(exc).__name__}: {_text(exc)}"
            return
        if value is not None:
            self.values.append((t, float(value)))

    def fail(self, reason: str) -> None:
        if self.error is None:
            self.error = reason


class _Session:
    """One phase's NVML sampling on one device."""

    def __init__(self, pynvml: Any, handle: Any, interval_s: float) -> None:
        self.nvml = pynvml
        self.handle = handle
        self.used = _Reading()
        self.process = _Reading()
        self.power = _Reading()
        self.temperature = _Reading()
        self.clock = _Reading()
        self.pids = _tree_pids()
        self.pids_at = time.perf_counter()
        self.energy_error: str | None = None
        self.energy_start = self._energy()
        self.t0 = time.perf_counter()
        self.sample()
        self.sampler = PeriodicSampler(self.sample, interval_s)
        self.sampler.start()

    def _energy(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except Exception as exc:
            if self.energy_error is None:
                self.energy_error = f"{type(exc).__name__}: {_text(exc)}"
            return None

    def _process_vram(self) -> float | None:
        now = time.perf_counter()
        if now - self.pids_at > PID_REFRESH_S:
            self.pids, self.pids_at = _tree_pids(), now
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        ours = [p for p in procs if p.pid in self.pids]
        if not ours:
            self.process.fail(
                "NVML lists no process of this process tree on the GPU (no CUDA context yet, "
                "or PIDs differ from NVML's, e.g. in a container)"
            )
            return None
        used = [p.usedGpuMemory for p in ours]
        if any(u is None for u in used):
            self.process.fail("NVML reports no per-process memory (usedGpuMemory unavailable)")
            return None
        return float(sum(used))

    def sample(self) -> None:
        nvml, h = self.nvml, self.handle
        t = time.perf_counter()
        self.used.add(t, lambda: nvml.nvmlDeviceGetMemoryInfo(h).used)
        self.process.add(t, self._process_vram)
        self.power.add(t, lambda: nvml.nvmlDeviceGetPowerUsage(h) / 1000.0)
        self.temperature.add(t, lambda: nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU))
        self.clock.add(t, lambda: nvml.nvmlDeviceGetClockInfo(h, nvml.NVML_CLOCK_SM))

    def finish(self) -> list[tuple[str, str, str, float | None, str | None]]:
        """Stop sampling; the rows as (metric, unit, stat, value, reason)."""
        self.sampler.stop()
        energy_end = self._energy()
        t1 = time.perf_counter()
        self.sample()
        window = t1 - self.t0

        def pick(reading: _Reading, which: str) -> tuple[float | None, str | None]:
            values = [v for _, v in reading.values]
            if not values:
                return None, reading.error or "NVML returned no readings"
            value = {
                "max": max(values), "first": values[0], "last": values[-1],
                "mean": math.fsum(values) / len(values),
            }[which]  # fmt: skip
            return value, None

        rows: list[tuple[str, str, str, float | None, str | None]] = []
        rows.append(("vram_used_peak", "bytes", "max", *pick(self.used, "max")))
        rows.append(("vram_used_baseline", "bytes", "value", *pick(self.used, "first")))
        rows.append(("vram_process_peak", "bytes", "max", *pick(self.process, "max")))
        rows.append(("power_mean", "W", "value", *pick(self.power, "mean")))
        rows.append(("temperature_start", "C", "value", *pick(self.temperature, "first")))
        rows.append(("temperature_end", "C", "value", *pick(self.temperature, "last")))
        rows.append(("sm_clock_start", "MHz", "value", *pick(self.clock, "first")))
        rows.append(("sm_clock_end", "MHz", "value", *pick(self.clock, "last")))
        rows.append(self._energy_row(energy_end, window))
        return rows

    def _energy_row(
        self, energy_end: float | None, window: float
    ) -> tuple[str, str, str, float | None, str | None]:
        short = window < MIN_ENERGY_WINDOW_S
        if self.energy_start is not None and energy_end is not None:
            reason = (
                f"window {window:.2g} s < {MIN_ENERGY_WINDOW_S:g} s: "
                "the NVML counter updates every ~20-100 ms"
                if short
                else None
            )
            return ("energy", "J", "value", (energy_end - self.energy_start) / 1e3, reason)
        points = self.power.values
        counter = f"energy counter unavailable ({self.energy_error})"
        if len(points) < 2 or points[-1][0] <= points[0][0]:
            why = self.power.error or "too few power samples"
            return ("energy", "J", "value", None, f"{counter}; power integration failed: {why}")
        joules = math.fsum(
            (t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(points)
        )
        reasons = [f"{counter}: integrated sampled power"]
        if short:
            reasons.append(
                f"window {window:.2g} s < {MIN_ENERGY_WINDOW_S:g} s: "
                "NVML power is a ~1 s moving average"
            )
        return ("energy", "J", "integrated_power", joules, "; ".join(reasons))


class NvmlProbe:
    """Samples one CUDA device through NVML every ``interval_s`` during each phase.

    Rows (see ``METRICS``): ``vram_used_peak`` / ``vram_process_peak`` (bytes, stat ``max``),
    ``vram_used_baseline`` (device used memory at phase start), ``power_mean`` (W),
    ``temperature_start/_end`` (C), ``sm_clock_start/_end`` (MHz) and ``energy`` (J; stat
    ``integrated_power`` when the counter is unsupported). Without NVML, a GPU or a CUDA
    device, every row is null with the reason.
    """

    name = "nvml"

    def __init__(self, device: str, interval_s: float = 0.01) -> None:
        self.device = device
        self.interval_s = interval_s

    def _open(self) -> tuple[Any, Any]:
        """Initialise NVML and find this probe's device; raises NvmlUnavailable."""
        if not self.device.startswith("cuda"):
            raise NvmlUnavailable(f"device is {self.device}: NVML measures CUDA devices only")
        pynvml = _nvml()
        try:
            visible = _visible(pynvml)
            index = _device_index(self.device)
            if index >= len(visible):
                shown = os.environ.get("CUDA_VISIBLE_DEVICES")
                raise NvmlUnavailable(
                    f"{self.device} is not among the {len(visible)} visible GPU(s) "
                    f"(CUDA_VISIBLE_DEVICES={shown!r})"
                )
            return pynvml, _handle_for(pynvml, visible[index])
        except NvmlUnavailable:
            _shutdown(pynvml)
            raise
        except Exception as exc:
            _shutdown(pynvml)
            raise NvmlUnavailable(f"NVML device lookup failed: {_text(exc)}") from exc

    @staticmethod
    def _record_unavailable(phase: str, recorder: Recorder, reason: str) -> None:
        for metric, unit, stat in METRICS:
            recorder.record(phase, metric, None, unit, stat=stat, reason=reason)

    @contextlib.contextmanager
    def measure(self, phase: str, recorder: Recorder) -> Iterator[None]:
        pynvml: Any = None
        session: _Session | None = None
        reason = None
        try:
            pynvml, handle = self._open()
            session = _Session(pynvml, handle, self.interval_s)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, NvmlUnavailable) else f"NVML failed: {exc}"
            if pynvml is not None:
                _shutdown(pynvml)
        if session is None:
            try:
                yield
            finally:
                self._record_unavailable(phase, recorder, reason or "NVML unavailable")
            return

        try:
            yield
        finally:
            try:
                rows = session.finish()
            except Exception as exc:  # never mask the phase's own outcome
                self._record_unavailable(phase, recorder, f"NVML probe failed: {exc}")
            else:
                for metric, unit, stat, value, why in rows:
                    recorder.record(phase, metric, value, unit, stat=stat, reason=why)
            finally:
                _shutdown(pynvml)
