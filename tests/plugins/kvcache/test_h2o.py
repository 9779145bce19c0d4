from __future__ import annotations

import pytest
import torch
from harness_plugins.kvcache.attention import KV_ATTENTION, eager_attention, take_layer
from harness_plugins.kvcache.common import measured_cache, transformers_class
from harness_plugins.kvcache.h2o import H2O, H2OLayer
from transformers import DynamicCache


def make_layer(heavy: int, recent: int, budget: float | None = None):
    return transformers_class(H2OLayer, "CacheLayerMixin")(0, heavy, recent, budget)


def tokens(start: int, stop: int) -> torch.Tensor:
    """K/V of tokens ``start .. stop-1`` (2 KV heads) whose every element is the token's index."""
    index = torch.arange(start, stop, dtype=torch.float32)
    return index.view(1, 1, -1, 1).expand(1, 2, -1, 4).clone()


def kept(tensor: torch.Tensor, head: int) -> list[int]:
    return tensor[0, head, :, 0].int().tolist()


def test_eviction_keeps_recent_and_the_best_scored_per_kv_head() -> None:
    layer = make_layer(heavy=2, recent=2)
    layer.update(tokens(0, 8), tokens(0, 8))
    take_layer(0)
    scores = torch.zeros(1, 2, 8)
    scores[0, 0, [1, 4]] = 1.0
    scores[0, 1, [0, 5]] = 1.0
    scores[0, :, 7] = 5.0  # recent tokens are kept whatever their score
    layer.scores = scores
    layer.evict()
    assert kept(layer.keys, 0) == kept(layer.values, 0) == [1, 4, 6, 7]
    assert kept(layer.keys, 1) == kept(layer.values, 1) == [0, 5, 6, 7]
    assert layer.scores[0, 0].tolist() == [1.0, 1.0, 0.0, 5.0]
    assert layer.get_seq_length() == 8
    assert layer.get_mask_sizes(1) == (5, 4)


def test_attention_is_summed_over_query_rows_and_group_heads() -> None:
    layer = make_layer(heavy=16, recent=16)
    torch.manual_seed(0)
    query, key, value = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    keys, values = layer.update(key, value)
    assert take_layer(0) is layer
    out, weights = layer.attend(None, query, keys, values, None, scaling=0.3)
    want, probs = eager_attention(query, key, value, None, 0.3, return_probs=True)
    torch.testing.assert_close(out, want)
    assert weights is None
    # Query heads 0, 1 read KV head 0; heads 2, 3 read KV head 1.
    expected = torch.stack([probs[0, :2].sum((0, 1)), probs[0, 2:].sum((0, 1))]).unsqueeze(0)
    torch.testing.assert_close(layer.scores, expected)
    # A decode step adds its row to the kept tokens' scores and starts the new one's.
    q2, k2, v2 = torch.randn(1, 4, 1, 8), torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)
    keys, values = layer.update(k2, v2)
    layer.attend(None, q2, keys, values, None, scaling=0.3)
    _, probs2 = eager_attention(q2, keys, values, None, 0.3, return_probs=True)
    step = probs2[0].view(2, 2, 7).sum(1)
    torch.testing.assert_close(layer.scores[0, :, :6], expected[0] + step[:, :6])
    torch.testing.assert_close(layer.scores[0, :, 6], step[:, 6])


def test_prefill_attends_to_everything_then_evicts_to_budget(tiny_llama, ctx) -> None:
    ids = torch.randint(0, 128, (1, 31), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        want = tiny_llama(input_ids=ids[:, :30], past_key_values=DynamicCache()).logits
        cache = H2O().make_cache(tiny_llama, {"heavy": 5, "recent": 3}, ctx)
        assert tiny_llama.config._attn_implementation == KV_ATTENTION
        got = tiny_llama(input_ids=ids[:, :30], past_key_values=cache, use_cache=True).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
        for layer in cache.layers:
            assert layer.keys.shape == (1, 2, 8, 16)
            assert layer.scores.shape == (1, 2, 8)
        tiny_llama(input_ids=ids[:, 30:], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 31
    assert all(layer.keys.shape[-2] == 8 for layer in cache.layers)
    # layers · KV heads · tokens · (K and V of 16 float32 + one float32 score)
    assert cache.resident_bytes() == 2 * 2 * 8 * (2 * 16 * 4 + 4)


def test_a_model_without_the_dispatching_attention_is_caught(tiny_llama) -> None:
    layer = transformers_class(H2OLayer, "CacheLayerMixin")
    cache = measured_cache([layer(0, 4, 4, None), layer(1, 4, 4, None)])
    ids = torch.randint(0, 128, (1, 12))
    with torch.inference_mode(), pytest.raises(RuntimeError, match="never reached attention"):
        tiny_llama(input_ids=ids[:, :10], past_key_values=cache, use_cache=True)
        tiny_llama(input_ids=ids[:, 10:], past_key_values=cache, use_cache=True)
    for layer_idx in (0, 1):  # leave no binding behind for other tests
        take_layer(layer_idx)


def test_a_budget_splits_evenly_into_heavy_and_recent(tiny_llama, ctx) -> None:
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(4))
    cache = H2O().make_cache(tiny_llama, {"budget": 0.25}, ctx)
    with torch.inference_mode():
        tiny_llama(input_ids=ids, past_key_values=cache, use_cache=True)
    assert [(layer.heavy, layer.recent) for layer in cache.layers] == [(5, 5), (5, 5)]
    assert all(layer.keys.shape[-2] == 10 for layer in cache.layers)
