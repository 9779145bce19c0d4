from __future__ import annotations

from typing import Any

import pytest
import torch
from harness_plugins.kvcache.attention import (
    KV_ATTENTION,
    bind_layer,
    eager_attention,
    register_attention,
    take_layer,
    use_kv_attention,
)
from torch.nn.functional import scaled_dot_product_attention as sdpa
from transformers import AttentionInterface, Cache, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask


def qkv(q_len: int, kv_len: int, heads: int = 4, kv_heads: int = 2):
    torch.manual_seed(q_len * 100 + kv_len)
    return (
        torch.randn(1, heads, q_len, 16),
        torch.randn(1, kv_heads, kv_len, 16),
        torch.randn(1, kv_heads, kv_len, 16),
    )


def reference(query, key, value, mask) -> torch.Tensor:
    out = sdpa(query, key, value, attn_mask=mask, enable_gqa=True, scale=0.25)
    return out.transpose(1, 2)


def lower_right_causal(q_len: int, kv_len: int) -> torch.Tensor:
    return torch.ones(q_len, kv_len, dtype=torch.bool).tril(diagonal=kv_len - q_len)


@pytest.mark.parametrize(("q_len", "kv_len"), [(1, 9), (5, 5), (3, 11)])
def test_no_mask_is_causal_aligned_lower_right(q_len, kv_len) -> None:
    query, key, value = qkv(q_len, kv_len)
    out, probs = eager_attention(query, key, value, None, 0.25)
    expected = reference(query, key, value, lower_right_causal(q_len, kv_len))
    torch.testing.assert_close(out, expected)
    assert probs is None


def test_boolean_and_additive_masks_match_sdpa() -> None:
    query, key, value = qkv(4, 10)
    mask = torch.rand(1, 1, 4, 10) > 0.4
    mask[..., 0] = True  # no row without a key
    out, _ = eager_attention(query, key, value, mask, 0.25)
    torch.testing.assert_close(out, reference(query, key, value, mask))
    additive = torch.zeros(1, 1, 4, 10).masked_fill(~mask, torch.finfo(torch.float32).min)
    out, _ = eager_attention(query, key, value, additive, 0.25)
    torch.testing.assert_close(out, reference(query, key, value, mask))


def test_probabilities_cover_every_query_head() -> None:
    query, key, value = qkv(3, 7)
    out, probs = eager_attention(query, key, value, None, 0.25, return_probs=True)
    assert out.shape == (1, 3, 4, 16)
    assert probs.shape == (1, 4, 3, 7) and probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 3))
    assert (probs[..., 0, 6] == 0).all()  # first query row cannot see the last keys
    # Query heads 0, 1 share KV head 0: their output is their probabilities times its values.
    torch.testing.assert_close(out[0, :, 1], probs[0, 1] @ value[0, 0])


def test_heads_must_split_into_groups() -> None:
    query, key, value = qkv(2, 4, heads=3, kv_heads=2)
    with pytest.raises(ValueError, match="query heads"):
        eager_attention(query, key, value, None, 0.25)


def test_registration_covers_attention_and_mask() -> None:
    register_attention("kv-test-attention", eager_attention)
    assert AttentionInterface._global_mapping["kv-test-attention"] is eager_attention
    assert AttentionMaskInterface._global_mapping["kv-test-attention"] is sdpa_mask


def test_bound_layer_is_taken_once() -> None:
    layer = object()
    bind_layer(5, layer)
    assert take_layer(5) is layer
    assert take_layer(5) is None
    assert take_layer(6) is None


class EagerLayer(DynamicLayer):
    """A full cache layer that routes its attention through ``eager_attention``."""

    calls = 0

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx

    def update(self, key_states, value_states, *args: Any, **kwargs: Any):
        bind_layer(self.layer_idx, self)
        return super().update(key_states, value_states)

    def attend(self, module, query, key, value, attention_mask, scaling, **kwargs: Any):
        EagerLayer.calls += 1
        return eager_attention(query, key, value, attention_mask, scaling)


def run_steps(model, cache, ids: torch.Tensor) -> list[torch.Tensor]:
    """Prefill 20 tokens, then a 3-token step, then two single-token steps."""
    with torch.inference_mode():
        return [
            model(input_ids=chunk, past_key_values=cache, use_cache=True).logits
            for chunk in (ids[:, :20], ids[:, 20:23], ids[:, 23:24], ids[:, 24:25])
        ]


def test_dispatch_reaches_the_bound_layer_and_matches_sdpa(tiny_llama) -> None:
    ids = torch.randint(0, 128, (1, 25), generator=torch.Generator().manual_seed(1))
    expected = run_steps(tiny_llama, DynamicCache(config=tiny_llama.config), ids)
    use_kv_attention(tiny_llama)
    assert tiny_llama.config._attn_implementation == KV_ATTENTION
    # Any other cache: sdpa as before.
    plain = run_steps(tiny_llama, DynamicCache(config=tiny_llama.config), ids)
    # A layer that binds itself: its own attention, with masks for every step shape.
    EagerLayer.calls = 0
    eager = run_steps(tiny_llama, Cache(layers=[EagerLayer(0), EagerLayer(1)]), ids)
    assert EagerLayer.calls == 2 * 4
    for want, got_plain, got_eager in zip(expected, plain, eager, strict=True):
        torch.testing.assert_close(got_plain, want)
        torch.testing.assert_close(got_eager, want, atol=1e-5, rtol=1e-4)
