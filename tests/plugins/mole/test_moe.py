"""The baselines: ``dense-lm`` is transformers' Llama, ``moe`` routes each token to exactly
top_k experts with a positive auxiliary loss, ``moe-offload`` is CUDA only and its expert
cache loads only the experts a step lacks."""

from __future__ import annotations

import pytest
import torch
from harness_plugins.mole import DenseLM, MoE, MoEOffload, harness_add_methods
from harness_plugins.mole.modeling import ExpertCache, MoEForCausalLM, OffloadMoEForCausalLM
from transformers import DynamicCache, LlamaForCausalLM

from harness.api import Unsupported
from harness.scenarios.lm_train_protocol import LMTrainParams

MOE = {"lr": 3e-3, "experts": 6, "top_k": 2}


def test_registered_methods() -> None:
    methods = {m.name: m for m in harness_add_methods()}
    assert set(methods) == {"dense-lm", "mole", "moe", "moe-offload"}
    for method in methods.values():
        assert method.scenarios == ("lm_train", "lm_eval")
        assert issubclass(method.params, LMTrainParams)


def test_dense_lm_builds_a_llama(config, ctx) -> None:
    model = DenseLM().build(config, {"lr": 1e-3}, ctx)
    assert type(model) is LlamaForCausalLM and model.training
    assert model(input_ids=torch.randint(0, 50, (1, 4))).logits.shape == (1, 4, 50)


def test_moe_routes_top_k_and_has_aux_loss(config, ctx) -> None:
    torch.manual_seed(0)
    model = MoE().build(config, MOE, ctx)
    assert isinstance(model, MoEForCausalLM) and model.training
    assert model.model.layers[0].mlp.experts[0].gate_proj.out_features == 32  # 64 // 2
    counts = []
    for layer in model.model.layers:
        for e, expert in enumerate(layer.mlp.experts):
            expert.register_forward_hook(lambda m, a, o, e=e: counts.append(a[0].shape[0]))
    out = model(input_ids=torch.randint(0, 50, (2, 5)))
    for layer in model.model.layers:
        selected = layer.mlp.last_selected
        assert selected.shape == (10, 2)
        assert all(len(set(row)) == 2 for row in selected.tolist())
    assert sum(counts) == 2 * 10 * 2  # layers · tokens · top_k expert evaluations
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    out.aux_loss.backward()
    assert model.model.layers[0].mlp.router.weight.grad is not None
    model.eval()
    assert model(input_ids=torch.randint(0, 50, (2, 5))).aux_loss is None


def test_moe_aux_loss_is_balance_plus_z(config, ctx) -> None:
    torch.manual_seed(0)
    model = MoE().build(config, {**MOE, "aux_coef": 0.0, "z_coef": 0.0}, ctx)
    assert model(input_ids=torch.randint(0, 50, (2, 5))).aux_loss.item() == 0.0
    model = MoE().build(config, {**MOE, "aux_coef": 1.0, "z_coef": 0.0}, ctx)
    balance = model(input_ids=torch.randint(0, 50, (2, 5))).aux_loss.item()
    assert 1.0 - 1e-6 <= balance <= 6.0  # N·Σ f·P ≥ 1 at any routing… up to N


def test_moe_active_params(config, ctx) -> None:
    model = MoE().build(config, MOE, ctx)
    total = sum(p.numel() for p in model.parameters())
    expert = 3 * 32 * 32
    assert MoE().active_params(model, MOE) == total - 2 * (6 - 2) * expert
    assert MoEOffload().active_params(model, MOE) < total


def test_moe_offload_is_cuda_only(config, ctx) -> None:
    model = MoEOffload().build(config, MOE, ctx)
    assert isinstance(model, MoEForCausalLM)
    with pytest.raises(Unsupported, match="CUDA"):
        MoEOffload().inference(model, MOE, ctx)


def test_moe_offload_measures_the_moe_runs_trained_model() -> None:
    params = MoE.params(experts=6).model_dump()
    assert MoEOffload().trained_as(params) == MoE().trained_as(params)
    assert MoE().trained_as(params)["name"] == "moe"


def test_expert_cache_loads_only_missing_experts() -> None:
    host = [[torch.full((2, 3), float(e)), torch.zeros(4)] for e in range(5)]
    copied = []

    def copy(tensor, device):
        copied.append(tensor)
        return tensor.clone().to(device)

    cache = ExpertCache(host, torch.device("cpu"), copy)
    first = cache.fetch([0, 3])
    assert set(first) == {0, 3} and cache.loads == 2
    assert cache.loaded_bytes == 2 * (6 + 4) * 4 and len(copied) == 4
    second = cache.fetch([3, 4, 4])
    assert set(second) == {3, 4} and cache.loads == 3  # 3 kept, 4 loaded, 0 dropped
    assert second[3][0] is first[3][0]
    assert cache.loaded_bytes == 3 * 40 and set(cache.resident) == {3, 4}
    cache.fetch([0])
    assert cache.loads == 4  # 0 was dropped after the second step
    assert cache.host_bytes() == 5 * 40 and cache.resident_bytes() == 40


def test_offloaded_moe_matches_the_moe(config, ctx) -> None:
    """The offloaded form (built directly, with a CPU copy function) gives the MoE's logits
    in prefill and decode and counts the experts it loads."""
    torch.manual_seed(0)
    model = MoE().build(config, MOE, ctx).eval()
    offloaded = OffloadMoEForCausalLM.from_trained(model, "cpu", lambda t, d: t.clone())
    ids = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(4))
    caches = DynamicCache(config=config), DynamicCache(config=config)
    with torch.no_grad():
        for step in (ids[:, :5], ids[:, 5:6], ids[:, 6:7]):
            a = model(input_ids=step, past_key_values=caches[0], use_cache=True).logits
            b = offloaded(input_ids=step, past_key_values=caches[1], use_cache=True).logits
            assert (a - b).abs().max() <= 1e-5
    loads = offloaded.counters()["expert_loads"][0]
    assert 2 * 2 <= loads <= 2 * 6 * 3
    assert offloaded.counters()["h2d_bytes"][0] == loads * 3 * 32 * 32 * 4
    assert offloaded.host_bytes() == 2 * 6 * 3 * 32 * 32 * 4
    assert sum(p.numel() for p in offloaded.parameters()) < sum(
        p.numel() for p in model.parameters()
    )
    offloaded.reset_counters()
    assert offloaded.counters()["h2d_bytes"][0] == 0
