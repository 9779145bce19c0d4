"""The MoLE family on a real GPU: what only exists on CUDA.

MoLE's lookup table in pinned host memory, gathered into a pinned staging buffer and copied
on a side stream; the offloaded MoE's experts in pinned host memory, loaded on demand. The
CPU tests check the algorithms; these check that the CUDA paths give the same logits and
count the bytes that really cross to the device. Skipped without CUDA.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from harness.api import Recorder

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

PARAMS = {"lr": 3e-3, "experts": 4, "expert_hidden": None, "lut_dtype": "float32",
          "lut_device": "host"}
MOE = {"lr": 3e-3, "experts": 6, "top_k": 2, "expert_hidden": None, "aux_coef": 0.01,
       "z_coef": 0.001}


@pytest.fixture
def config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip


@pytest.fixture
def ctx() -> SimpleNamespace:
    return SimpleNamespace(device="cuda", recorder=Recorder())


def test_mole_lookup_from_pinned_host_memory_is_exact_and_counted(config, ctx) -> None:
    from harness_plugins.mole import MoLE
    from transformers import DynamicCache

    torch.manual_seed(0)
    model = MoLE().build(config, PARAMS, ctx).eval()
    lookup = MoLE().inference(model, PARAMS, ctx)
    assert lookup.host_bytes() == 50 * 2 * 4 * 32 * 4  # V·L·N·d·fp32
    ids = torch.randint(0, 50, (2, 8), device="cuda")
    caches = DynamicCache(config=config), DynamicCache(config=config)
    lookup.reset_counters()
    with torch.no_grad():
        for step in [ids[:, :5]] + [ids[:, t:t + 1] for t in range(5, 8)]:
            a = model(input_ids=step, past_key_values=caches[0], use_cache=True).logits
            b = lookup(input_ids=step, past_key_values=caches[1], use_cache=True).logits
            assert (a - b).abs().max() <= 1e-5
    torch.cuda.synchronize()
    assert lookup.counters()["h2d_bytes"][0] == 2 * 8 * 2 * 4 * 32 * 4


@pytest.mark.parametrize("dtype", ["int8", "nf4"])
def test_quantized_lookup_decodes_on_the_device_as_on_the_host(config, ctx, dtype) -> None:
    """The side stream copies codes and scales only, and bitsandbytes' CUDA dequantization
    gives the rows its CPU dequantization gives."""
    pytest.importorskip("bitsandbytes")
    from harness_plugins.mole import MoLE

    torch.manual_seed(0)
    params = {**PARAMS, "lut_dtype": dtype, "lut_block": 64}
    model = MoLE().build(config, params, ctx).eval()
    lookup = MoLE().inference(model, params, ctx)
    assert lookup.table.device.type == "cpu" and lookup.table.parts[0].is_pinned()
    ids = torch.randint(0, 50, (2, 8), device="cuda")
    rows, event = lookup._gather(ids)
    torch.cuda.current_stream().wait_event(event)
    on_host = lookup.table.rows(ids.reshape(-1).cpu()).view(rows.shape)
    torch.testing.assert_close(rows.cpu().float(), on_host.float(), atol=1e-6, rtol=0)
    assert lookup.counters()["h2d_bytes"][0] == 16 * lookup.table.row_bytes()
    with torch.no_grad():
        delta = (model(input_ids=ids).logits - lookup(input_ids=ids).logits).abs().max()
    assert 0 < delta < 0.5


def test_moe_offload_matches_moe_and_loads_only_missing_experts(config, ctx) -> None:
    from harness_plugins.mole import MoE, MoEOffload

    torch.manual_seed(0)
    model = MoE().build(config, MOE, ctx).eval()
    offloaded = MoEOffload().inference(model, MOE, ctx)
    ids = torch.randint(0, 50, (1, 6), device="cuda")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = offloaded(input_ids=ids).logits
        assert (expected - got).abs().max() <= 1e-5
        first = offloaded.counters()["expert_loads"][0]
        offloaded(input_ids=ids)  # the same tokens: the same experts, all resident
    assert 0 < first <= 2 * 6
    assert offloaded.counters()["expert_loads"][0] == first
