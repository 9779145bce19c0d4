"""Helpers shared by the weight-compression methods: which layers they touch, what bytes cost."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def target_linears(model: torch.nn.Module, skip_lm_head: bool) -> list[torch.nn.Linear]:
    """Every ``nn.Linear`` of ``model``, less the output head when ``skip_lm_head``.

    Keeping the head in full precision is what GPTQ/AWQ/SparseGPT do by default: it is a small
    share of a large model's weights and a large share of its sensitivity. The head is what a
    transformers model's ``get_output_embeddings()`` returns; a plain module has none.
    """
    import torch

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if skip_lm_head and get_head is not None else None
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` at its own dtype."""
    return tensor.numel() * tensor.element_size()


def storage_bytes(model: torch.nn.Module, compressed: Mapping[int, int]) -> int:
    """Bytes to store ``model``'s parameters: ``compressed[id(param)]`` where given, else dense.

    ``model.parameters()`` yields a shared (tied) tensor once, so it is counted once.
    """
    return sum(compressed.get(id(p), tensor_bytes(p)) for p in model.parameters())
