from __future__ import annotations

import math

import pytest
import torch
from harness_plugins.kvcache.quant import (
    concat,
    dequantize,
    pack_codes,
    packed_bytes,
    quantize_keys,
    quantize_values,
    unpack_codes,
)

QUANTIZERS = {"channel": quantize_keys, "token": quantize_values}


def expanded_scale(p) -> torch.Tensor:
    """Each element's group scale, in the shape of the quantized tensor."""
    dim = -2 if p.axis == "channel" else -1
    length = p.shape[dim]
    return p.scale.float().repeat_interleave(p.group_size, dim=dim).narrow(dim, 0, length)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("axis", ["channel", "token"])
@pytest.mark.parametrize("levels", ["minmax", "quartile"])
@pytest.mark.parametrize("shape", [(2, 3, 37, 20), (1, 1, 64, 64), (5, 7)])
def test_round_trip_error_is_at_most_half_a_scale(bits, axis, levels, shape) -> None:
    torch.manual_seed(bits)
    x = torch.randn(*shape) * 3
    p = QUANTIZERS[axis](x, bits, 16, levels)
    error = (x - dequantize(p)).abs()
    # fp16 scale and zero: rounding adds up to ~2^-11 of the values' magnitude.
    slack = 2**-10 * x.abs().max()
    assert (error <= expanded_scale(p) / 2 + slack).all()


@pytest.mark.parametrize("quantize", [quantize_keys, quantize_values])
def test_one_bit_levels_are_min_max_or_the_quartiles(quantize) -> None:
    # One group of four: min 0, max 4, no value on a rounding tie.
    values = torch.tensor([0.0, 1.0, 3.0, 4.0])
    x = values.view(1, 4, 1) if quantize is quantize_keys else values.view(1, 1, 4)
    minmax = dequantize(quantize(x, 1, 4, "minmax")).flatten()
    quartile = dequantize(quantize(x, 1, 4, "quartile")).flatten()
    assert minmax.tolist() == [0.0, 0.0, 4.0, 4.0]
    assert quartile.tolist() == [1.0, 1.0, 3.0, 3.0]
    p = quantize(x, 1, 4, "quartile")
    assert (p.zero.item(), p.scale.item()) == (1.0, 2.0)


def test_levels_only_matter_at_one_bit() -> None:
    x = torch.randn(1, 2, 32, 8)
    a, b = quantize_keys(x, 2, 8, "minmax"), quantize_keys(x, 2, 8, "quartile")
    assert torch.equal(dequantize(a), dequantize(b))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_packing_sizes_and_bytes(bits) -> None:
    x = torch.randn(2, 3, 40, 20, dtype=torch.float16)
    keys = quantize_keys(x, bits, 16)
    values = quantize_values(x, bits, 16)
    code_bytes = math.ceil(20 * bits / 8)
    assert keys.codes.dtype == torch.uint8
    assert keys.codes.shape == values.codes.shape == (2, 3, 40, code_bytes)
    assert keys.scale.shape == keys.zero.shape == (2, 3, 3, 20)  # ceil(40 / 16) token groups
    assert values.scale.shape == values.zero.shape == (2, 3, 40, 2)  # ceil(20 / 16) channel groups
    assert keys.scale.dtype == keys.zero.dtype == torch.float16
    assert packed_bytes(keys) == 6 * 40 * code_bytes + 2 * 2 * 6 * 3 * 20
    assert packed_bytes(values) == 6 * 40 * code_bytes + 2 * 2 * 6 * 40 * 2
    assert dequantize(keys).dtype == torch.float16
    assert dequantize(keys, torch.float32).shape == x.shape


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("length", [1, 7, 8, 13])
def test_pack_unpack_round_trip(bits, length) -> None:
    codes = torch.randint(0, 2**bits, (3, length), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.shape == (3, math.ceil(length * bits / 8))
    assert torch.equal(unpack_codes(packed, bits, length), codes)


def test_bit_layout_is_lowest_bits_first() -> None:
    assert pack_codes(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_codes(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1, 1]), 1).tolist() == [0b10001101, 1]
    assert pack_codes(torch.tensor([5, 12]), 4).tolist() == [5 | 12 << 4]


def test_constant_groups_dequantize_exactly() -> None:
    x = torch.full((1, 2, 16, 8), 0.75)
    for quantize in (quantize_keys, quantize_values):
        assert torch.equal(dequantize(quantize(x, 2, 8)), x)


def test_chunks_concatenate_like_the_whole() -> None:
    x = torch.randn(1, 2, 48, 16)
    keys = concat(quantize_keys(x[..., :32, :], 2, 16), quantize_keys(x[..., 32:, :], 2, 16))
    assert keys.shape == x.shape
    assert torch.equal(dequantize(keys), dequantize(quantize_keys(x, 2, 16)))
    values = concat(quantize_values(x[..., :5, :], 4, 8), quantize_values(x[..., 5:, :], 4, 8))
    assert torch.equal(dequantize(values), dequantize(quantize_values(x, 4, 8)))


def test_invalid_arguments_are_refused() -> None:
    x = torch.randn(1, 1, 8, 8)
    with pytest.raises(ValueError, match="bits"):
        quantize_keys(x, 3, 8)
    with pytest.raises(ValueError, match="group_size"):
        quantize_values(x, 2, 0)
    with pytest.raises(ValueError, match="whole token groups"):
        concat(quantize_keys(x[..., :5, :], 2, 4), quantize_keys(x[..., 5:, :], 2, 4))
    with pytest.raises(ValueError, match="quantized the same way"):
        concat(quantize_keys(x, 2, 4), quantize_keys(x, 4, 4))
