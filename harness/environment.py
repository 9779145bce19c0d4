"""What machine a run ran on: devices, hardware groups and the software stack.

Every result points at an environment row, and the hardware label enters the run key, so
that results are only ever compared (and resumed) on the same hardware.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # torch and NVML agree on indices


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux, ``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpu_count() -> int:
    """CPUs this process may run on (affinity), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 on a CPU build or without a driver)."""
    from harness.probes.nvml import visible_gpu_count

    if visible_gpu_count() == 0:  # NVML first: importing torch costs a second or two
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(spec: str, *, cpus: int | None = None) -> tuple[str, str]:
    """Map a suite's ``device`` (auto, cpu, cuda, cuda:N) to ``(device, hardware label)``.

    The label names what timings depend on: the GPU model, or the CPU model and the number
    of CPUs this process may use (``cpus`` where a run gets fewer than the process's
    affinity allows: a Ray task's share of a node).
    """
    if spec == "auto":
        spec = "cuda" if cuda_device_count() > 0 else "cpu"
    if spec == "cpu":
        count = usable_cpu_count() if cpus is None else min(cpus, usable_cpu_count())
        return "cpu", f"cpu: {cpu_name()} x{count}"
    if spec == "cuda" or spec.startswith("cuda:"):
        count = cuda_device_count()
        index = int(spec.partition(":")[2] or 0)
        if count == 0:
            raise ValueError(f"device '{spec}' asked for, but no CUDA device is usable here")
        if index >= count:
            raise ValueError(f"device '{spec}' asked for, but only {count} CUDA device(s) here")
        import torch

        return spec, f"gpu: {torch.cuda.get_device_name(index)}"
    raise ValueError(f"device '{spec}': expected auto, cpu, cuda or cuda:N")


def git_sha(path: Path | None = None) -> str | None:
    """The commit of the source tree ``harness`` runs from, when it is a git checkout."""
    here = path or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def collect_environment(device: str) -> dict[str, Any]:
    """The environment row of a worker running on ``device`` (called once per worker)."""
    import psutil
    import torch

    from harness import __version__
    from harness.probes.nvml import gpu_inventory

    gpus = gpu_inventory() if device.startswith("cuda") else []
    gpu = gpus[0] if gpus else {}
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": usable_cpu_count(),
        "ram_bytes": psutil.virtual_memory().total,
        "gpu": gpu.get("name"),
        "gpu_count": len(gpus),
        "gpu_memory_bytes": gpu.get("memory_total"),
        "driver": gpu.get("driver"),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "harness_version": __version__,
        "git_sha": git_sha(),
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
