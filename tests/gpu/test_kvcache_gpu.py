"""The KV-cache family on a real GPU: SpeCache's fused Triton kernels, pinned host memory and
prefetch stream, and transformers' offloaded cache.

Skipped without CUDA (the kernel checks also without Triton). The CPU tests check the
algorithm; these check what only exists on CUDA: the kernels' compiled code, the worker
thread + side-stream prefetch (same tokens as fetching serially), pinned host buffers.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest

from harness.api import Recorder

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="triton is not installed"
)


def llama(dtype: Any, head_dim: int = 16, kv_heads: int = 2, heads: int = 4) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=head_dim * heads, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=8192,
    )  # fmt: skip
    return LlamaForCausalLM(config).to("cuda", dtype).eval()


def run(model: Any, method: Any, params: dict[str, Any], context: Any, question: Any, n: int):
    ctx = SimpleNamespace(device="cuda", recorder=Recorder())
    cache = method.make_cache(model, params, ctx)
    decoder = method.make_decoder(model, cache, params, ctx)
    decoder.prefill(context)
    tokens = decoder.decode(question, n, lambda: None)
    torch.cuda.synchronize()
    return tokens, cache


def prompt(length: int, seed: int = 1) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (1, length + 2), generator=generator).cuda()
    return ids[:, :length], ids[:, length:]


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_cuda_kernels_match_the_reference(dtype, bits):
    from harness_plugins.kvcache import lowbit_triton
    from harness_plugins.kvcache.lowbit_kernels import (
        aggregate_values_reference,
        score_keys_reference,
    )
    from harness_plugins.kvcache.quant import quantize_keys, quantize_values

    dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    heads, tokens, dim, rows, group = 8, 10_048, 128, 8, 64
    keys = quantize_keys(torch.randn(heads, tokens, dim, device="cuda"), bits, group, "quartile")
    values = quantize_values(torch.randn(heads, tokens, dim, device="cuda"), bits, group)
    query = torch.randn(heads, rows, dim, device="cuda").to(dtype)
    probs = torch.softmax(torch.randn(heads, rows, tokens, device="cuda"), dim=-1)
    torch.testing.assert_close(
        lowbit_triton.score_keys(query, keys),
        score_keys_reference(query, keys),
        rtol=1e-4,
        atol=1e-3,
    )
    torch.testing.assert_close(
        lowbit_triton.aggregate_values(probs, values, dtype),
        aggregate_values_reference(probs, values, dtype),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("bits", [16, 1])
def test_topk_covering_the_context_reproduces_the_full_cache(bits):
    from harness_plugins.kvcache.specache import SpeCache
    from transformers import DynamicCache

    from harness.scenarios.kv_protocol import GreedyDecoder

    model = llama(torch.float32)
    for seed in range(3):
        context, question = prompt(200, seed)
        full = GreedyDecoder(model, DynamicCache(config=model.config))
        full.prefill(context)
        expected = full.decode(question, 12, lambda: None)
        params = {"bits": bits, "topk": 1024, "group_size": 16, "residual": 8}
        tokens, _ = run(model, SpeCache(), params, context, question, 12)
        assert tokens == expected


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_stream_prefetch_gives_the_serial_fetch_tokens(dtype):
    """The worker-thread + side-stream prefetch fetches the same rows as fetching on the
    compute stream at the start of the step: same tokens, same counters. At a realistic head
    size and a context of several thousand tokens, so the copies take real time."""
    from harness_plugins.kvcache.specache import SpeCache

    model = llama(getattr(torch, dtype), head_dim=128, kv_heads=2, heads=8)
    context, question = prompt(6000)
    params = {"bits": 1, "topk": 64, "group_size": 64, "residual": 64}
    overlapped, cache = run(model, SpeCache(), {**params, "prefetch": True}, context, question, 40)
    serial, serial_cache = run(
        model, SpeCache(), {**params, "prefetch": False}, context, question, 40
    )
    assert overlapped == serial
    assert cache.counters() == serial_cache.counters()


def test_host_store_and_staging_are_pinned_and_buffers_on_the_device():
    from harness_plugins.kvcache.specache import SpeCache

    model = llama(torch.float16)
    context, question = prompt(300)
    params = {"topk": 16, "group_size": 32, "residual": 16}
    _, cache = run(model, SpeCache(), params, context, question, 4)
    for layer in cache.layers:
        assert layer.host.keys.is_pinned() and layer.host.values.is_pinned()
        assert all(t.is_pinned() for t in layer._staging)
        assert layer.keys.is_cuda and layer.lowbit.keys().codes.is_cuda
        assert layer.fetched_index.is_cuda and all(t.is_cuda for t in layer._buffers)
    assert cache.host_bytes() > 0 and cache.resident_bytes() < cache.host_bytes()


def test_offload_moves_layers_and_counts_the_copies_back() -> None:
    from harness_plugins.kvcache.offload import Offload
    from transformers import DynamicCache

    from harness.scenarios.kv_protocol import GreedyDecoder, cache_counters

    model = llama(torch.float32)
    ctx = SimpleNamespace(device="cuda", recorder=Recorder())
    context, question = prompt(40)
    cache = Offload().make_cache(model, {}, ctx)
    decoder = GreedyDecoder(model, cache)
    decoder.prefill(context)
    offloaded = decoder.decode(question, 5, lambda: None)
    full = GreedyDecoder(model, DynamicCache(config=model.config))
    full.prefill(context)
    assert offloaded == full.decode(question, 5, lambda: None)
    torch.cuda.synchronize()
    total = 2 * 2 * 2 * 46 * 16 * 4  # layers, K/V, KV heads, tokens, head dim, float32
    assert cache.resident_bytes() + cache.host_bytes() == total
    assert cache.host_bytes() > 0
    # Every decode step brings each offloaded layer back.
    assert cache_counters(cache)["h2d_bytes"][0] >= 5 * total / 2
