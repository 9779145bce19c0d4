"""Fixtures of the KV-cache tests: a fake run context and a small seeded GQA Llama."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.api import Recorder


@pytest.fixture
def ctx() -> SimpleNamespace:
    """What a method's ``make_cache`` reads of the run context, on CPU."""
    return SimpleNamespace(device="cpu", recorder=Recorder())


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    """Random-init Llama with grouped-query attention: 4 query heads over 2 KV heads."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()
