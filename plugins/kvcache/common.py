"""Pieces the caches of the family share.

:class:`EvictingLayer` (seen-token counting and the mask sizes that go with it),
:class:`MeasuredCache` (sums its layers' ``resident_bytes``) and :func:`transformers_class`,
which gives such a plain class its transformers base on first use — so registering the plugin
imports neither torch nor transformers, yet the layers are real ``CacheLayerMixin`` instances.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from harness.scenarios.kv_protocol import allocated_bytes

if TYPE_CHECKING:
    import torch

__all__ = [
    "EvictingLayer",
    "MeasuredCache",
    "budget_tokens",
    "measured_cache",
    "num_layers",
    "tensor_bytes",
    "transformers_class",
]


def tensor_bytes(tensor: torch.Tensor | None) -> int:
    """Bytes of ``tensor``'s own elements at its dtype (0 for None): what a copy of it moves.
    What it keeps allocated is :func:`~harness.scenarios.kv_protocol.allocated_bytes`."""
    return 0 if tensor is None else tensor.numel() * tensor.element_size()


def num_layers(model: Any) -> int:
    """Decoder layers of ``model`` (every one is treated as a full-attention layer)."""
    return model.config.get_text_config(decoder=True).num_hidden_layers


@functools.cache
def transformers_class(cls: type, base: str) -> type:
    """``cls`` with ``transformers.cache_utils.<base>`` (e.g. ``"CacheLayerMixin"``) after it
    in the MRO: ``cls``'s methods win, and its ``super()`` calls reach the transformers class."""
    from transformers import cache_utils

    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__}
    return type(cls.__name__, (cls, getattr(cache_utils, base)), namespace)


class MeasuredCache:
    """A ``Cache`` (base added by :func:`measured_cache`) that reports its layers' bytes."""

    layers: list[Any]

    def resident_bytes(self) -> int:
        return sum(layer.resident_bytes() for layer in self.layers)


def measured_cache(layers: list[Any]) -> Any:
    """A transformers ``Cache`` over ``layers`` that has :meth:`MeasuredCache.resident_bytes`."""
    return transformers_class(MeasuredCache, "Cache")(layers=layers)


class EvictingLayer:
    """A cache layer (base ``CacheLayerMixin``) that keeps a subset of the tokens it has seen
    at full precision.

    ``keys``/``values`` hold those tokens; ``get_seq_length()`` is the number of tokens
    seen (transformers derives position ids from it) and ``get_mask_sizes`` returns
    ``(physical + q_len, seen − physical)``, which keeps the causal mask right for
    multi-token steps after eviction. Build instances with ``transformers_class(cls,
    "CacheLayerMixin")(...)``.
    """

    def __init__(self, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.seen = 0
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.is_initialized = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        # Empty along tokens but 4-D, so ``shape[-2]`` works before the first append.
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.is_initialized = True

    def append(
        self, key_states: torch.Tensor, value_states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new K/V after the kept ones and return everything now stored."""
        import torch

        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.seen += key_states.shape[-2]
        return self.keys, self.values

    @property
    def physical(self) -> int:
        """Tokens currently stored."""
        return self.keys.shape[-2] if self.is_initialized else 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.physical + query_length, self.seen - self.physical

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.seen = 0

    def resident_bytes(self) -> int:
        return allocated_bytes(self.keys, self.values)


def budget_tokens(budget: float, prefill: int) -> int:
    """Tokens a ``budget`` fraction of a ``prefill``-token context keeps (at least one)."""
    return max(1, round(budget * prefill))
