"""Fixtures of the MoLE-family tests: a fake run context and a tiny fp32 Llama config."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import LlamaConfig

from harness.api import Recorder


@pytest.fixture
def ctx() -> SimpleNamespace:
    """What a method's ``build``/``inference`` read of the run context, on CPU."""
    return SimpleNamespace(device="cpu", recorder=Recorder())


@pytest.fixture
def config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
