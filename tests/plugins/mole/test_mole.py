"""MoLE: the re-parameterised lookup form is exact, its table and transfers have the sizes
the method's docstring gives, and the training form learns."""

from __future__ import annotations

import pytest
import torch
from harness_plugins.mole import MoLE
from harness_plugins.mole.modeling import MoLEForCausalLM, MoLELookupForCausalLM
from transformers import DynamicCache, LlamaForCausalLM

from harness.scenarios.lm_train_protocol import InferenceCosts, parameter_bytes

METHOD = MoLE()
PARAMS = {"lr": 3e-3, "experts": 4, "expert_hidden": None, "lut_dtype": "float32"}


def trained(config, ctx, **params):
    torch.manual_seed(0)
    model = METHOD.build(config, {**PARAMS, **params}, ctx)
    return model.eval()


def test_build_is_a_llama_in_train_mode(config, ctx) -> None:
    model = METHOD.build(config, PARAMS, ctx)
    assert isinstance(model, MoLEForCausalLM) and isinstance(model, LlamaForCausalLM)
    assert model.training
    layer = model.model.layers[0].mlp
    assert len(layer.experts) == 4 and layer.router.out_features == 4
    assert layer.experts[0].gate_proj.out_features == config.intermediate_size
    out = model(input_ids=torch.randint(0, 50, (2, 6)))
    assert out.logits.shape == (2, 6, 50) and getattr(out, "aux_loss", None) is None


def test_lookup_logits_equal_training_form_prefill(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    assert isinstance(lookup, MoLELookupForCausalLM)
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        delta = (model(input_ids=ids).logits - lookup(input_ids=ids).logits).abs().max()
    assert delta <= 1e-5


def test_lookup_logits_equal_training_form_incremental_decode(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(2))
    caches = DynamicCache(config=config), DynamicCache(config=config)
    steps = [ids[:, :5]] + [ids[:, t : t + 1] for t in range(5, 8)]
    with torch.no_grad():
        for step in steps:
            a = model(input_ids=step, past_key_values=caches[0], use_cache=True)
            b = lookup(input_ids=step, past_key_values=caches[1], use_cache=True)
            assert (a.logits - b.logits).abs().max() <= 1e-5
            assert b.past_key_values is caches[1]
        # and decoding with the cache is the full forward's last position
        full = model(input_ids=ids).logits[:, -1]
    assert (full - b.logits[:, -1]).abs().max() <= 1e-5
    assert caches[1].get_seq_length() == 8


def test_experts_see_only_the_current_tokens_embedding(config, ctx) -> None:
    """In decode, a layer's routed experts get the step's tokens' embeddings (not the
    prompt's): the step's output depends on the step's token through that path too."""
    model = trained(config, ctx)
    seen = []
    model.model.layers[0].mlp.norm.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    cache = DynamicCache(config=config)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        model(input_ids=torch.tensor([[9]]), past_key_values=cache, use_cache=True)
    assert seen[0].shape == (1, 5, 32) and seen[1].shape == (1, 1, 32)
    torch.testing.assert_close(seen[1][0, 0], model.model.embed_tokens.weight[9])


#: Bytes a row of the 2-layer, 4-expert, d=32 test table takes: 256 values, stored as a float
#: dtype, or as int8 / nf4 codes plus one fp32 absmax per 64-value block.
ROW_BYTES = {"float32": 256 * 4, "float16": 256 * 2, "bfloat16": 256 * 2,
             "int8": 256 + 4 * 4, "nf4": 128 + 4 * 4}  # fmt: skip


@pytest.mark.parametrize("dtype", sorted(ROW_BYTES))
def test_lut_size(config, ctx, dtype) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, {**PARAMS, "lut_dtype": dtype, "lut_block": 64}, ctx)
    table = lookup.table
    assert table.width == 2 * 4 * 32
    assert table.row_bytes() == ROW_BYTES[dtype]
    assert lookup.host_bytes() == table.nbytes() == 50 * ROW_BYTES[dtype]
    stored = {t.data_ptr() for t in table.parts}
    assert not any(t.data_ptr() in stored for t in lookup.parameters())
    assert lookup.figures()["lut_row_bytes"] == (ROW_BYTES[dtype], "bytes")


def test_lookup_table_rows_are_the_experts_outputs(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    table = lookup.table.rows(torch.arange(50)).view(50, 2, 4, 32)
    layer = model.model.layers[1].mlp
    with torch.no_grad():
        expected = layer.experts[3](layer.norm(model.model.embed_tokens.weight[17]))
    torch.testing.assert_close(table[17, 1, 3], expected)
    assert lookup.figures()["lut_rel_rms_error"] == (0.0, "ratio")


@pytest.mark.parametrize(("dtype", "most"), [("float16", 1e-3), ("int8", 0.03), ("nf4", 0.15)])
def test_quantized_table_error_is_measured_and_gathering_is_exact(config, ctx, dtype,
                                                                  most) -> None:  # fmt: skip
    model = trained(config, ctx)
    lookup = METHOD.inference(model, {**PARAMS, "lut_dtype": dtype}, ctx)
    with torch.no_grad():
        exact = model.expert_outputs(0, 50)
    stored = lookup.table.rows(torch.arange(50)).float()
    rel = float((stored - exact).norm() / exact.norm())
    figures = lookup.figures()
    assert figures["lut_rel_rms_error"][0] == pytest.approx(rel, rel=1e-4)
    assert 0 < rel < most
    assert figures["lut_max_abs_error"][0] == pytest.approx(float((stored - exact).abs().max()))
    # Gathering rows by id (codes and scales alike) decodes to the whole table's rows.
    ids = torch.tensor([7, 3, 7, 49, 0])
    torch.testing.assert_close(lookup.table.rows(ids), lookup.table.rows(torch.arange(50))[ids])


@pytest.mark.parametrize(("dtype", "most"), [("int8", 0.05), ("nf4", 0.5)])
def test_quantized_lookup_logits_stay_close(config, ctx, dtype, most) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, {**PARAMS, "lut_dtype": dtype}, ctx)
    ids = torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, lookup(input_ids=ids).logits
    assert 0 < float((a - b).abs().max()) < most


def test_lut_block_must_be_a_power_of_two_that_divides_the_row(config, ctx) -> None:
    with pytest.raises(ValueError, match="power of two"):
        METHOD.params(lut_block=96)
    model = trained(config, ctx)
    with pytest.raises(ValueError, match="does not divide the table's row of 256"):
        METHOD.inference(model, {**PARAMS, "lut_dtype": "nf4", "lut_block": 512}, ctx)


def test_trained_as_leaves_out_the_table_storage() -> None:
    a = METHOD.trained_as(METHOD.params(lut_dtype="nf4", lut_device="device").model_dump())
    b = METHOD.trained_as(METHOD.params().model_dump())
    assert a == b and a["name"] == "mole"
    assert "lut_dtype" not in a["params"] and a["params"]["experts"] == 4
    c = METHOD.trained_as(METHOD.params(experts=16).model_dump())
    assert c != b


@pytest.mark.parametrize("dtype", ["float16", "float32", "nf4"])
def test_h2d_counter_is_gathered_rows(config, ctx, dtype) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, {**PARAMS, "lut_dtype": dtype, "lut_block": 64}, ctx)
    assert isinstance(lookup, InferenceCosts)
    with torch.no_grad():
        lookup(input_ids=torch.randint(0, 50, (3, 7)))
    assert lookup.counters() == {"h2d_bytes": (3 * 7 * ROW_BYTES[dtype], "bytes")}
    lookup.reset_counters()
    assert lookup.counters()["h2d_bytes"][0] == 0


def test_lut_on_device_copies_nothing(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, {**PARAMS, "lut_device": "device"}, ctx)
    with torch.no_grad():
        lookup(input_ids=torch.randint(0, 50, (2, 4)))
    assert lookup.counters()["h2d_bytes"][0] == 0
    assert lookup.host_bytes() == 0
    assert lookup.device_bytes() > 50 * 2 * 4 * 32 * 4


def test_device_bytes_exclude_the_experts_and_host_lut(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    dense_and_routers = sum(p.numel() for p in lookup.parameters()) * 4
    assert lookup.device_bytes() == parameter_bytes(lookup)
    rope = sum(b.numel() * b.element_size() for b in lookup.buffers())
    assert lookup.device_bytes() == dense_and_routers + rope
    routers = 2 * 4 * 32
    dense = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert dense_and_routers == (dense + routers) * 4


def test_lookup_shares_the_trained_weights(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    assert (
        lookup.model.layers[0].self_attn.q_proj.weight
        is model.model.layers[0].self_attn.q_proj.weight
    )
    assert all(b.device.type == "cpu" for b in lookup.buffers())


def test_active_params(config, ctx) -> None:
    model = trained(config, ctx)
    lookup = METHOD.inference(model, PARAMS, ctx)
    total = sum(p.numel() for p in model.parameters())
    active = METHOD.active_params(model, PARAMS)
    assert active < total
    assert active == sum(p.numel() for p in lookup.parameters())
    assert METHOD.active_params(lookup, PARAMS) == active
    experts = 2 * (4 * 3 * 32 * 64 + 32)  # layers · (experts · 3 matrices + norm)
    assert total - active == experts


def test_training_reduces_the_loss(config, ctx) -> None:
    torch.manual_seed(0)
    model = METHOD.build(config, PARAMS, ctx)
    ids = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        logits = model(input_ids=ids[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    assert model.model.layers[0].mlp.experts[0].gate_proj.weight.grad is not None


def test_params_defaults() -> None:
    p = METHOD.params()
    assert (p.experts, p.expert_hidden, p.lut_dtype, p.lut_device) == (4, None, "float16", "host")
    assert p.lut_block == 128
    with pytest.raises(ValueError):
        METHOD.params(lut_dtype="int4")
