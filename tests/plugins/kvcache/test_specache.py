"""SpeCache on a small random-init GQA Llama, on CPU: exactness, storage, selection, counters."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pytest
import torch
from harness_plugins.kvcache.quant import dequantize, quantize_keys
from harness_plugins.kvcache.specache import SpeCache, SpeCacheParams, select_topk
from pydantic import ValidationError
from transformers import DynamicCache

from harness.scenarios.kv_protocol import Decoder, GreedyDecoder

# Small groups and window, so that a 100-token context is mostly quantized.
SMALL = {"group_size": 8, "residual": 4}


def prompts(count: int, context: int = 100) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Seeded random ``(context, question)`` pairs; questions of 1 to ``count`` tokens."""
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randint(0, 128, (1, context), generator=generator),
            torch.randint(0, 128, (1, 1 + i), generator=generator),
        )
        for i in range(count)
    ]


def full_tokens(model: Any, context: torch.Tensor, question: torch.Tensor, n: int) -> list[int]:
    decoder = GreedyDecoder(model, DynamicCache(config=model.config))
    decoder.prefill(context)
    return decoder.decode(question, n, lambda: None)


def specache(
    model: Any,
    ctx: Any,
    context: torch.Tensor,
    question: torch.Tensor,
    n: int,
    params: Mapping[str, Any],
) -> tuple[list[int], Any]:
    method = SpeCache()
    cache = method.make_cache(model, params, ctx)
    decoder = method.make_decoder(model, cache, params, ctx)
    assert isinstance(decoder, Decoder)
    decoder.prefill(context)
    return decoder.decode(question, n, lambda: None), cache


@pytest.mark.parametrize("bits", [16, 1])
def test_topk_covering_the_context_reproduces_the_full_cache(tiny_llama, ctx, bits):
    """Every quantized row replaced by its original: greedy tokens equal the full cache's."""
    params = {"bits": bits, "topk": 512, **SMALL}
    for context, question in prompts(3):
        expected = full_tokens(tiny_llama, context, question, 12)
        tokens, cache = specache(tiny_llama, ctx, context, question, 12, params)
        assert tokens == expected
        assert cache.layers[0].quantized > 80  # the check is about the low-bit path


def test_topk_covering_the_context_reproduces_the_full_cache_on_the_built_in_model(ctx):
    """The same on the trained retrieval model (its shipped weights), on needle episodes: the
    tokens are the real answers' digits, not a random model's arbitrary ones."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.models.tiny_llama_retrieval import SHIPPED_DIR
    from harness.scenarios.generate import Needle

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    params = Needle.params(context_len=256, depth_bins=4, per_bin=1)
    for episode in Needle().data(params, 0, tokenizer=tokenizer, config=model.config):
        context = torch.tensor([episode.context_ids])
        question = torch.tensor([episode.question_ids])
        expected = full_tokens(model, context, question, 5)
        for bits in (16, 1):
            tokens, _ = specache(model, ctx, context, question, 5, {"bits": bits, "topk": 512})
            assert tokens == expected


def test_context_inside_the_window_is_exact(tiny_llama, ctx):
    """Nothing quantized yet (default window of 64 tokens): nothing to fetch, nothing lost."""
    context, question = prompts(1, context=20)[0]
    tokens, cache = specache(tiny_llama, ctx, context, question, 30, {})
    assert tokens == full_tokens(tiny_llama, context, question, 30)
    assert cache.layers[0].quantized == 0 and cache.counters()["h2d_bytes"] == (0.0, "bytes")


def test_serial_ablation_is_exact_too_and_counts_no_hits(tiny_llama, ctx):
    context, question = prompts(2)[1]
    params = {"bits": 16, "topk": 512, "speculative": False, **SMALL}
    tokens, cache = specache(tiny_llama, ctx, context, question, 8, params)
    assert tokens == full_tokens(tiny_llama, context, question, 8)
    assert "topk_hits" not in cache.counters()


def test_prefetch_on_and_off_give_the_same_tokens(tiny_llama, ctx):
    for context, question in prompts(2):
        runs = [
            specache(tiny_llama, ctx, context, question, 10, {"topk": 8, "prefetch": p, **SMALL})
            for p in (True, False)
        ]
        assert runs[0][0] == runs[1][0]
        assert runs[0][1].counters() == runs[1][1].counters()


def test_only_real_tokens_are_stored(tiny_llama, ctx):
    """The question once, then one token per step: the pre-decoding pass and the speculative
    rows leave no trace in the sequence length or the host store."""
    context, question = prompts(3)[2]  # a 3-token question
    method = SpeCache()
    params = {"topk": 8, **SMALL}
    cache = method.make_cache(tiny_llama, params, ctx)
    decoder = method.make_decoder(tiny_llama, cache, params, ctx)
    decoder.prefill(context)
    assert cache.get_seq_length() == context.shape[1]
    lengths: list[int] = []

    def on_token() -> None:
        lengths.append(cache.get_seq_length())
        for layer in cache.layers:
            assert layer.host.length == layer.seen == cache.get_seq_length()
            assert layer.quantized + layer.keys.shape[-2] == layer.seen

    decoder.decode(question, 6, on_token)
    first = context.shape[1] + question.shape[1]
    assert lengths == list(range(first, first + 6))


def test_host_store_holds_the_full_precision_kv_of_the_real_tokens(tiny_llama, ctx):
    """The full cache's K/V (up to the float rounding of two-row steps against one-row ones),
    also after the store grew while decoding."""
    context, question = prompts(1, context=40)[0]
    decoder = GreedyDecoder(tiny_llama, DynamicCache(config=tiny_llama.config))
    decoder.prefill(context)
    expected = decoder.decode(question, 70, lambda: None)
    params = {"bits": 16, "topk": 512, **SMALL}
    tokens, cache = specache(tiny_llama, ctx, context, question, 70, params)
    assert tokens == expected
    for layer, full in zip(cache.layers, decoder.cache.layers, strict=True):
        assert layer.host.keys.shape[0] > 40 + 64  # grown past the prefill's capacity
        torch.testing.assert_close(layer.host.keys[: layer.seen].transpose(0, 1), full.keys[0])
        torch.testing.assert_close(layer.host.values[: layer.seen].transpose(0, 1), full.values[0])


def test_one_bit_copy_uses_quartile_levels(tiny_llama, ctx):
    """The resident keys are SpeCache's 1-bit quantization (levels at 1/4 and 3/4 of each
    group's range) of the full-precision originals in the host store."""
    context, _ = prompts(1)[0]
    method = SpeCache()
    cache = method.make_cache(tiny_llama, {"bits": 1, **SMALL}, ctx)
    method.make_decoder(tiny_llama, cache, {}, ctx).prefill(context)
    layer = cache.layers[1]
    n = layer.quantized
    original = layer.host.keys[:n].transpose(0, 1)  # [heads, n, D]
    resident = dequantize(layer.lowbit.keys(), torch.float32)
    expected = dequantize(quantize_keys(original, 1, 8, "quartile"), torch.float32)
    assert torch.equal(resident, expected)
    groups = original.reshape(original.shape[0], n // 8, 8, -1)
    low, high = groups.amin(dim=2, keepdim=True), groups.amax(dim=2, keepdim=True)
    levels = resident.reshape(groups.shape)
    quarter, three_quarters = low + (high - low) / 4, low + 3 * (high - low) / 4
    near = torch.minimum((levels - quarter).abs(), (levels - three_quarters).abs())
    assert near.max() <= 2e-3 * (high - low).max()


def test_selection_averages_the_query_heads_of_a_kv_group():
    # KV head 0: its two query heads want position 1 and 4; together they want 3.
    probs = torch.zeros(2, 2, 1, 5)
    probs[0, 0, 0] = torch.tensor([0.0, 0.6, 0.0, 0.4, 0.0])
    probs[0, 1, 0] = torch.tensor([0.0, 0.0, 0.0, 0.4, 0.6])
    probs[1, :, 0] = torch.tensor([0.1, 0.2, 0.3, 0.0, 0.4])
    assert select_topk(probs, 1).tolist() == [[3], [4]]
    assert select_topk(probs, 3).tolist() == [[1, 3, 4], [1, 2, 4]]  # ascending
    assert select_topk(probs, 9).shape == (2, 5)  # never more than the candidates
    # Several selecting rows are averaged too.
    second = torch.zeros(2, 2, 1, 5)
    second[0, :, 0, 4] = 1.0
    second[1, :, 0, 0] = 0.9
    assert select_topk(torch.cat([probs, second], dim=2), 1).tolist() == [[4], [0]]


@pytest.mark.parametrize(("steps", "capacity"), [(5, 96 + 4 * 8), (40, 136 + 4 * 8)])
def test_resident_and_host_bytes_follow_the_formula(tiny_llama, ctx, steps, capacity):
    """Both stores count at their capacity: the low-bit store's is the prefill's 96 quantized
    tokens plus four groups of headroom, grown to the 136 quantized by 40 steps plus four
    groups again; the host store's is the context plus 64 tokens."""
    context, question = prompts(2)[1]
    bits, g, residual, k = 2, 8, 4, 8
    params = {"bits": bits, "group_size": g, "residual": residual, "topk": k}
    _, cache = specache(tiny_llama, ctx, context, question, steps, params)
    config = tiny_llama.config
    heads, dim, s = config.num_key_value_heads, config.hidden_size // config.num_attention_heads, 4
    seen = context.shape[1] + question.shape[1] + steps - 1
    assert cache.get_seq_length() == seen
    quantized = g * ((seen - residual) // g)
    assert cache.layers[0].quantized == quantized <= capacity
    per_layer = heads * (
        2 * capacity * math.ceil(dim * bits / 8)
        + 4 * (capacity // g) * dim
        + 4 * capacity * math.ceil(dim / g)
        + 2 * (seen - quantized) * dim * s
        + k * (2 * dim * s + 8)
    )
    assert cache.resident_bytes() == config.num_hidden_layers * per_layer
    # The host store is allocated at its capacity: the context's prefill plus its headroom
    # (64 tokens or an eighth), in which the question and the decoded tokens fit.
    host_capacity = context.shape[1] + max(64, context.shape[1] // 8)
    assert seen <= host_capacity
    assert cache.host_bytes() == config.num_hidden_layers * 2 * heads * host_capacity * dim * s


def test_hit_rate_counters(tiny_llama, ctx):
    context, question = prompts(1)[0]
    method = SpeCache()
    steps, k, layers, heads = 10, 8, 2, 2
    _, cache = specache(tiny_llama, ctx, context, question, steps, {"topk": k, **SMALL})
    counters = cache.counters()
    hits, lookups = counters["topk_hits"][0], counters["topk_lookups"][0]
    # Every step uses rows chosen one step earlier (the first: by pre-decoding).
    assert lookups == steps * layers * heads * k
    assert 0 < hits <= lookups
    rate = method.derived_metrics({"topk_hits": hits, "topk_lookups": lookups})["topk_hit_rate"]
    assert rate[0] == hits / lookups
    # Fetched rows: K and V of k rows per KV head, fp32, for every step and layer.
    assert counters["h2d_bytes"][0] == steps * layers * heads * k * 2 * 16 * 4
    # With every candidate fetched, every own top-k row was fetched.
    _, full = specache(tiny_llama, ctx, context, question, 4, {"topk": 512, **SMALL})
    assert full.counters()["topk_hits"] == full.counters()["topk_lookups"]
    assert method.derived_metrics({}) == {}


def test_params_and_misuse(tiny_llama, ctx):
    assert SpeCacheParams().model_dump() == {
        "bits": 1, "group_size": 64, "topk": 64, "residual": 64, "levels": "quartile",
        "prefetch": True, "speculative": True, "measure_hit_rate": True,
    }  # fmt: skip
    with pytest.raises(ValidationError):
        SpeCacheParams(bits=3)
    cache = SpeCache().make_cache(tiny_llama, {}, ctx)
    with pytest.raises(RuntimeError, match="its own decoder"):
        GreedyDecoder(tiny_llama, cache).prefill(torch.zeros(1, 4, dtype=torch.long))
