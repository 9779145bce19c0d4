from __future__ import annotations

import pytest
import torch
from harness_plugins.kvcache.common import transformers_class
from harness_plugins.kvcache.streaming import Streaming, StreamingLayer, StreamingParams
from pydantic import ValidationError
from transformers import DynamicCache
from transformers.cache_utils import Cache, CacheLayerMixin


def tokens(start: int, stop: int) -> torch.Tensor:
    """K/V of tokens ``start .. stop-1`` whose every element is the token's index."""
    index = torch.arange(start, stop, dtype=torch.float32)
    return index.view(1, 1, -1, 1).expand(1, 2, -1, 4).clone()


def kept(tensor: torch.Tensor) -> list[int]:
    return tensor[0, 0, :, 0].int().tolist()


def test_layer_keeps_sinks_and_window_and_counts_seen_tokens() -> None:
    layer = transformers_class(StreamingLayer, "CacheLayerMixin")(0, sinks=2, window=3, budget=None)
    assert isinstance(layer, CacheLayerMixin)
    assert layer.get_mask_sizes(10) == (10, 0)
    keys, _ = layer.update(tokens(0, 10), tokens(0, 10))
    assert kept(keys) == list(range(10))  # the step itself sees everything
    assert kept(layer.keys) == kept(layer.values) == [0, 1, 7, 8, 9]
    assert layer.get_seq_length() == 10
    assert layer.get_mask_sizes(1) == (6, 5)
    keys, _ = layer.update(tokens(10, 11), tokens(10, 11))
    assert kept(keys) == [0, 1, 7, 8, 9, 10]
    assert kept(layer.keys) == [0, 1, 8, 9, 10]
    layer.update(tokens(11, 13), tokens(11, 13))
    assert kept(layer.keys) == [0, 1, 10, 11, 12]
    assert layer.get_seq_length() == 13
    assert layer.resident_bytes() == 2 * 2 * 5 * 4 * 4
    layer.reset()
    assert layer.get_seq_length() == 0 and layer.keys is None


def test_short_contexts_are_kept_whole() -> None:
    layer = transformers_class(StreamingLayer, "CacheLayerMixin")(0, sinks=4, window=8, budget=None)
    layer.update(tokens(0, 6), tokens(0, 6))
    layer.update(tokens(6, 7), tokens(6, 7))
    assert kept(layer.keys) == list(range(7))
    assert layer.get_mask_sizes(1) == (8, 0)


def test_cache_evicts_every_layer_and_keeps_true_positions(tiny_llama, ctx) -> None:
    ids = torch.randint(0, 128, (1, 31), generator=torch.Generator().manual_seed(2))
    cache = Streaming().make_cache(tiny_llama, {"sinks": 4, "window": 8}, ctx)
    assert isinstance(cache, Cache)
    with torch.inference_mode():
        tiny_llama(input_ids=ids[:, :30], past_key_values=cache, use_cache=True)
        assert cache.get_seq_length() == 30
        assert all(layer.keys.shape[-2] == 12 for layer in cache.layers)
        got = tiny_llama(input_ids=ids[:, 30:], past_key_values=cache, use_cache=True).logits
        # The same step over a full cache with the evicted tokens masked out, at position 30.
        full = DynamicCache(config=tiny_llama.config)
        tiny_llama(input_ids=ids[:, :30], past_key_values=full, use_cache=True)
        mask = torch.zeros(1, 31, dtype=torch.long)
        mask[:, :4] = mask[:, 22:] = 1
        want = tiny_llama(
            input_ids=ids[:, 30:], past_key_values=full, attention_mask=mask,
            position_ids=torch.tensor([[30]]), use_cache=True,
        ).logits  # fmt: skip
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == 31
    assert cache.resident_bytes() == 2 * 2 * 2 * 12 * 16 * 4  # layers, K/V, heads, tokens, dim


def test_params_need_a_window() -> None:
    assert StreamingParams().sinks + StreamingParams().window == 256
    with pytest.raises(ValidationError):
        StreamingParams(window=0)


def test_a_budget_sizes_the_window_from_the_prefill() -> None:
    streaming_layer = transformers_class(StreamingLayer, "CacheLayerMixin")
    layer = streaming_layer(0, sinks=2, window=99, budget=0.25)
    layer.update(tokens(0, 40), tokens(0, 40))
    assert kept(layer.keys) == [0, 1, *range(32, 40)]  # 2 sinks + 8 recent = 25 % of 40
    layer.update(tokens(40, 41), tokens(40, 41))
    assert kept(layer.keys) == [0, 1, *range(33, 41)]
    with pytest.raises(ValidationError):
        StreamingParams(budget=1.5)
