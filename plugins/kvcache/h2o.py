"""``h2o``: Heavy-Hitter Oracle — keep the ``heavy`` most-attended tokens plus the ``recent`` ones.

H2O (Zhang et al., NeurIPS 2023) keeps, per attention head, the tokens whose *accumulated*
attention is largest (the "heavy hitters") together with a window of the most recent tokens,
and evicts the rest.

Choices made here:

* **Per KV head.** The paper accumulates per attention head; with grouped-query attention a
  cache holds one K/V row per *KV* head, shared by its group of query heads, so the score of a
  token under a KV head is the attention it received summed over the query rows of each step
  and over the query heads of that group. Each KV head keeps its own token set.
* **Prefill as in the paper's setting.** The attention of every prefill query is accumulated
  and the cache is evicted down to budget once the prefill forward has attended; from then on
  each step's attention is added before evicting again. A kept token keeps its score;
  an evicted one is gone for good.
* **Positions keep counting** (``get_seq_length()`` = tokens seen), as in
  :mod:`.streaming`; kept keys keep their original RoPE rotation.
* Attention runs through :func:`.attention.eager_attention` (H2O needs the probabilities), so
  ``make_cache`` switches the model to the dispatching attention of :mod:`.attention`; with
  any other cache that attention is transformers' sdpa, unchanged.

Resident bytes (allocated on the device) once more than ``heavy + recent`` tokens were seen,
at ``s`` bytes per model element: ``layers · kv_heads · (heavy + recent) · (2 · head_dim · s +
4)`` — a full cache of ``heavy + recent`` tokens plus one float32 accumulated score per kept
token and KV head. Every step's eviction gathers the kept rows into tensors of exactly that
size, so nothing is held beyond them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import Params, RunContext
from harness.scenarios.kv_protocol import allocated_bytes

from .attention import bind_layer, eager_attention, use_kv_attention
from .common import EvictingLayer, budget_tokens, measured_cache, num_layers, transformers_class

if TYPE_CHECKING:
    import torch

__all__ = ["H2O", "H2OLayer", "H2OParams"]


class H2OLayer(EvictingLayer):
    """Keeps the ``heavy`` highest-scoring older tokens and the ``recent`` latest, per KV head."""

    def __init__(self, layer_idx: int, heavy: int, recent: int, budget: float | None) -> None:
        super().__init__(layer_idx)
        self.heavy = heavy
        self.recent = recent
        self.budget = budget
        self.scores: torch.Tensor | None = None
        self.awaiting_attention = False

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        if self.awaiting_attention:
            raise RuntimeError(
                "h2o: the previous step never reached attention; the model must run the "
                "attention set by use_kv_attention()"
            )
        if self.budget is not None and not self.is_initialized:
            # The H2O paper's split: half heavy hitters, half recent tokens.
            kept = max(2, budget_tokens(self.budget, key_states.shape[-2]))
            self.heavy, self.recent = kept // 2, kept - kept // 2
        keys, values = self.append(key_states, value_states)
        fresh = key_states.new_zeros((*keys.shape[:2], key_states.shape[-2]), dtype=torch.float32)
        self.scores = fresh if self.scores is None else torch.cat([self.scores, fresh], dim=-1)
        self.awaiting_attention = True
        bind_layer(self.layer_idx, self)
        return keys, values

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """Attend over the stored tokens, add the attention they got, evict to budget."""
        if key.shape[-2] != self.physical:
            raise RuntimeError("h2o: attention got other keys than the cache layer stored")
        out, probs = eager_attention(query, key, value, attention_mask, scaling, return_probs=True)
        batch, kv_heads, length = self.scores.shape
        # Sum over the query heads of each KV group and over this step's query rows.
        self.scores += probs.view(batch, kv_heads, -1, probs.shape[-1]).sum(dim=2)
        self.awaiting_attention = False
        if length > self.heavy + self.recent:
            self.evict()
        return out, None

    def evict(self) -> None:
        """Keep the ``recent`` last tokens and the ``heavy`` best-scored among the others."""
        import torch

        length = self.scores.shape[-1]
        older = length - self.recent
        heavy = self.scores[..., :older].topk(self.heavy, dim=-1).indices.sort(dim=-1).values
        recent = torch.arange(older, length, device=heavy.device).expand(*heavy.shape[:2], -1)
        keep = torch.cat([heavy, recent], dim=-1)
        rows = keep.unsqueeze(-1).expand(-1, -1, -1, self.keys.shape[-1])
        self.keys = self.keys.gather(2, rows)
        self.values = self.values.gather(2, rows)
        self.scores = self.scores.gather(2, keep)

    def reset(self) -> None:
        super().reset()
        self.scores = None
        self.awaiting_attention = False

    def resident_bytes(self) -> int:
        return allocated_bytes(self.keys, self.values, self.scores)


class H2OParams(Params):
    """Heavy hitters and recent window, in tokens per KV head; the cache keeps their sum.

    ``budget`` (a fraction of the prefilled context, split evenly between heavy and recent
    as in the paper; replaces both) keeps KV budgets matched across context lengths.
    """

    heavy: int = Field(128, ge=0)
    """Heavy hitters kept per KV head: older tokens with the most accumulated attention."""
    recent: int = Field(128, ge=1)
    """Most recent tokens always kept per KV head."""
    budget: float | None = Field(None, gt=0, le=1)
    """Kept share of the prefill, split half heavy, half recent (replaces both); null: off."""


class H2O:
    """Heavy-Hitter Oracle: accumulated-attention eviction plus a recent window."""

    name = "h2o"
    version = "1"
    description = (
        "H2O: keep the `heavy` tokens with the largest accumulated attention (per KV head, "
        "summed over its query heads) and the `recent` most recent ones"
    )
    scenarios = ("generate", "lm_eval")
    params = H2OParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        p = H2OParams(**params)
        use_kv_attention(model)
        layer = transformers_class(H2OLayer, "CacheLayerMixin")
        return measured_cache(
            [layer(i, p.heavy, p.recent, p.budget) for i in range(num_layers(model))]
        )
