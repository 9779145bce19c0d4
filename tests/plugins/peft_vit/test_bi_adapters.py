from __future__ import annotations

import pytest
import torch
from harness_plugins.peft_vit.bi_adapters import BiAdaptFormer, BiLoRA
from harness_plugins.peft_vit.quantized import QLinear, packed_size

from harness.scenarios.adapt_protocol import load_task_state, save_task_state

from .conftest import NUM_CLASSES, make_backbone, train_steps

METHODS = [BiAdaptFormer(), BiLoRA()]
IDS = [m.name for m in METHODS]



def reload(method, params, model, path):
    """The task model rebuilt from its saved state on a differently seeded backbone."""
    size = save_task_state(method.task_state(model, params), path)
    fresh = method.attach(make_backbone(seed=1), params, None).eval()
    template = method.task_state(fresh, params)
    method.load_task_state(fresh, load_task_state(path, template), params)
    return fresh, size


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_fp32_adapter_starts_as_the_backbone(method, backbone, pixels):
    with torch.no_grad():
        before = backbone(pixel_values=pixels).logits
        after = method.attach(backbone, {"bits": 32}, None).eval()(pixel_values=pixels).logits
    assert torch.equal(before, after)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_one_bit_adapter_starts_near_the_backbone(method, backbone, pixels):
    with torch.no_grad():
        before = backbone(pixel_values=pixels).logits
        after = method.attach(backbone, {"bits": 1}, None).eval()(pixel_values=pixels).logits
    assert not torch.equal(before, after)
    assert torch.allclose(before, after, atol=1e-2)


@pytest.mark.parametrize(("method", "per_block"), [(METHODS[0], 2), (METHODS[1], 4)], ids=IDS)
@pytest.mark.parametrize("bi_head", [False, True])
def test_trainable_parameters(method, per_block, bi_head, backbone):
    d, dim, layers = 96, 4, 4
    model = method.attach(backbone, {"bits": 1, "dim": dim, "bi_head": bi_head}, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = d * NUM_CLASSES + (0 if bi_head else NUM_CLASSES)
    assert trainable == per_block * d * dim * layers + head
    assert isinstance(model.classifier, QLinear) == bi_head


@pytest.mark.parametrize("method", METHODS, ids=IDS)
@pytest.mark.parametrize(("bits", "bi_head"), [(1, True), (2, False), (32, False), (32, True)])
def test_reload_reproduces_the_logits_exactly(method, bits, bi_head, backbone, pixels, tmp_path):
    params = {"bits": bits, "bi_head": bi_head, "dim": 4}
    model = train_steps(method.attach(backbone, params, None), pixels)
    rebuilt, _ = reload(method, params, model, tmp_path / "task.safetensors")
    with torch.no_grad():
        assert torch.equal(rebuilt(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_task_state_is_the_packed_payload(method, backbone, tmp_path):
    params = {"bits": 1, "bi_head": True, "dim": 8}
    model = method.attach(backbone, params, None)
    state = method.task_state(model, params)
    matrices = [m for m in model.modules() if isinstance(m, QLinear)]
    assert {t.dtype for t in state.values()} == {torch.uint8, torch.float32}
    payload = sum(packed_size(m.weight.numel(), 1) + 8 for m in matrices)
    assert sum(t.numel() * t.element_size() for t in state.values()) == payload
    size = save_task_state(state, tmp_path / "task.safetensors")
    assert payload < size <= payload + 128


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_one_bit_with_binary_head_is_25x_smaller_than_fp32(method, tmp_path):
    sizes = {}
    for bits, bi_head in [(32, False), (1, True)]:
        params = {"bits": bits, "bi_head": bi_head, "dim": 8}
        model = method.attach(make_backbone(), params, None)
        sizes[bits] = save_task_state(method.task_state(model, params), tmp_path / f"{bits}.st")
    assert sizes[32] >= 25 * sizes[1]


@pytest.mark.parametrize("method", METHODS, ids=IDS)
def test_backbone_stays_frozen(method, backbone, pixels):
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    model = train_steps(method.attach(backbone, {"bits": 1, "bi_head": True}, None), pixels)
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert not params[name].requires_grad and params[name].grad is None
        assert torch.equal(params[name], before), name
    adapters = [p for n, p in params.items() if n not in frozen]
    assert adapters and all(p.grad is not None for p in adapters)
