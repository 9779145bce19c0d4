from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from harness_plugins.weight_compression import harness_add_methods
from harness_plugins.weight_compression.rtn import RTN, RTNParams, fake_quantize
from pydantic import ValidationError
from transformers import LlamaConfig, LlamaForCausalLM

from harness.api import Method, Recorder

CTX = SimpleNamespace(recorder=Recorder(), device="cpu")


def small_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_family_registers_three_methods_for_perplexity() -> None:
    methods = harness_add_methods()
    assert [m.name for m in methods] == ["dense", "rtn", "magnitude"]
    for method in methods:
        assert isinstance(method, Method)
        assert method.scenarios == ("perplexity", "lm_eval")
        assert callable(method.apply) and callable(method.storage_bytes)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size", [16, 32, 100])
def test_error_is_at_most_half_a_step(bits: int, group_size: int) -> None:
    torch.manual_seed(bits)
    weight = torch.randn(24, 80) * torch.rand(24, 1) * 3
    dequantized, scales = fake_quantize(weight, bits, group_size)
    groups = -(-80 // group_size)
    assert scales.shape == (24, groups)
    per_weight_scale = scales.repeat_interleave(group_size, dim=1)[:, :80]
    assert ((dequantized - weight).abs() <= per_weight_scale / 2 * (1 + 1e-5) + 1e-7).all()
    for start in range(0, 80, group_size):
        for row in dequantized[:, start : start + group_size]:
            assert len(row.unique()) <= 2**bits


def test_group_extremes_are_exact_and_constant_groups_survive() -> None:
    weight = torch.tensor([[0.5, 0.5, 0.5, 0.5, -1.0, 0.25, 2.0, 0.0]])
    dequantized, _ = fake_quantize(weight, bits=2, group_size=4)
    assert torch.equal(dequantized[0, :4], weight[0, :4])
    assert dequantized[0, 4] == -1.0 and torch.isclose(dequantized[0, 6], torch.tensor(2.0))


def test_keeps_the_weight_dtype() -> None:
    weight = torch.randn(8, 64, dtype=torch.bfloat16)
    dequantized, _ = fake_quantize(weight, 4, 32)
    assert dequantized.dtype == torch.bfloat16


def test_eight_bits_leave_the_output_nearly_unchanged() -> None:
    model = small_llama()
    ids = torch.randint(3, 259, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        dense = model(input_ids=ids).logits
    RTN().apply(model, {"bits": 8}, CTX)
    with torch.inference_mode():
        quantized = model(input_ids=ids).logits
    assert (quantized - dense).abs().max() < 0.02 * dense.abs().max()
    assert (quantized.argmax(-1) == dense.argmax(-1)).float().mean() > 0.95


def test_lm_head_is_skipped_unless_asked() -> None:
    model = small_llama()
    q_proj = model.model.layers[0].self_attn.q_proj
    head, attention = model.lm_head.weight.clone(), q_proj.weight.clone()
    RTN().apply(model, {"bits": 2}, CTX)
    assert torch.equal(model.lm_head.weight, head)
    assert not torch.equal(q_proj.weight, attention)
    RTN().apply(model, {"bits": 2, "skip_lm_head": False}, CTX)
    assert not torch.equal(model.lm_head.weight, head)


@pytest.mark.parametrize(("bits", "expected_codes"), [(4, 1200), (3, 900), (2, 600), (8, 2400)])
def test_storage_bytes_of_a_known_linear(bits: int, expected_codes: int) -> None:
    layer = torch.nn.Sequential(torch.nn.Linear(100, 24))  # 24 rows x 100 cols, fp32 bias
    groups = 24 * 4  # ceil(100 / 32) groups per row
    expected = expected_codes + groups * (2 + 2) + 24 * 4
    params = {"bits": bits, "group_size": 32}
    assert RTN().storage_bytes(RTN().apply(layer, params, CTX), params) == expected


def test_storage_bytes_of_a_model_counts_the_head_dense() -> None:
    model = small_llama()
    params = {"bits": 4, "group_size": 64}
    linears = [m for m in model.model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = sum(m.weight.numel() // 2 + m.weight.numel() // 64 * 4 for m in linears)
    others = sum(p.numel() * 4 for p in model.parameters()) - sum(
        m.weight.numel() * 4 for m in linears
    )
    assert RTN().storage_bytes(model, params) == quantized + others


def test_params_are_validated() -> None:
    assert RTNParams().model_dump() == {"bits": 4, "group_size": 64, "skip_lm_head": True}
    with pytest.raises(ValidationError):
        RTNParams(bits=5)
    with pytest.raises(ValidationError):
        RTNParams(group_size=0)
    with pytest.raises(ValidationError):
        RTN().apply(small_llama(), {"bitz": 4}, CTX)
