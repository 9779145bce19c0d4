"""SpeCache's per-layer decode hot path: low-bit K/V kernels against a 16-bit cache.

Llama-3-8B shape (32 query heads over 8 KV heads, head dim 128), batch 1, SpeCache's
two-token step (real + speculative row: 8 query rows per KV head), group size 64, bf16 on
CUDA. Per context length and bit width it times, with CUDA events on a cold L2 (the other
layers evict a layer's cache between steps):

* scoring ``q · Kᵀ`` and aggregating ``P · V``: (a) dense bf16 — the grouped matmul over
  the 16-bit cache, without ``repeat_kv``'s copy (the best case for bf16); (b) the PyTorch
  reference (unpack + dequantize + matmul); (c) the fused Triton kernel, checked against (b);
* (d) the prefetch: top-64 rows of 8 KV heads gathered from the token-major pinned host store
  into pinned staging (``index_select``) and copied to the device (``non_blocking``).

Targets (from the issue): fused 1-bit scoring must beat bf16 scoring, as it reads ~16x fewer
bytes. For reference, on an H100: eager unpack + score 2.2 ms/layer at 128k tokens (0.64 ms
at 32k) against 0.27 ms for bf16 scoring; fetching the top-64 keys of 8 heads 0.11 ms.

    python benchmarks/kvcache_kernels.py [--lengths 8192 32768 131072] [--bits 1 2]
        [--warmup 10] [--repeats 50] [--json PATH]
    python benchmarks/kvcache_kernels.py --cpu-smoke   # no GPU: (a), (b) at 1024 tokens, fp32
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness_plugins.kvcache.lowbit_kernels import (
    aggregate_values_reference,
    score_keys_reference,
    triton_available,
)
from harness_plugins.kvcache.quant import quantize_keys, quantize_values

QUERY_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
#: Query rows per KV head: the GQA group times SpeCache's two rows (real + speculative).
ROWS = QUERY_HEADS // KV_HEADS * 2
GROUP_SIZE = 64
TOPK = 64
#: Zeroed between repeats to evict the operands from L2 (50 MB on an H100).
FLUSH_BYTES = 256 * 2**20


class Timer:
    """Median and IQR (ms) of ``repeats`` calls after ``warmup``: CUDA events, else wall clock."""

    def __init__(self, device: torch.device, warmup: int, repeats: int) -> None:
        self.device, self.warmup, self.repeats = device, warmup, repeats
        self.flush = (
            torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
            if device.type == "cuda"
            else None
        )

    def __call__(self, fn: Callable[[], Any], host_work: bool = False) -> tuple[float, float]:
        """``host_work``: the call does host-side work too, so the clock starts on the host."""
        for _ in range(self.warmup):
            fn()
        if self.flush is None:
            samples = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                fn()
                samples.append(1e3 * (time.perf_counter() - start))
        else:
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                for _ in range(self.repeats)
            ]
            for start, end in events:
                self.flush.zero_()
                if host_work:
                    torch.cuda.synchronize(self.device)
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize(self.device)
            samples = [start.elapsed_time(end) for start, end in events]
        q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        return median, q3 - q1


def dense_scores(q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """SpeCache's 16-bit path: float32 ``q [H, M, D] · keys [H, N, D]ᵀ``, ``[H, M, N]``."""
    return torch.matmul(q, keys.transpose(-1, -2)).float()


def dense_values(probs: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """SpeCache's 16-bit path: float32 ``probs [H, M, N] · values [H, N, D]``."""
    return torch.matmul(probs.to(values.dtype), values).float()


def fetch(
    index: torch.Tensor,
    stores: list[torch.Tensor],
    staging: list[torch.Tensor],
    buffers: list[torch.Tensor],
) -> None:
    """Rows ``index [H, k]`` of token-major host stores ``[T, H, D]`` into device buffers
    ``[H * k, D]``, head-major, the way SpeCache's prefetch job does it."""
    heads = torch.arange(KV_HEADS, dtype=index.dtype).unsqueeze(1)
    flat = (index * KV_HEADS + heads).reshape(-1)
    for store, stage in zip(stores, staging, strict=True):
        torch.index_select(store.view(-1, HEAD_DIM), 0, flat, out=stage)
    for stage, buffer in zip(staging, buffers, strict=True):
        buffer.copy_(stage, non_blocking=True)


def bench_length(
    tokens: int, bits_list: list[int], dtype: torch.dtype, timer: Timer, fused: bool
) -> list[dict[str, Any]]:
    """Result rows for one context length."""
    device = timer.device
    gen = torch.Generator(device).manual_seed(tokens)
    q = torch.randn(KV_HEADS, ROWS, HEAD_DIM, generator=gen, device=device).to(dtype)
    keys = torch.randn(KV_HEADS, tokens, HEAD_DIM, generator=gen, device=device).to(dtype)
    values = torch.randn(KV_HEADS, tokens, HEAD_DIM, generator=gen, device=device).to(dtype)
    logits = torch.randn(KV_HEADS, ROWS, tokens, generator=gen, device=device)
    probs = torch.softmax(logits, dim=-1)

    def row(
        op: str, impl: str, bits: int | None, fn: Callable[[], Any], **extra: Any
    ) -> dict[str, Any]:
        median, iqr = timer(fn, host_work=op.startswith("fetch"))
        return {
            "tokens": tokens,
            "op": op,
            "impl": impl,
            "bits": bits,
            "median_ms": median,
            "iqr_ms": iqr,
            **extra,
        }

    fused_ops: dict[str, Callable[..., torch.Tensor]] = {}
    if fused:  # imports Triton
        from harness_plugins.kvcache import lowbit_triton

        fused_ops = {"score": lowbit_triton.score_keys, "values": lowbit_triton.aggregate_values}
    results = [
        row("score", "dense", None, functools.partial(dense_scores, q, keys)),
        row("values", "dense", None, functools.partial(dense_values, probs, values)),
    ]
    for bits in bits_list:
        packed_k = quantize_keys(keys, bits, GROUP_SIZE, "quartile")
        packed_v = quantize_values(values, bits, GROUP_SIZE, "quartile")
        ops = {
            "score": (score_keys_reference, (q, packed_k)),
            "values": (aggregate_values_reference, (probs, packed_v, dtype)),
        }
        for op, (reference, args) in ops.items():
            results.append(row(op, "reference", bits, functools.partial(reference, *args)))
            if op in fused_ops:
                diff = (fused_ops[op](*args) - reference(*args)).abs().max().item()
                kernel = functools.partial(fused_ops[op], *args)
                results.append(row(op, "fused", bits, kernel, max_abs_diff=diff))

    if device.type == "cuda":
        host = [
            torch.empty(tokens, KV_HEADS, HEAD_DIM, dtype=dtype, pin_memory=True) for _ in range(2)
        ]
        host[0].copy_(keys.transpose(0, 1))
        host[1].copy_(values.transpose(0, 1))
        cpu_gen = torch.Generator().manual_seed(tokens)
        index = torch.stack(
            [torch.randperm(tokens, generator=cpu_gen)[:TOPK] for _ in range(KV_HEADS)]
        ).pin_memory()
        staging = [
            torch.empty(KV_HEADS * TOPK, HEAD_DIM, dtype=dtype, pin_memory=True) for _ in range(2)
        ]
        buffers = [
            torch.empty(KV_HEADS * TOPK, HEAD_DIM, dtype=dtype, device=device) for _ in range(2)
        ]
        for name, n in (("K", 1), ("K+V", 2)):
            job = functools.partial(fetch, index, host[:n], staging[:n], buffers[:n])
            results.append(row(f"fetch top-{TOPK}", name, None, job))
    return results


def add_speedups(results: list[dict[str, Any]]) -> None:
    """``vs_dense``: the dense median of the same op and length over this row's median."""
    dense = {(r["tokens"], r["op"]): r["median_ms"] for r in results if r["impl"] == "dense"}
    for r in results:
        base = dense.get((r["tokens"], r["op"]))
        r["vs_dense"] = base / r["median_ms"] if base is not None else None


def print_table(results: list[dict[str, Any]]) -> None:
    """One line per row; ``vs dense`` > 1 is faster than the 16-bit cache."""
    print(
        f"{'tokens':>7}  {'op':<12} {'impl':<9} {'bits':>4}  {'median ms':>9}  {'IQR ms':>7}  "
        f"{'vs dense':>8}  {'max|Δ| vs ref':>13}"
    )
    for r in results:
        bits = "-" if r["bits"] is None else str(r["bits"])
        speed = "-" if r["vs_dense"] is None else f"{r['vs_dense']:.2f}x"
        diff = f"{r['max_abs_diff']:.2e}" if "max_abs_diff" in r else "-"
        print(
            f"{r['tokens']:>7}  {r['op']:<12} {r['impl']:<9} {bits:>4}  {r['median_ms']:>9.4f}  "
            f"{r['iqr_ms']:>7.4f}  {speed:>8}  {diff:>13}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="context lengths (default: 8192 32768 131072; smoke: 1024)",
    )
    parser.add_argument("--bits", type=int, nargs="+", choices=(1, 2), default=[1, 2])
    parser.add_argument("--warmup", type=int, default=None, help="default: 10 (smoke: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="default: 50 (smoke: 5)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--cpu-smoke",
        action="store_true",
        help="no GPU: (a) and (b) only, in float32, to check the script runs",
    )
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else 1 if args.cpu_smoke else 10
    repeats = args.repeats if args.repeats is not None else 5 if args.cpu_smoke else 50
    if repeats < 2 or warmup < 0:
        parser.error("need --repeats >= 2 and --warmup >= 0")

    if args.cpu_smoke:
        device, dtype, fused = torch.device("cpu"), torch.float32, False
        lengths = args.lengths or [1024]
    elif not torch.cuda.is_available():
        print(
            "no CUDA device: this benchmark times GPU kernels (use --cpu-smoke to check "
            "that the script runs)",
            file=sys.stderr,
        )
        sys.exit(2)
    elif not triton_available():
        print("Triton is not installed: the fused kernels need it", file=sys.stderr)
        sys.exit(2)
    else:
        device, dtype, fused = torch.device("cuda"), torch.bfloat16, True
        lengths = args.lengths or [8192, 32768, 131072]

    name = torch.cuda.get_device_name(device) if fused else "cpu"
    print(
        f"{name}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}: "
        f"{QUERY_HEADS} query / {KV_HEADS} KV heads, head dim {HEAD_DIM}, {ROWS} query rows "
        f"per KV head, group {GROUP_SIZE}; median of {repeats} after {warmup} "
        "warm-up calls"
    )
    timer = Timer(device, warmup, repeats)
    results = []
    with torch.inference_mode():
        for tokens in lengths:
            results += bench_length(tokens, args.bits, dtype, timer, fused)
    add_speedups(results)
    print_table(results)

    target = {
        r["tokens"]: r["vs_dense"] > 1
        for r in results
        if (r["op"], r["impl"], r["bits"]) == ("score", "fused", 1)
    }
    if target:
        verdict = ", ".join(f"{t}: {'met' if ok else 'MISSED'}" for t, ok in target.items())
        print(f"target, fused 1-bit scoring faster than bf16 scoring: {verdict}")
    if args.json:
        report = {
            "device": name,
            "torch": torch.__version__,
            "dtype": str(dtype).removeprefix("torch."),
            "shape": {
                "query_heads": QUERY_HEADS,
                "kv_heads": KV_HEADS,
                "head_dim": HEAD_DIM,
                "rows_per_kv_head": ROWS,
                "group_size": GROUP_SIZE,
                "topk": TOPK,
            },
            "warmup": warmup,
            "repeats": repeats,
            "results": results,
            "target_fused_1bit_score_beats_dense": {str(t): ok for t, ok in target.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
