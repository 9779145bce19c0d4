"""``streaming``: StreamingLLM — keep the first ``sinks`` tokens and the ``window`` most recent.

StreamingLLM (Xiao et al., 2024) observes that the first tokens soak up attention mass ("attention
sinks") whatever their content, so a sliding window stays stable only if it also keeps them.
transformers 5 dropped its ``SinkCache``, so the layer is written here.

Every forward attends to the kept tokens plus all of its own new ones; eviction happens after the
step, when the new K/V are stored. Positions keep counting after eviction: ``get_seq_length()``
returns the tokens *seen*, so a new token gets its true position, and the kept keys keep the
RoPE rotation of their original positions. The paper instead re-rotates the cached keys to
positions "within the cache" (``0 .. sinks + window``), which needs keys stored before rotation;
without it, every step sees the positions a full cache would, so any gap to ``full`` comes
from the eviction alone.

Resident bytes (allocated on the device) once more than ``sinks + window`` tokens were seen,
at ``s`` bytes per model element (2 for fp16/bf16): ``2 · layers · kv_heads · head_dim ·
(sinks + window) · s`` — exactly a full cache of ``sinks + window`` tokens: every step
concatenates the kept tokens into tensors of that size, so nothing is held beyond them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import Params, RunContext

from .common import EvictingLayer, budget_tokens, measured_cache, num_layers, transformers_class

if TYPE_CHECKING:
    import torch

__all__ = ["Streaming", "StreamingLayer", "StreamingParams"]


class StreamingLayer(EvictingLayer):
    """Keeps the first ``sinks`` and the last ``window`` tokens it has seen.

    With a ``budget`` the window is sized at the first update (the prefill) so that
    ``sinks + window`` is that fraction of the prefilled context.
    """

    def __init__(self, layer_idx: int, sinks: int, window: int, budget: float | None) -> None:
        super().__init__(layer_idx)
        self.sinks = sinks
        self.window = window
        self.budget = budget

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self.budget is not None and not self.is_initialized:
            kept = budget_tokens(self.budget, key_states.shape[-2])
            self.window = max(1, kept - self.sinks)
        keys, values = self.append(key_states, value_states)
        length = keys.shape[-2]
        if length > self.sinks + self.window:
            start = length - self.window
            self.keys = torch.cat([keys[..., : self.sinks, :], keys[..., start:, :]], dim=-2)
            self.values = torch.cat([values[..., : self.sinks, :], values[..., start:, :]], dim=-2)
        return keys, values


class StreamingParams(Params):
    """Attention sinks and recent window, in tokens; the cache keeps ``sinks + window``.

    ``budget`` (a fraction of the prefilled context, replacing ``window``) keeps KV budgets
    matched with compressing methods across context lengths.
    """

    sinks: int = Field(4, ge=0)
    """First tokens kept for good (attention sinks); 0 makes it a plain sliding window."""
    window: int = Field(252, ge=1)
    """Most recent tokens kept (the sliding window)."""
    budget: float | None = Field(None, gt=0, le=1)
    """Kept share of the prefill, ``sinks + window`` (sizes ``window``); null: ``window``."""


class Streaming:
    """StreamingLLM: attention sinks plus a sliding window of recent tokens."""

    name = "streaming"
    version = "1"
    description = (
        "StreamingLLM: keep the first `sinks` tokens and the `window` most recent ones "
        "(positions keep counting; cached keys are not re-rotated)"
    )
    scenarios = ("generate", "lm_eval")
    params = StreamingParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        p = StreamingParams(**params)
        layer = transformers_class(StreamingLayer, "CacheLayerMixin")
        return measured_cache(
            [layer(i, p.sinks, p.window, p.budget) for i in range(num_layers(model))]
        )
