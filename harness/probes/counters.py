"""Static counters: parameter counts and the bytes a set of tensors occupies.

Parameter-efficient methods are judged by trainable parameters and by the bytes each task
adds (adapters, masks, codebooks); both must count tied or shared tensors once, or a model
with tied embeddings looks bigger than the file it saves to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["count_parameters", "tensor_bytes"]


def count_parameters(module: Any) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts of a torch module; shared parameters once."""
    seen: set[int] = set()
    total = trainable = 0
    for param in module.parameters():  # already de-duplicated by identity; be sure anyway
        if id(param) in seen:
            continue
        seen.add(id(param))
        n = int(param.numel())
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def tensor_bytes(tensors: Any) -> int:
    """Bytes held by ``tensors``: a tensor, a state_dict (any mapping) or an iterable of them.

    Nested mappings and sequences are walked (an optimizer's ``state_dict`` works);
    non-tensor values are skipped. Views of the same memory (tied weights appear twice in a
    ``state_dict``) are counted once, as ``torch.save`` stores them once.
    """
    import torch

    seen: set[tuple[Any, ...]] = set()
    total = 0

    def visit(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            key: tuple[Any, ...]
            ptr = obj.data_ptr() if obj.device.type != "meta" else 0
            if ptr:
                key = (str(obj.device), ptr, obj.numel(), obj.dtype, tuple(obj.stride()))
            else:  # meta / empty tensors have no address: count each object once
                key = ("id", id(obj))
            if key not in seen:
                seen.add(key)
                total += obj.numel() * obj.element_size()
        elif isinstance(obj, Mapping):
            for value in obj.values():
                visit(value)
        elif isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, bytearray)):
            for value in obj:
                visit(value)

    visit(tensors)
    return total
