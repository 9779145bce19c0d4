"""A results store for the report tests, written through the real ``harness.store.Store``.

Two suites, two hardware groups (a CPU and a GPU), several seeds, every status, a method
whose name is a script tag and an error message holding HTML: what the leaderboard site must
show without hiding, mixing or executing anything. Figures are chosen so that the tests can
check the arithmetic by hand (see ``DENSE_CPU_PPL``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from harness.scenarios.perplexity import PerplexityScenario
from harness.store import Store

CPU = "cpu: AMD EPYC x2"
GPU = "gpu: NVIDIA H100 80GB HBM3"
XSS = "<script>alert(1)</script>"
HTML_ERROR = 'ValueError: bad <b>input</b> & "quotes" <img src=x onerror=alert(2)>'
HTML_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "<module>", line 1, in <module>\n'
    f"{HTML_ERROR}\n"
)
ALPHA = "alpha"
BETA = "beta & <gamma>"
#: Perplexity of dense on builtin:tiny-a, CPU, seeds 0, 1, 2 (the CI test's input).
DENSE_CPU_PPL = (10.0, 11.0, 13.0)
MiB = 2**20

_ENVIRONMENTS = {
    CPU: {"hostname": "cpu-box", "platform": "Linux", "python": "3.11.7", "cpu": "AMD EPYC",
          "cpu_count": 2, "ram_bytes": 25 * 2**30, "gpu": None, "gpu_count": 0,
          "torch": "2.13.0+cpu", "transformers": "5.23.0", "harness_version": "0.1.0",
          "git_sha": "abc123"},
    GPU: {"hostname": "gpu-box", "platform": "Linux", "python": "3.11.7", "cpu": "Intel Xeon",
          "cpu_count": 16, "ram_bytes": 128 * 2**30, "gpu": "NVIDIA H100 80GB HBM3",
          "gpu_count": 1, "gpu_memory_bytes": 80 * 2**30, "driver": "550.54",
          "cuda": "12.4", "torch": "2.13.0+cu124", "transformers": "5.23.0",
          "harness_version": "0.1.0", "git_sha": "abc123"},
}

_ERRORS = {
    "invalid": ("forward: cv 0.9 > max_cv 0.5", None),
    "oom": ("CUDA out of memory. Tried to allocate 80.00 GiB", "torch.OutOfMemoryError"),
    "failed": (HTML_ERROR, HTML_TRACEBACK),
    "timeout": ("timed out after 600 s", None),
    "crashed": ("worker died: signal 11 (SIGSEGV)", "Fatal Python error: Segmentation fault"),
    "unsupported": ("offloading the KV cache needs a CUDA device", None),
}


def run_key(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def _metrics(hardware: str, quality: tuple[str, float, bool], latency: float | None,
             vram: float | None, host: float, trainable: float) -> list[dict[str, Any]]:
    """Rows shaped like the real probes': nulls on CPU carry their reason."""
    gpu = hardware == GPU
    metric, value, higher_is_better = quality
    rows = [
        {"phase": "eval", "metric": metric, "value": value, "unit": "",
         "higher_is_better": higher_is_better},
        {"phase": "model", "metric": "params_total", "value": 492928.0, "unit": "count"},
        {"phase": "model", "metric": "params_trainable", "value": trainable, "unit": "count"},
        {"phase": "model", "metric": "storage_bytes", "value": 507392.0, "unit": "bytes"},
    ]
    for phase, share in (("load", 0.9), ("eval", 1.0)):
        rows.append({"phase": phase, "metric": "host_rss_peak", "stat": "max",
                     "value": host * share, "unit": "bytes"})
        rows.append({"phase": phase, "metric": "seconds", "value": 0.5, "unit": "s"})
        rows.append({"phase": phase, "metric": "cuda_allocated_peak", "stat": "max",
                     "value": vram * share if gpu else None, "unit": "bytes",
                     "reason": None if gpu else "device is cpu: no CUDA allocator"})
    if latency is not None:
        rows += [
            {"phase": "forward", "metric": "latency", "stat": "median", "value": latency,
             "unit": "ms"},
            {"phase": "forward", "metric": "latency", "stat": "iqr", "value": latency / 10,
             "unit": "ms"},
            {"phase": "forward", "metric": "latency", "stat": "n", "value": 12.0,
             "unit": "count"},
            {"phase": "forward", "metric": "throughput", "stat": "median",
             "value": 1024 / (latency / 1000), "unit": "token/s"},
            {"phase": "forward", "metric": "energy_per_item",
             "value": latency * 0.3 if gpu else None, "unit": "J/token",
             "reason": None if gpu else "device is cpu: NVML measures CUDA devices only"},
        ]
    return rows


def build_fixture_store(path: str | Path) -> dict[str, Any]:
    """Write the fixture store at ``path``; returns the run keys by label and by group.

    Labels are ``suite/hardware/model/method/params/seed`` with short names (``alpha``,
    ``cpu`` or ``gpu``), e.g. ``alpha/cpu/a/dense/-/0``.
    """
    store = Store(path)
    store.record_columns("perplexity", PerplexityScenario.columns.to_json())
    alpha = store.record_suite(ALPHA, "suites/alpha.yaml", "Compression on tiny models.",
                               "name: alpha\n# the alpha suite\n")
    beta = store.record_suite(
        BETA, "suites/beta.yaml", "Adapters <em>compared</em> & ranked.",
        "name: beta & <gamma>\ndescription: <b>not bold</b>\n")
    envs = {hw: store.record_environment(env) for hw, env in _ENVIRONMENTS.items()}
    keys: dict[str, str] = {}
    groups: dict[str, list[str]] = {CPU: [], GPU: []}
    clock = 1_700_000_000.0

    def add(suite_id: str, suite: str, hw: str, model: str, method: str,
            params: dict[str, Any], seed: int, status: str, *, quality: float | None = None,
            latency: float | None = None, vram: float | None = None, host: float = 400 * MiB,
            task: str = "stdlib-text", metric: str = "perplexity",
            higher_is_better: bool = False, trainable: float = 492928.0) -> None:
        nonlocal clock
        short = "cpu" if hw == CPU else "gpu"
        shown = ",".join(f"{k}={v}" for k, v in sorted(params.items())) or "-"
        label = f"{suite}/{short}/{model}/{method}/{shown}/{seed}"
        key = run_key(label)
        keys[label] = key
        groups[hw].append(key)
        run = {"run_key": key, "scenario": "perplexity", "model": f"builtin:tiny-{model}",
               "model_config": {"ref": f"builtin:tiny-{model}"}, "task": task,
               "task_params": {"seq_len": 128}, "method": method, "method_version": "1",
               "method_plugin": "fixture 0.1", "params": params, "seed": seed,
               "device": "cpu" if hw == CPU else "cuda:0", "hardware": hw,
               "config": {"method": {"name": method, "params": params}, "seed": seed,
                          "hardware": hw}, "harness_version": "0.1.0"}
        measured = status in ("ok", "invalid")
        error, traceback = _ERRORS.get(status, (None, None))
        result = {
            "status": status, "error": error, "traceback": traceback, "env_id": envs[hw],
            "started_at": clock, "finished_at": clock + 5, "wall_s": 5.0,
            "metrics": _metrics(hw, (metric, quality, higher_is_better), latency, vram, host,
                                trainable) if measured else [],
            "samples": [{"phase": "forward", "metric": "latency", "unit": "ms",
                         "values": [latency * (1 + 0.05 * ((i * 7) % 5 - 2))
                                    for i in range(12)]}]
            if measured and latency is not None else [],
        }
        clock += 10
        store.commit_run(suite_id, run, result)

    a = (alpha, "alpha")
    for seed, ppl in enumerate(DENSE_CPU_PPL):
        add(*a, CPU, "a", "dense", {}, seed, "ok", quality=ppl, latency=50.0 + 2 * seed)
    add(*a, CPU, "a", "rtn", {"bits": 4}, 0, "ok", quality=12.0, latency=30.0)
    add(*a, CPU, "a", "rtn", {"bits": 4}, 1, "ok", quality=12.5, latency=31.0)
    add(*a, CPU, "a", "rtn", {"bits": 4}, 2, "failed")
    # The fastest figure anywhere in the store, on CPU: it must not rank in the GPU table.
    add(*a, CPU, "a", XSS, {"note": "<b>bold</b>"}, 0, "ok", quality=20.0, latency=0.1)
    # Better perplexity than anyone, but never valid: shown, never marked best.
    add(*a, CPU, "a", "slowpoke", {}, 0, "invalid", quality=5.0, latency=500.0)
    add(*a, CPU, "a", "slowpoke", {}, 1, "invalid", quality=5.5, latency=520.0)
    add(*a, CPU, "a", "crashy", {}, 0, "crashed")
    add(*a, CPU, "a", "crashy", {}, 1, "timeout")
    add(*a, CPU, "b", "dense", {}, 0, "ok", quality=9.0, latency=80.0, host=900 * MiB)

    for seed, ppl in enumerate((10.1, 11.1, 12.9)):
        add(*a, GPU, "a", "dense", {}, seed, "ok", quality=ppl, latency=2.0 + 0.1 * seed,
            vram=1024 * MiB)
    add(*a, GPU, "a", "rtn", {"bits": 4}, 0, "ok", quality=12.0, latency=1.5, vram=600 * MiB)
    add(*a, GPU, "a", "rtn", {"bits": 4}, 1, "ok", quality=12.2, latency=1.6, vram=600 * MiB)
    add(*a, GPU, "a", XSS, {"note": "<b>bold</b>"}, 0, "ok", quality=20.0, latency=1.0,
        vram=300 * MiB)
    add(*a, GPU, "a", "bigmem", {}, 0, "oom")
    add(*a, CPU, "a", "offload", {}, 0, "unsupported")

    b = (beta, "beta")
    for seed, accuracy in enumerate((0.90, 0.92)):
        add(*b, CPU, "a", "lora", {"r": 8}, seed, "ok", quality=accuracy, task="digits",
            metric="accuracy", higher_is_better=True, trainable=12345.0)
    add(*b, CPU, "a", "full", {}, 0, "ok", quality=0.95, task="digits", metric="accuracy",
        higher_is_better=True, trainable=492928.0)
    add(*b, CPU, "a", "lora", {"r": 64}, 0, "invalid", quality=0.97, task="digits",
        metric="accuracy", higher_is_better=True, trainable=98765.0)
    return {"keys": keys, "groups": groups}
