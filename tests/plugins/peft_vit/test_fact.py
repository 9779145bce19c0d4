from __future__ import annotations

import copy

import pytest
import torch
from harness_plugins.peft_vit.fact import FacTTK, FacTTT
from transformers import ViTConfig, ViTForImageClassification

from harness.scenarios.adapt_protocol import load_task_state, save_task_state

from .conftest import NUM_CLASSES, make_backbone, train_steps

METHODS = [FacTTT(), FacTTK()]
IDS = [m.name for m in METHODS]
D, LAYERS, HEAD = 96, 4, 96 * NUM_CLASSES + NUM_CLASSES



@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_starts_as_the_backbone(method, backbone, pixels):
    with torch.no_grad():
        before = backbone(pixel_values=pixels).logits
        after = method.attach(backbone, {}, None).eval()(pixel_values=pixels).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_tt_parameter_count(rank, backbone):
    model = FacTTT().attach(backbone, {"rank": rank}, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * D * rank + 12 * LAYERS * rank**2 + HEAD


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_tk_parameter_count(rank, backbone):
    model = FacTTK().attach(backbone, {"rank": rank}, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * D * rank + 12 * LAYERS * rank + rank**3 + HEAD


def tt_increments(model, scale):
    """Each block's {q, k, v, o, fc1, fc2} weight increment from the TT factors: s·V Σ_i U."""
    u, v = model.fact.u.weight, model.fact.v.weight
    r = u.shape[0]
    out = []
    for block in model.vit.layers:
        sigma = {k: m.weight for k, m in block.fact["sigma"].items()}
        delta = {k: scale * v @ sigma[k] @ u for k in ("q", "k", "v", "o")}
        delta["fc1"] = torch.cat(
            [scale * v @ sigma["fc1"][j * r : (j + 1) * r] @ u for j in range(4)]
        )
        delta["fc2"] = torch.cat(
            [scale * v @ sigma["fc2"][:, j * r : (j + 1) * r] @ u for j in range(4)], dim=1
        )
        out.append(delta)
    return out


def tk_increments(model, scale):
    """The same from the Tucker factors: Σ_i = C ×₃ P[:, i], slice j of block l at 12l + j."""
    u, v = model.fact.u.weight, model.fact.v.weight
    core, factors = model.fact.core, model.fact.factors
    out = []
    for layer in range(len(model.vit.layers)):
        sig = [torch.einsum("abc,c->ab", core, factors[:, 12 * layer + j]) for j in range(12)]
        delta = {k: scale * v @ sig[j].T @ u for j, k in enumerate(("q", "k", "v", "o"))}
        delta["fc1"] = torch.cat([scale * v @ sig[4 + j].T @ u for j in range(4)])
        delta["fc2"] = torch.cat([scale * v @ sig[8 + j].T @ u for j in range(4)], dim=1)
        out.append(delta)
    return out


@pytest.mark.parametrize(("method", "increments"), [(FacTTT(), tt_increments),
                                                   (FacTTK(), tk_increments)], ids=IDS)  # fmt: skip
def test_branches_equal_the_merged_tensorised_increment(method, increments, backbone, pixels):
    merged, plain = copy.deepcopy(backbone), copy.deepcopy(backbone)
    params = {"rank": 3, "scale": 0.7}
    model = method.attach(backbone, params, None).eval()
    torch.nn.init.normal_(model.fact.v.weight, std=0.3)
    with torch.no_grad():
        for block, delta in zip(merged.vit.layers, increments(model, 0.7), strict=True):
            for key in ("q", "k", "v", "o"):
                getattr(block.attention, f"{key}_proj").weight += delta[key]
            block.mlp.fc1.weight += delta["fc1"]
            block.mlp.fc2.weight += delta["fc2"]
        adapted = model(pixel_values=pixels).logits
        reference = merged(pixel_values=pixels).logits
        unadapted = plain(pixel_values=pixels).logits
    assert not torch.allclose(adapted, unadapted, atol=1e-2)
    assert torch.allclose(adapted, reference, atol=1e-4)


def test_needs_an_mlp_four_times_as_wide():
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=100,
        image_size=16, patch_size=8, num_labels=3,
    )  # fmt: skip
    with pytest.raises(ValueError, match="intermediate_size"):
        FacTTT().attach(ViTForImageClassification(config), {}, None)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_backbone_stays_frozen_and_reload_is_exact(method, backbone, pixels, tmp_path):
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    model = train_steps(method.attach(backbone, {}, None), pixels)
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert not params[name].requires_grad and params[name].grad is None
        assert torch.equal(params[name], before), name
    assert model.fact.v.weight.abs().sum() > 0

    path = tmp_path / "task.safetensors"
    state = method.task_state(model, {})
    assert sum(t.numel() for t in state.values()) == sum(params[n].numel() for n in state)
    payload = sum(t.numel() * t.element_size() for t in state.values())
    assert payload < save_task_state(state, path) <= payload + 128
    fresh = method.attach(make_backbone(seed=1), {}, None).eval()
    method.load_task_state(fresh, load_task_state(path, method.task_state(fresh, {})), {})
    with torch.no_grad():
        assert torch.equal(fresh(pixel_values=pixels).logits, model(pixel_values=pixels).logits)
