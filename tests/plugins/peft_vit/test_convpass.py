from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from harness_plugins.peft_vit.convpass import Convpass, ConvpassParams, _bypass, _run_bypass

from harness.scenarios.adapt_protocol import load_task_state, save_task_state

from .conftest import NUM_CLASSES, make_backbone

D, LAYERS, HEAD = 96, 4, 96 * NUM_CLASSES + NUM_CLASSES


@pytest.mark.parametrize("attn_only", [False, True])
def test_starts_as_the_backbone(attn_only, backbone, pixels):
    with torch.no_grad():
        before = backbone(pixel_values=pixels).logits
        model = Convpass().attach(backbone, {"attn_only": attn_only}, None).eval()
        after = model(pixel_values=pixels).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("attn_only", [False, True])
@pytest.mark.parametrize("dim", [4, 8])
def test_parameter_count(dim, attn_only, backbone):
    model = Convpass().attach(backbone, {"dim": dim, "attn_only": attn_only}, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    per_bypass = 2 * D * dim + D + 9 * dim**2 + 2 * dim
    assert trainable == (1 if attn_only else 2) * LAYERS * per_bypass + HEAD


def random_bypass(d=16, dim=4):
    torch.manual_seed(0)
    bypass = _bypass(d, ConvpassParams(dim=dim, dropout=0.0))
    for p in bypass.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return bypass.eval()


def test_conv_mixes_exactly_the_3x3_neighbourhood_on_the_patch_grid():
    bypass = random_bypass()
    x = torch.randn(1, 1 + 25, 16)  # a 5x5 grid
    changed = x.clone()
    row, col = 1, 3
    changed[0, 1 + 5 * row + col] += 1.0
    with torch.no_grad():
        diff = (_run_bypass(bypass, changed, 1.0) - _run_bypass(bypass, x, 1.0)).abs().sum(-1)[0]
    moved = {int(i) for i in torch.nonzero(diff > 1e-6)}
    neighbours = {1 + 5 * r + c for r in range(row - 1, row + 2) for c in range(col - 1, col + 2)}
    assert moved == neighbours  # and not the class token


def test_class_token_is_a_one_pixel_image_through_the_same_conv():
    bypass = random_bypass()
    x = torch.randn(2, 1 + 9, 16)
    with torch.no_grad():
        out = _run_bypass(bypass, x, 2.0)[:, 0]
        z = F.linear(x[:, 0], bypass.down.weight, bypass.down.bias)
        z = z * torch.sigmoid(1.702 * z)
        z = F.linear(z, bypass.conv.weight[:, :, 1, 1], bypass.conv.bias)
        z = z * torch.sigmoid(1.702 * z)
        expected = 2.0 * bypass.up(z)
    assert torch.allclose(out, expected, atol=1e-5)
    with torch.no_grad():  # and patch tokens do not reach it
        x[:, 1:] += 5.0
        assert torch.allclose(_run_bypass(bypass, x, 2.0)[:, 0], expected, atol=1e-5)


def test_needs_a_square_patch_grid():
    with pytest.raises(ValueError, match="square"):
        _run_bypass(random_bypass(), torch.randn(1, 1 + 6, 16), 1.0)


def test_backbone_stays_frozen_and_reload_is_exact(backbone, pixels, tmp_path):
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    method = Convpass()
    model = method.attach(backbone, {}, None)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(len(pixels)) % NUM_CLASSES
    model.train()
    for _ in range(3):
        loss = F.cross_entropy(model(pixel_values=pixels).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert not params[name].requires_grad and params[name].grad is None
        assert torch.equal(params[name], before), name
    assert model.vit.layers[0].convpass["mlp"].up.weight.abs().sum() > 0

    path = tmp_path / "task.safetensors"
    save_task_state(method.task_state(model, {}), path)
    fresh = method.attach(make_backbone(seed=1), {}, None).eval()
    method.load_task_state(fresh, load_task_state(path, method.task_state(fresh, {})), {})
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
