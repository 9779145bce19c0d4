"""ToMe on transformers' ViT: r = 0 is the model itself, token counts follow the formula,
sizes add up, merging is a size-weighted average that keeps the class token."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from harness.models.tome import (
    TokenMerging,
    bipartite_soft_matching,
    merge_weighted,
    token_counts,
)


def vit(attn: str = "sdpa") -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=64, num_labels=5, attn_implementation=attn,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


def images(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_r_zero_is_bit_identical_to_the_model(attn: str) -> None:
    model = vit(attn)
    with torch.no_grad():
        expected = model(pixel_values=images()).logits
        tome = TokenMerging(model, r=0)
        got = model(pixel_values=images()).logits
    assert torch.equal(expected, got)
    assert tome.counts == [65] * 4 and tome.sizes is None


@pytest.mark.parametrize("r", [1, 4, 16, 40])
def test_token_counts_follow_the_formula_and_sizes_add_up(r: int) -> None:
    model = vit()
    tome = TokenMerging(model, r=r)
    with torch.no_grad():
        logits = model(pixel_values=images()).logits
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    assert tome.counts == token_counts(65, r, 4)
    assert tome.counts[1] == 65 - min(r, 32)
    sizes, last = tome.sizes, tome.counts[-1]
    assert sizes is not None and sizes.shape[1] == last - min(r, (last - 1) // 2)
    torch.testing.assert_close(sizes.sum(dim=1), torch.full((3, 1), 65.0))
    assert (sizes[:, 0] == 1).all()  # the class token is never merged


def test_changing_r_and_removing_restores_the_model() -> None:
    model = vit()
    with torch.no_grad():
        expected = model(pixel_values=images()).logits
        tome = TokenMerging(model, r=8)
        merged = model(pixel_values=images()).logits
        tome.r = 0
        assert torch.equal(model(pixel_values=images()).logits, expected)
        tome.remove()
        assert torch.equal(model(pixel_values=images()).logits, expected)
    assert not torch.equal(merged, expected)
    assert all(not layer.attention.k_proj._forward_hooks for layer in model.vit.layers)


def test_matching_merges_the_most_similar_pairs_by_weighted_average() -> None:
    # Tokens: class, then a/b alternating. a1 equals b1; a2 is orthogonal to everything.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 1, 0.01], [0, 0, 1], [1, 0, 0.5]]])
    merge = bipartite_soft_matching(metric, r=1)
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    size = torch.tensor([[[1.0], [2.0], [1.0], [1.0], [1.0]]])
    merged, new_size = merge_weighted(merge, x, size)
    # Set A = tokens 0 (class), 2, 4; set B = tokens 1, 3. Token 2 is token 1's twin.
    assert new_size.flatten().tolist() == [1.0, 1.0, 3.0, 1.0]
    assert merged.flatten().tolist() == pytest.approx([0.0, 4.0, (1 * 2 + 2 * 1) / 3, 3.0])


def test_proportional_attention_weighs_a_merged_token_as_its_parts() -> None:
    """Attention to a token of size s is what attention to s equal copies of it gives."""
    model = vit("eager")
    tome = TokenMerging(model, r=0)
    x = torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(2))
    copies = torch.cat([x, x[:, 2:3]], dim=1)  # token 2 twice
    with torch.no_grad():
        tome.state.size = torch.tensor([[[1.0], [1.0], [2.0]]])
        weighted = model.vit.layers[0](x)
        tome.state.size = None
        plain = model.vit.layers[0](copies)
    torch.testing.assert_close(weighted, plain[:, :3])
