"""The visual-prompting connectors: MemVP's FFN memory, input-space prefix, text-only LoRA."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from harness_plugins.vl_prompting import MemVP, Prefix, TextOnly
from harness_plugins.vl_prompting.memvp import MemVPParams
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

from harness.scenarios.vqa_protocol import patch_features

WIDTH, LAYERS, FFN, FEATURES, ENCODER_LAYERS = 32, 2, 48, 24, 2


def models() -> tuple[Any, Any]:
    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=40, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
    )).eval()  # fmt: skip
    encoder = ViTModel(ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=FEATURES,
        num_hidden_layers=ENCODER_LAYERS, num_attention_heads=4, intermediate_size=32,
    )).eval()  # fmt: skip
    return lm.requires_grad_(False), encoder.requires_grad_(False)  # as the scenario hands them


def connect(method: Any, **params: Any) -> Any:
    lm, encoder = models()
    return method.connect(lm, encoder, method.params(**params).model_dump(), None)


IDS = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
MASK = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
IMAGES = torch.rand(2, 3, 16, 16)


def as_if_trained(method: Any) -> Any:
    """``method``'s connector (4 visual tokens where it takes any) in eval mode, its trainable
    weights drawn at random as if trained: every path contributes to the output."""
    params = {} if isinstance(method, TextOnly) else {"visual_tokens": 4}
    connector = connect(method, **params).eval()
    with torch.no_grad():
        for w in connector.parameters():
            if w.requires_grad:
                w.normal_(0, 0.2)
    return connector


def trainable(connector: Any) -> int:
    return sum(w.numel() for w in connector.parameters() if w.requires_grad)


def projector_params(hidden: int) -> int:
    return FEATURES * hidden + hidden + hidden * WIDTH + WIDTH


def test_memvp_trains_projector_memory_slots_and_encoder_adapters_only() -> None:
    connector = connect(MemVP(), visual_tokens=4, encoder_adapter_dim=3, projector_hidden=10)
    adapters = ENCODER_LAYERS * (FEATURES * 3 + 3 * FEATURES)  # bias-free down and up
    # one P_k and one P_v for every layer, as the official code shares them, over the visual
    # tokens and the 64 adapter slots beyond them
    assert trainable(connector) == projector_params(10) + 2 * (4 + 64) * WIDTH + adapters
    assert trainable(connect(MemVP(), visual_tokens=16, encoder_adapter_dim=0,
                             adapter_slots=0)) == projector_params(128) + 2 * 16 * WIDTH


def test_prefix_and_text_only_train_lora_and_the_projector() -> None:
    lora = LAYERS * 2 * (8 * WIDTH + WIDTH * 8)
    assert trainable(connect(TextOnly())) == lora
    assert trainable(connect(Prefix(), visual_tokens=4, projector_hidden=10)) == (
        lora + projector_params(10)
    )


def test_memvp_with_zero_features_is_a_text_only_ffn_adapter() -> None:
    connector = connect(MemVP(), visual_tokens=4, dropout=0.0).eval()
    memory, slots = connector.memories[0], connector.slots
    with torch.no_grad():
        slots.values.normal_()  # trained values: the adapter now changes the output
    x = torch.randn(2, 5, WIDTH)
    zeros = torch.zeros(2, 4, WIDTH)
    memory.memory = zeros
    adapter = memory.ffn(x) + 0.1 * (torch.nn.functional.silu(x @ slots.keys.T) @ slots.values)
    torch.testing.assert_close(memory(x), adapter)
    memory.memory = None
    with torch.no_grad():
        zeroed = connector(zeros, IDS, MASK).logits
        alone = connector(None, IDS, MASK).logits
        seen = connector(connector.encode(IMAGES), IDS, MASK).logits
    torch.testing.assert_close(zeroed, alone)
    assert not torch.allclose(seen, alone)


def test_memvp_reads_visual_features_as_ffn_keys_and_values() -> None:
    connector = connect(MemVP(), visual_tokens=4, dropout=0.0).eval()
    memory, slots = connector.memories[1], connector.slots
    with torch.no_grad():
        slots.values.normal_()
        z = connector.encode(IMAGES)
        features = patch_features(connector.encoder, IMAGES, 4)
        torch.testing.assert_close(z, 0.01 * connector.projector(features))
        z = torch.randn_like(z)  # as a trained projector's features: large enough to matter
        x = torch.randn(2, 5, WIDTH)
        memory.memory = z
        assert slots.keys.shape[0] == 4 + 64  # the adapter slots read a zero Z
        padded = torch.cat([z, torch.zeros(2, 64, WIDTH)], dim=1)
        keys, values = padded + slots.keys, padded + slots.values
        expected = memory.ffn(x) + 0.1 * (
            torch.nn.functional.silu(x @ keys.transpose(1, 2)) @ values
        )
        torch.testing.assert_close(memory(x), expected)


def test_memvp_encoder_adapters_start_as_the_frozen_encoder_and_then_change_it() -> None:
    lm, encoder = models()
    before = patch_features(encoder, IMAGES, 4)
    connector = MemVP().connect(lm, encoder, MemVPParams(visual_tokens=4).model_dump(), None)
    connector.eval()
    with torch.no_grad():
        torch.testing.assert_close(patch_features(connector.encoder, IMAGES, 4), before)
        for block in connector.encoder.layers:
            block.mlp.up.weight.normal_()
        assert not torch.allclose(patch_features(connector.encoder, IMAGES, 4), before)


@pytest.mark.parametrize("method,grows", [(MemVP(), 0), (Prefix(), 4), (TextOnly(), 0)])
def test_the_lm_sees_the_text_alone_or_with_the_visual_tokens(method: Any, grows: int) -> None:
    params = {} if isinstance(method, TextOnly) else {"visual_tokens": 4}
    connector = connect(method, **params).eval()
    seen: list[int] = []
    layer = connector.lm.model.layers[0]
    layer.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args or [kwargs.get("hidden_states")])[0].shape[1]),
        with_kwargs=True,
    )
    with torch.no_grad():
        logits = connector(connector.encode(IMAGES), IDS, MASK).logits
    assert seen == [IDS.shape[1] + grows]
    assert logits.shape[:2] == IDS.shape


@pytest.mark.parametrize("method", [MemVP(), Prefix(), TextOnly()])
def test_decoding_from_the_cache_matches_a_full_forward(method: Any) -> None:
    connector = as_if_trained(method)
    with torch.no_grad():
        visual = connector.encode(IMAGES)
        cache = DynamicCache()
        connector(visual, IDS, MASK, past_key_values=cache)
        token = torch.tensor([[9], [11]])
        grown = torch.cat([MASK, torch.ones(2, 1, dtype=MASK.dtype)], dim=1)
        step = connector(visual, token, grown, past_key_values=cache).logits[:, -1]
        full = connector(visual, torch.cat([IDS, token], 1), grown).logits[:, -1]
    torch.testing.assert_close(step, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", [MemVP(), Prefix(), TextOnly()])
def test_left_padding_does_not_change_a_prompt_answer(method: Any) -> None:
    connector = as_if_trained(method)
    with torch.no_grad():
        visual = connector.encode(IMAGES[:1])
        padded = connector(visual, IDS[:1], MASK[:1]).logits[:, -1]
        alone = connector(visual, IDS[:1, 2:], MASK[:1, 2:]).logits[:, -1]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", [MemVP(), Prefix(), TextOnly()])
def test_training_leaves_the_lm_and_encoder_weights_alone(method: Any) -> None:
    lm, encoder = models()
    frozen = [*lm.parameters(), *encoder.parameters()]
    before = [w.detach().clone() for w in frozen]
    params = {} if isinstance(method, TextOnly) else {"visual_tokens": 4}
    connector = method.connect(lm, encoder, method.params(**params).model_dump(), None)
    optimizer = torch.optim.SGD([w for w in connector.parameters() if w.requires_grad], lr=0.1)
    logits = connector(connector.encode(IMAGES), IDS, MASK).logits
    logits.logsumexp(-1).mean().backward()
    optimizer.step()
    assert all(not w.requires_grad and w.grad is None for w in frozen)
    for weight, original in zip(frozen, before, strict=True):
        assert torch.equal(weight, original)


def test_visual_tokens_must_pool_the_patch_grid() -> None:
    connector = connect(MemVP(), visual_tokens=9)
    with pytest.raises(ValueError, match=r"visual_tokens=9 .* one of 16, 4, 1"):
        connector.encode(IMAGES)
