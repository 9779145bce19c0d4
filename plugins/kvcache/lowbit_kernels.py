"""Attention over packed low-bit K/V without dequantizing them into memory.

Scoring a query against 1-bit keys by unpacking them in eager PyTorch writes (and reads back)
a full-size dequantized copy of the keys: at 128k tokens that costs several times what
scoring 16-bit keys does, which would cancel SpeCache's speed-up. The two operations decode
needs are therefore fused kernels on CUDA (:mod:`.lowbit_triton`, Triton, imported only when
a CUDA tensor asks for it), with the pure-PyTorch definitions here as the CPU path and as
the reference the kernels are tested against:

* :func:`score_keys` — ``query [H, M, D] · Kᵀ`` for per-channel quantized keys ``[H, N, D]``
  (``M`` = query rows sharing a KV head: GQA group × tokens), float32 ``[H, M, N]``;
* :func:`aggregate_values` — ``probs [H, M, N] · V`` for per-token quantized values,
  float32 ``[H, M, D]``.

Both follow the model's precision the way eager attention does: the dequantized elements
(and the probabilities) are rounded to the query's (values: the model's) dtype, and their
products are accumulated in float32. The layout is :mod:`.quant`'s (codes packed along
channels, fp16 scale and zero per group).
"""

from __future__ import annotations

import functools
import importlib.util
from typing import TYPE_CHECKING

from .quant import Packed, dequantize

if TYPE_CHECKING:
    import torch

__all__ = [
    "aggregate_values",
    "aggregate_values_reference",
    "score_keys",
    "score_keys_reference",
    "triton_available",
]


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (the fused kernels need it and a CUDA device)."""
    return importlib.util.find_spec("triton") is not None


def score_keys_reference(query: torch.Tensor, keys: Packed) -> torch.Tensor:
    """``query [H, M, D]`` against quantized keys ``[H, N, D]``: float32 scores ``[H, M, N]``."""
    import torch

    keys_ = dequantize(keys, query.dtype).float()
    return torch.matmul(query.float(), keys_.transpose(-1, -2))


def aggregate_values_reference(
    probs: torch.Tensor, values: Packed, dtype: torch.dtype
) -> torch.Tensor:
    """``probs [H, M, N]`` times quantized values ``[H, N, D]``, in ``dtype``: float32
    ``[H, M, D]``."""
    import torch

    return torch.matmul(probs.to(dtype).float(), dequantize(values, dtype).float())


def score_keys(query: torch.Tensor, keys: Packed) -> torch.Tensor:
    """:func:`score_keys_reference`, by the fused kernel on CUDA when Triton is there."""
    if query.is_cuda and triton_available():
        from . import lowbit_triton

        return lowbit_triton.score_keys(query, keys)
    return score_keys_reference(query, keys)


def aggregate_values(probs: torch.Tensor, values: Packed, dtype: torch.dtype) -> torch.Tensor:
    """:func:`aggregate_values_reference`, by the fused kernel on CUDA when Triton is there."""
    if probs.is_cuda and triton_available():
        from . import lowbit_triton

        return lowbit_triton.aggregate_values(probs, values, dtype)
    return aggregate_values_reference(probs, values, dtype)
