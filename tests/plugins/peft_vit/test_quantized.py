from __future__ import annotations

import pytest
import torch
from harness_plugins.peft_vit.quantized import (
    _STE,
    BITS,
    EPS,
    QLinear,
    gaussian_codebook,
    pack_codes,
    packed_size,
    quantize,
    unpack_codes,
)


def test_one_bit_codebook_is_the_normal_quartiles():
    levels, thresholds = gaussian_codebook(1)
    assert levels.tolist() == pytest.approx([-0.6745, 0.6745], abs=1e-4)
    assert thresholds.tolist() == pytest.approx([0.0], abs=1e-6)


def test_two_bit_codebook_is_the_fixed_point():
    levels, thresholds = gaussian_codebook(2)
    assert levels.tolist() == pytest.approx([-1.266, -0.378, 0.378, 1.266], abs=1e-3)
    assert thresholds.tolist() == pytest.approx([-0.822, 0.0, 0.822], abs=1e-3)


@pytest.mark.parametrize("bits", BITS)
def test_codebook_levels_are_the_conditional_medians_of_their_bins(bits):
    levels, thresholds = gaussian_codebook(bits)
    assert len(levels) == 2**bits and len(thresholds) == 2**bits - 1
    assert torch.all(levels[1:] > levels[:-1])
    assert torch.allclose(thresholds, (levels[1:] + levels[:-1]) / 2)
    assert torch.allclose(levels, -levels.flip(0), atol=1e-6)  # symmetric
    if bits <= 4:  # converged: each level is the median of its bin
        normal = torch.distributions.Normal(0.0, 1.0)
        edges = torch.cat([torch.zeros(1), normal.cdf(thresholds), torch.ones(1)])
        assert torch.allclose(normal.cdf(levels), (edges[1:] + edges[:-1]) / 2, atol=1e-5)


def test_one_bit_codebook_beats_the_l2_quantizer_in_l1_error():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    levels, thresholds = gaussian_codebook(1)
    ours = (x - levels[quantize(x, thresholds)]).abs().mean()
    lloyd = (x - 0.798 * x.sign()).abs().mean()
    assert ours < lloyd
    assert float(ours) == pytest.approx(0.473, abs=3e-3)


@pytest.mark.parametrize("bits", BITS)
def test_quantize_picks_the_nearest_level(bits):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(1)) * 1.5
    levels, thresholds = gaussian_codebook(bits)
    nearest = (x[:, None] - levels[None, :]).abs().argmin(1)
    assert torch.equal(quantize(x, thresholds), nearest)


def test_ste_passes_the_gradient_through_unchanged():
    levels, thresholds = gaussian_codebook(2)
    wn = torch.randn(50, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = torch.randn(50, generator=torch.Generator().manual_seed(3))
    out = _STE.apply(wn, levels, thresholds)
    assert torch.equal(out, levels[quantize(wn.detach(), thresholds)])
    out.backward(g)
    assert torch.equal(wn.grad, g)


@pytest.mark.parametrize("bits", [1, 4])
def test_qlinear_gradient_treats_the_rounding_as_identity(bits):
    torch.manual_seed(0)
    layer = QLinear(12, 5, bits)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(7, 12)
    g = torch.randn(7, 5)
    (layer(x) * g).sum().backward()

    # By hand: W_eff = (Wn + c)·σ + μ with the rounding offset c held constant.
    w = layer.weight.detach().clone().requires_grad_(True)
    mu, sigma = w.mean(), w.std()
    wn = (w - mu) / (sigma + EPS)
    offset = (layer.levels[quantize(wn.detach(), layer.thresholds)] - wn).detach()
    w_eff = (wn + offset) * sigma + mu
    (torch.nn.functional.linear(x, w_eff) * g).sum().backward()
    assert torch.allclose(layer.weight.grad, w.grad, atol=1e-5)
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_pack_unpack_round_trip(bits, count):
    codes = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_size(count, bits) == -(-count * bits // 8)
    assert torch.equal(unpack_codes(packed, bits, count), codes)


def test_pack_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        pack_codes(torch.tensor([0, 4]), 2)


@pytest.mark.parametrize("bits", [*BITS, 32])
def test_loaded_qlinear_computes_exactly_the_trained_weight(bits):
    torch.manual_seed(0)
    layer = QLinear(33, 9, bits)
    torch.nn.init.normal_(layer.weight, mean=0.1, std=0.3)
    state = layer.packed()
    if bits == 32:
        assert list(state) == ["weight"]
    else:
        assert state["codes"].numel() == packed_size(33 * 9, bits)
        assert state["stats"].dtype == torch.float32 and state["stats"].shape == (2,)
    other = QLinear(33, 9, bits)
    other.load_packed(state)
    x = torch.randn(4, 33)
    assert torch.equal(other.effective_weight(), layer.effective_weight().detach())
    assert torch.equal(other(x), layer(x).detach())


def test_one_bit_weights_take_two_values():
    torch.manual_seed(0)
    layer = QLinear(16, 16, 1)
    torch.nn.init.normal_(layer.weight)
    assert layer.effective_weight().unique().numel() == 2


def test_qlinear_rejects_unknown_bits():
    with pytest.raises(ValueError, match="bits"):
        QLinear(4, 4, 3)
