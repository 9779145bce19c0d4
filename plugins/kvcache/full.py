"""``full``: the uncompressed KV cache — the reference for quality and bytes.

transformers' own ``DynamicCache(config=model.config)``: every token's keys and values at the
model's dtype. Resident bytes after ``T`` tokens, at ``s`` bytes per element:
``2 · layers · kv_heads · head_dim · T · s`` (:func:`harness.scenarios.kv_protocol.kv_full_bytes`);
the cache reports no figure of its own, so the scenario counts what the layers' tensors
allocate — the same, as each step concatenates the layer's K/V into tensors of exactly the
tokens seen. The ``generate`` scenario's ``resident_ratio`` divides every KV method's resident
bytes by this figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.api import NoParams, RunContext

__all__ = ["Full"]


class Full:
    """The full-precision cache transformers uses by default."""

    name = "full"
    role = "reference"
    version = "1"
    description = "full KV cache at the model's dtype (transformers' DynamicCache): the reference"
    scenarios = ("generate", "lm_eval")
    params = NoParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=model.config)
