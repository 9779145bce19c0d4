"""``memvp``: Memory-space Visual Prompting (Jie et al., ICML 2024), as the official code does it.

A feed-forward block ``FFN(x) = φ(x W1) W2`` is a key-value memory: the rows of ``W1`` are keys,
the columns of ``W2`` values. MemVP adds the image to that memory instead of to the input: the
encoder's patch features, projected to the LM's width and scaled by ``feature_scale`` (``Z``),
padded with ``adapter_slots`` zero rows (slots that act as a plain learnt FFN adapter: the
official code keeps 64 beside 256 visual tokens), become ``n`` extra keys ``K = Z + P_k`` and
values ``V = Z + P_v`` of every LM layer's FFN (``P_k``, ``P_v``: learnt position embeddings
of the slots, one pair shared by every layer as in the official code, ``P_k ~ N(0, 0.02²)``,
``P_v = 0``), read in parallel to the frozen FFN on the same normalised input::

    out = h + FFN(x) + s · Dropout(SiLU(x Kᵀ)) V

The text sequence the LM attends over stays as long as the question, whatever ``n`` is; the
extra cost is that of an FFN with ``n`` more hidden units. The frozen encoder gets small
parallel MLP adapters in every block (``encoder_adapter_dim``: bias-free ``down → GELU →
dropout 0.1 → up``, ``up`` zero-initialised, scale 0.1; 0 leaves it untouched). What
trains: the projector, ``P_k``/``P_v`` and the encoder adapters.

Departure from the official code: it keeps trainable weights in fp32 under autocast, here
they take the LM's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.vqa_protocol import VisualParams, patch_features, position_ids

from .projector import like, projector

__all__ = ["MemVP", "MemVPParams"]


class MemVPParams(VisualParams):
    """MemVP's memory, projector and encoder adapters (official defaults where they apply)."""

    #: Best of 3e-3, 1e-2 and 3e-2 on a validation seed (9) of digit-grid-vqa, at 16 and at
    #: 64 tokens (0.626 and 0.620 exact match).
    lr: float = Field(1e-2, gt=0, description="peak AdamW learning rate")
    scale: float = Field(0.1, ge=0, description="s: scale of the visual memory's output")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the memory's activations")
    feature_scale: float = Field(0.01, gt=0, description="scale of the projected features Z")
    projector_hidden: int = Field(128, gt=0, description="the projector's hidden width")
    encoder_adapter_dim: int = Field(12, ge=0, description="encoder adapters' width (0: none)")
    encoder_adapter_scale: float = Field(0.1, ge=0, description="encoder adapters' scale")
    adapter_slots: int = Field(
        64, ge=0, description="memory slots beyond the visual tokens, Z zero: a plain FFN adapter"
    )


def _connector() -> type:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SlotEmbeddings(nn.Module):
        """``P_k`` and ``P_v``: the memory slots' learnt keys and values, shared by all layers."""

        def __init__(self, slots: int, width: int) -> None:
            super().__init__()
            self.keys = nn.Parameter(torch.randn(slots, width) * 0.02)
            self.values = nn.Parameter(torch.zeros(slots, width))

    class VisualMemoryFFN(nn.Module):
        """An LM layer's FFN with ``n`` extra key-value slots ``Z + P``, ``Z`` set per call
        (padded with zero rows to the slots beyond the visual tokens)."""

        def __init__(self, ffn: nn.Module, slots: SlotEmbeddings, p: MemVPParams) -> None:
            super().__init__()
            self.ffn = ffn
            # Not a submodule: the connector owns the one pair every layer reads.
            self.slots = (slots,)
            self.dropout = nn.Dropout(p.dropout)
            self.scale = p.scale
            #: ``Z`` ``[batch, slots, width]`` while the connector runs the LM, else None.
            self.memory: torch.Tensor | None = None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keys, values = self.slots[0].keys, self.slots[0].values
            if self.memory is not None:
                z = F.pad(self.memory, (0, 0, 0, keys.shape[0] - self.memory.shape[1]))
                keys, values = z + keys, z + values
            hidden = F.silu(x @ keys.transpose(-1, -2))
            return self.ffn(x) + self.scale * (self.dropout(hidden) @ values)

    class ParallelAdapter(nn.Module):
        """``mlp(x) + s · up(Dropout(GELU(down(x))))``: a frozen encoder block's MLP with an
        adapter beside it (``up`` zero-initialised, so it starts as the frozen block)."""

        def __init__(self, mlp: nn.Module, width: int, dim: int, scale: float) -> None:
            super().__init__()
            self.mlp = mlp
            self.down = nn.Linear(width, dim, bias=False)
            self.up = nn.Linear(dim, width, bias=False)
            nn.init.zeros_(self.up.weight)
            self.dropout = nn.Dropout(0.1)
            self.scale = scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mlp(x) + self.scale * self.up(self.dropout(F.gelu(self.down(x))))

    class MemVPConnector(nn.Module):
        """The LM with visual memory in every FFN, the encoder with adapters, the projector."""

        def __init__(self, lm: nn.Module, encoder: nn.Module, p: MemVPParams) -> None:
            super().__init__()
            self.lm, self.encoder, self.p = lm, encoder, p
            width = lm.config.hidden_size
            features = encoder.config.hidden_size
            if p.encoder_adapter_dim:
                for block in getattr(encoder, "vit", encoder).layers:
                    adapter = ParallelAdapter(block.mlp, features, p.encoder_adapter_dim,
                                              p.encoder_adapter_scale)  # fmt: skip
                    block.mlp = like(adapter, encoder)
            self.projector = like(projector(features, p.projector_hidden, width, "silu"), lm)
            self.slots = like(SlotEmbeddings(p.visual_tokens + p.adapter_slots, width), lm)
            self.memories = nn.ModuleList()
            for layer in lm.model.layers:
                layer.mlp = like(VisualMemoryFFN(layer.mlp, self.slots, p), lm)
                self.memories.append(layer.mlp)

        def encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
            features = patch_features(self.encoder, pixel_values, self.p.visual_tokens)
            weight = self.projector[0].weight
            return self.p.feature_scale * self.projector(features.to(weight.dtype))

        def forward(self, visual: torch.Tensor | None, input_ids: torch.Tensor,
                    attention_mask: torch.Tensor, past_key_values: Any = None) -> Any:  # fmt: skip
            for memory in self.memories:
                memory.memory = visual
            try:
                return self.lm(
                    input_ids=input_ids, attention_mask=attention_mask,
                    position_ids=position_ids(attention_mask, input_ids.shape[1]),
                    past_key_values=past_key_values, use_cache=past_key_values is not None,
                )  # fmt: skip
            finally:
                for memory in self.memories:
                    memory.memory = None

    return MemVPConnector


class MemVP:
    """Visual features in the key-value memory of every FFN of a frozen LM."""

    name = "memvp"
    version = "1"
    description = (
        "Memory-space Visual Prompting: projected visual features join every FFN's keys and "
        "values of the frozen LM (the text sequence stays short); projector, per-layer "
        "position embeddings and encoder adapters train"
    )
    scenarios = ("vqa",)
    params = MemVPParams

    def connect(self, lm: Any, encoder: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        return _connector()(lm, encoder, MemVPParams(**params))
