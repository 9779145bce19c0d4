"""A fixed store with runs of every built-in scenario, for the report's golden test.

Each scenario's rows carry the metric names, phases, stats and units its scenario really
records (perplexity: storage and compression; generate: KV bytes and per-depth exact match;
adapt: accuracy at eval and select, storage, train steps; continual: the accuracy matrix and
the replay buffer), so the site built from it exercises every declared column and plot.
Figures are made up but deterministic: the same store, byte for byte in what the report
reads, on every call.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from harness.store import Store

CPU = "cpu: AMD EPYC x2"
GPU = "gpu: NVIDIA H100 80GB HBM3"
MiB = 2**20

_ENVIRONMENTS = {
    CPU: {"hostname": "cpu-box", "platform": "Linux", "cpu": "AMD EPYC", "cpu_count": 2,
          "torch": "2.13.0+cpu", "harness_version": "0.1.0"},
    GPU: {"hostname": "gpu-box", "platform": "Linux", "cpu": "Intel Xeon", "cpu_count": 16,
          "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1, "torch": "2.13.0+cu124",
          "harness_version": "0.1.0"},
}


def _key(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def _row(phase: str, metric: str, value: float | None, unit: str, stat: str = "value",
         reason: str | None = None, hib: bool | None = None) -> dict[str, Any]:
    return {"phase": phase, "metric": metric, "value": value, "unit": unit, "stat": stat,
            "reason": reason, "higher_is_better": hib}


def _probes(hw: str, phases: tuple[str, ...], host: float, vram: float) -> list[dict[str, Any]]:
    gpu = hw == GPU
    rows = []
    for i, phase in enumerate(phases):
        share = 1.0 - 0.1 * i
        rows.append(_row(phase, "host_rss_peak", host * share, "bytes", "max"))
        rows.append(_row(phase, "cuda_allocated_peak", vram * share if gpu else None, "bytes",
                         "max", None if gpu else "device is cpu: no CUDA allocator"))
        rows.append(_row(phase, "energy", 12.0 * share if gpu else None, "J", "value",
                         None if gpu else "device is cpu: NVML measures CUDA devices only"))
    return rows


def _latency(phase: str, median: float, items: str | None, per_call: float = 1.0
             ) -> list[dict[str, Any]]:
    rows = [_row(phase, "latency", median, "ms", "median"),
            _row(phase, "latency", median / 8, "ms", "iqr"),
            _row(phase, "latency", 20.0, "count", "n")]
    if items:
        rows.append(_row(phase, "throughput", per_call / (median / 1e3), f"{items}/s", "median"))
    return rows


def _perplexity(hw: str, seed: int, method: str, scale: float) -> list[dict[str, Any]]:
    dense = 507392.0
    stored = dense / scale
    return [
        _row("eval", "perplexity", 10.0 + scale + 0.3 * seed, "", hib=False),
        _row("eval", "bits_per_byte", 1.1 + 0.05 * scale + 0.01 * seed, "bits/byte", hib=False),
        _row("model", "params_total", 492928.0, "count"),
        _row("model", "params_trainable", 492928.0, "count"),
        _row("model", "storage_bytes", stored, "bytes"),
        _row("model", "compression_ratio", dense / stored, "x"),
        *_latency("forward", 40.0 / scale + seed, "token", 1024),
        _row("forward", "energy_per_item", 0.01 / scale if hw == GPU else None, "J/token",
             reason=None if hw == GPU else "no energy reading for this phase (see 'energy')"),
        *_probes(hw, ("load", "apply", "eval", "forward"), 300 * MiB, 200 * MiB),
    ]


def _generate(hw: str, seed: int, method: str, keep: float) -> list[dict[str, Any]]:
    full = 4 * MiB
    rows = [
        _row("eval", "exact_match", min(1.0, 0.5 + keep / 2 - 0.05 * seed), "", hib=True),
        _row("eval", "episodes", 12.0, "count"),
        *(_row("eval", "exact_match", min(1.0, keep + 0.1 * d), "", f"depth_{d:02d}")
          for d in range(3)),
        *_latency("prefill", 30.0 * keep + seed, "token", 1024),
        *_latency("first_token", 4.0, None),
        *_latency("decode", 2.0 + keep + 0.1 * seed, "token"),
        _row("kv", "resident_bytes", full * keep, "bytes"),
        _row("kv", "host_bytes", full * (1 - keep), "bytes"),
        _row("kv", "full_cache_bytes", full, "bytes"),
        _row("kv", "resident_ratio", keep, "x"),
        _row("decode", "energy_per_item", 0.2 * keep if hw == GPU else None, "J/token",
             reason=None if hw == GPU else "no energy reading for this phase (see 'energy')"),
        *_probes(hw, ("load", "prefill", "decode"), 500 * MiB, 900 * MiB * keep),
    ]
    if method == "specache":
        rows.append(_row("decode", "hit_rate", 0.9, ""))
    return rows


def _adapt(hw: str, seed: int, method: str, trainable: float) -> list[dict[str, Any]]:
    accuracy = 60.0 + trainable ** 0.25 - seed
    return [
        _row("select", "accuracy", accuracy + 1, "", hib=True),
        _row("eval", "accuracy", accuracy, "", hib=True),
        _row("model", "params_total", 468584.0 + trainable, "count"),
        _row("model", "params_trainable", trainable, "count"),
        _row("model", "head_params", 776.0, "count"),
        _row("model", "storage_bytes", 4 * trainable + 64, "bytes"),
        _row("model", "payload_bytes", 4 * trainable, "bytes"),
        *_latency("train", 40.0 + trainable / 1e4, "image", 64),
        *_latency("infer", 8.0, "image", 256),
        *_latency("single", 2.5, None),
        *_probes(hw, ("load", "train", "infer"), 700 * MiB, 1500 * MiB),
    ]


def _continual(hw: str, seed: int, method: str, buffer: int) -> list[dict[str, Any]]:
    final = 25.0 + 60 * (1 - 1 / (1 + buffer / 20)) - seed
    rows = [
        _row("eval", "accuracy", final, "%", hib=True),
        _row("eval", "avg_incremental_accuracy", final + 10, "%", hib=True),
        _row("eval", "forgetting", 80.0 - final, "%", hib=False),
        _row("eval", "backward_transfer", final - 80.0, "%", hib=True),
        _row("eval", "within_task_forgetting", 1.0, "%", hib=False),
        _row("eval", "recency_bias", 30.0 - buffer / 10, "%", hib=False),
        _row("eval", "recency_bias", 20.0, "%", "ideal"),
        _row("train", "buffer_bytes", buffer * 256.0, "bytes"),
        _row("model", "params_trainable", 650.0, "count"),
        _row("train", "seconds", 3.0 + buffer / 100, "s"),
        *_probes(hw, ("features", "train", "eval"), 350 * MiB, 50 * MiB),
    ]
    for i in range(2):
        for j in range(i + 1):
            rows.append(_row("eval", "accuracy_matrix", 90.0 - 10 * (i - j), "%",
                             f"after_{i}_task_{j}"))
    return rows


#: (suite, scenario, task, task params, hardware groups, methods as (name, params, arg), seeds)
SUITES = (
    ("compress", "perplexity", "stdlib-text", {"seq_len": 128}, (CPU, GPU),
     (("dense", {}, 1.0), ("rtn", {"bits": 4}, 7.0), ("rtn", {"bits": 8}, 3.9),
      ("magnitude", {"sparsity": 0.5}, 1.8)), (0, 1, 2), _perplexity),
    ("kv", "generate", "needle", {"context_len": 512}, (CPU,),
     (("full", {}, 1.0), ("kivi", {"bits": 2}, 0.2), ("streaming", {"window": 64}, 0.15),
      ("specache", {"bits": 1}, 0.1)), (0, 1), _generate),
    ("kv", "generate", "needle", {"context_len": 1024}, (CPU,),
     (("full", {}, 1.0), ("kivi", {"bits": 2}, 0.2)), (0, 1), _generate),
    ("peft", "adapt", "digits-shift", {}, (CPU,),
     (("linear", {}, 776.0), ("lora", {"r": 8}, 13064.0), ("full-finetune", {}, 468584.0),
      ("bi-lora", {"bits": 1}, 13056.0)), (0, 1, 2), _adapt),
    ("replay", "continual", "split-digits", {"tasks": 5}, (CPU,),
     (("finetune", {}, 0), ("er", {"buffer": 20}, 20), ("er", {"buffer": 100}, 100),
      ("taer", {"buffer": 20}, 20)), (0, 1, 2), _continual),
)


def build_scenario_store(path: str | Path) -> list[str]:
    """Write the store at ``path``; returns every run key written."""
    store = Store(path)
    envs = {hw: store.record_environment(env) for hw, env in _ENVIRONMENTS.items()}
    suite_ids: dict[str, str] = {}
    keys: list[str] = []
    clock = 1_700_000_000.0
    for suite, scenario, task, task_params, groups, methods, seeds, rows in SUITES:
        if suite not in suite_ids:
            suite_ids[suite] = store.record_suite(suite, f"suites/{suite}.yaml", "",
                                                  f"name: {suite}\nscenario: {scenario}\n")
        for hw in groups:
            for method, params, arg in methods:
                for seed in seeds:
                    label = f"{suite}/{task}/{task_params}/{hw}/{method}/{params}/{seed}"
                    key = _key(label)
                    run = {"run_key": key, "scenario": scenario, "model": "builtin:tiny",
                           "model_config": {"ref": "builtin:tiny"}, "task": task,
                           "task_params": task_params, "method": method,
                           "method_version": "1", "method_plugin": "fixture 0.1",
                           "params": params, "seed": seed, "device": "cpu", "hardware": hw,
                           "config": {"label": label}, "harness_version": "0.1.0"}
                    result = {"status": "ok", "env_id": envs[hw], "started_at": clock,
                              "finished_at": clock + 5, "wall_s": 5.0,
                              "metrics": rows(hw, seed, method, arg), "samples": []}
                    clock += 10
                    store.commit_run(suite_ids[suite], run, result)
                    keys.append(key)
    return keys


def leaderboard_snapshot(site: Path) -> dict[str, Any]:
    """What a leaderboard page shows, per page: its table, its plots and its JSON download.

    Timestamps are the only text that changes between two builds of one store; they live
    outside these parts.
    """
    snapshot: dict[str, Any] = {}
    for page in sorted(site.glob("*/*.html")):
        if page.parent.name == "runs":
            continue
        html = page.read_text(encoding="utf-8")
        table = html[html.index('<table class="leaderboard">'):html.index("</table>") + 8]
        plots = html[html.index("<h2>Quality against cost</h2>"):
                     html.index('<details class="suite-text">')]
        legend = html[html.index('<div class="legend">'):html.index("<h2>Quality against cost")]
        download = (page.with_suffix(".json")).read_text(encoding="utf-8")
        snapshot[str(page.relative_to(site))] = {
            "table": table, "legend": legend, "plots": plots, "json": download,
        }
    return snapshot
