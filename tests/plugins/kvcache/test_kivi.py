from __future__ import annotations

import math

import pytest
import torch
from harness_plugins.kvcache.common import transformers_class
from harness_plugins.kvcache.kivi import KIVI, KIVILayer, KIVIParams
from harness_plugins.kvcache.quant import dequantize, quantize_keys, quantize_values
from pydantic import ValidationError
from transformers import DynamicCache


def make_layer(**params):
    return transformers_class(KIVILayer, "CacheLayerMixin")(0, KIVIParams(**params))


def formula_bytes(seen: int, bits: int, g: int, residual: int, heads: int, dim: int, s: int) -> int:
    """The resident-bytes formula of the kivi docstring, for one layer."""
    tk = g * (max(seen - residual, 0) // g)
    tv = max(seen - residual, 0)
    codes = math.ceil(dim * bits / 8)
    keys = tk * codes + (tk // g) * dim * 4 + (seen - tk) * dim * s
    values = tv * (codes + math.ceil(dim / g) * 4) + (seen - tv) * dim * s
    return heads * (keys + values)


@pytest.mark.parametrize(("bits", "g", "residual"), [(2, 8, 4), (1, 4, 0), (4, 16, 16), (8, 8, 3)])
def test_resident_bytes_follow_the_formula_step_by_step(bits, g, residual) -> None:
    layer = make_layer(bits=bits, group_size=g, residual=residual)
    torch.manual_seed(0)
    x = torch.randn(1, 2, 40, 16, dtype=torch.float16)
    seen = 0
    for chunk in (x[..., :13, :], *x[..., 13:, :].split(1, dim=-2)):
        layer.update(chunk, chunk)
        seen += chunk.shape[-2]
        assert layer.get_seq_length() == seen
        assert layer.resident_bytes() == formula_bytes(seen, bits, g, residual, 2, 16, 2)


def test_keys_quantize_in_whole_groups_values_as_they_leave_the_window() -> None:
    layer = make_layer(bits=2, group_size=8, residual=4)
    x = torch.randn(1, 2, 21, 16)
    keys, values = layer.update(x, x)
    torch.testing.assert_close(keys, x)  # the prefill itself attends in full precision
    assert layer.quantized_keys.shape[-2] == 16 and layer.keys.shape[-2] == 5
    assert layer.quantized_values.shape[-2] == 17 and layer.values.shape[-2] == 4
    torch.testing.assert_close(layer.keys, x[..., 16:, :])
    new = torch.randn(1, 2, 1, 16)
    keys, values = layer.update(new, new)
    assert keys.shape[-2] == values.shape[-2] == 22
    torch.testing.assert_close(keys[..., :16, :], dequantize(quantize_keys(x[..., :16, :], 2, 8)))
    torch.testing.assert_close(keys[..., 16:, :], torch.cat([x[..., 16:, :], new], dim=-2))
    torch.testing.assert_close(
        values[..., :17, :], dequantize(quantize_values(x[..., :17, :], 2, 8))
    )
    assert layer.get_mask_sizes(1) == (23, 0)


def test_eight_bits_stay_close_and_a_long_residual_is_exact(tiny_llama, ctx) -> None:
    ids = torch.randint(0, 128, (1, 40), generator=torch.Generator().manual_seed(4))

    def last_logits(cache) -> torch.Tensor:
        with torch.inference_mode():
            tiny_llama(input_ids=ids[:, :36], past_key_values=cache, use_cache=True)
            return tiny_llama(input_ids=ids[:, 36:], past_key_values=cache).logits

    want = last_logits(DynamicCache(config=tiny_llama.config))
    exact = last_logits(KIVI().make_cache(tiny_llama, {"residual": 64}, ctx))
    close = last_logits(KIVI().make_cache(tiny_llama, {"bits": 8, "residual": 0}, ctx))
    coarse = last_logits(
        KIVI().make_cache(tiny_llama, {"bits": 1, "group_size": 8, "residual": 0}, ctx)
    )
    torch.testing.assert_close(exact, want)
    assert (close - want).abs().max() < 0.05 * want.abs().max()
    assert (coarse - want).abs().max() > (close - want).abs().max()


def test_quartile_levels_are_for_one_bit_only() -> None:
    assert KIVIParams(bits=1, levels="quartile").levels == "quartile"
    with pytest.raises(ValidationError, match="quartile"):
        KIVIParams(bits=2, levels="quartile")
    with pytest.raises(ValidationError):
        KIVIParams(bits=3)
