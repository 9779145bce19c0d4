"""What every ViT adaptation method must do, and the baselines' own closed forms."""

from __future__ import annotations

import pytest
import torch
from harness_plugins.peft_vit import harness_add_methods

from harness.scenarios.adapt_protocol import load_task_state, save_task_state

from .conftest import NUM_CLASSES, make_backbone, train_steps

METHODS = {m.name: m for m in harness_add_methods()}
#: Methods whose new modules start at zero: the model at step 0 is the backbone.
ZERO_INIT = (
    "linear", "full-finetune", "bitfit", "lora", "adaptformer", "fact-tt", "fact-tk", "convpass",
)
D, L, HEAD = 96, 4, 96 * NUM_CLASSES + NUM_CLASSES


def attach(name: str, seed: int = 0, **params):
    model = make_backbone(seed)
    return METHODS[name].attach(model, params, ctx=None)


@pytest.mark.parametrize("name", [n for n in ZERO_INIT if n in METHODS])
def test_zero_initialised_methods_start_as_the_backbone(name, backbone, pixels) -> None:
    with torch.no_grad():
        expected = backbone(pixel_values=pixels).logits
        got = attach(name).eval()(pixel_values=pixels).logits
    assert torch.equal(got, expected)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_frozen_backbone_stays_frozen(name, pixels) -> None:
    model = attach(name)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    train_steps(model, pixels)
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert params[n].grad is None, n
        assert torch.equal(params[n], before), n
    assert any(not torch.equal(params[n], before) for n, before in trained.items())
    backbone_names = {n for n, _ in make_backbone().named_parameters()} - {
        "classifier.weight", "classifier.bias"}  # fmt: skip
    trains_backbone = {n for n in trained if n in backbone_names}
    if name == "full-finetune":
        assert trains_backbone == backbone_names
    elif name == "bitfit":
        assert trains_backbone == {n for n in backbone_names if n.endswith(".bias")}
    else:
        assert not trains_backbone


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_stored_task_rebuilds_the_same_model(name, pixels, tmp_path) -> None:
    model = attach(name)
    train_steps(model, pixels)
    method = METHODS[name]
    size = save_task_state(method.task_state(model, {}), tmp_path / "task.safetensors")
    assert size == (tmp_path / "task.safetensors").stat().st_size
    rebuilt = attach(name, seed=1)
    template = method.task_state(rebuilt, {})
    method.load_task_state(rebuilt, load_task_state(tmp_path / "task.safetensors", template), {})
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(pixel_values=pixels).logits, model(pixel_values=pixels).logits)


def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_baseline_parameter_counts_match_their_closed_forms() -> None:
    assert trainable(attach("linear")) == HEAD
    everything = sum(p.numel() for p in make_backbone().parameters())
    assert trainable(attach("full-finetune")) == everything
    biases = sum(p.numel() for n, p in make_backbone().named_parameters()
                 if n.endswith(".bias") and not n.startswith("classifier"))
    assert trainable(attach("bitfit")) == biases + HEAD
    # q and v in every block: A is r x d, B is d x r.
    assert trainable(attach("lora", rank=4)) == L * 2 * (2 * 4 * D) + HEAD
    assert trainable(attach("adaptformer", dim=8)) == L * (2 * D * 8 + 8 + D) + HEAD
    assert trainable(attach("vpt", prompts=5)) == L * 5 * D + HEAD
    assert trainable(attach("vpt", prompts=5, deep=False)) == 5 * D + HEAD


@pytest.mark.parametrize("deep", [True, False])
def test_vpt_prompts_reach_the_class_token(deep, backbone, pixels) -> None:
    seen: list[int] = []
    model = attach("vpt", prompts=3, deep=deep)
    for block in model.vit.layers:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        out = model.eval()(pixel_values=pixels).logits
        base = backbone(pixel_values=pixels).logits
    # 16 patches + CLS + 3 prompts enter every block (this hook runs after VPT's own).
    assert seen == [20] * L
    assert not torch.equal(out, base)
