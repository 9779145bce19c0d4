"""``adaptformer``: AdaptFormer (Chen et al., 2022) — a scaled bottleneck beside each MLP."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights, add_to_mlp, vit_blocks

if TYPE_CHECKING:
    import torch

__all__ = ["AdaptFormer", "AdaptFormerParams"]


class AdaptFormerParams(AdaptParams):
    lr: float = Field(3e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    dim: int = Field(8, gt=0)
    """Bottleneck width of each block's adapter."""
    scale: float = 0.1
    """Factor s on the adapter's output, added beside the MLP."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout probability inside the bottleneck, before the up-projection."""


class AdaptFormer(TrainedWeights):
    """``x + MLP(LN(x)) + s · Up(Dropout(ReLU(Down(x))))`` in every block.

    As in AdaptFormer's parallel form, the adapter reads the residual stream ``x`` before the
    MLP's LayerNorm. ``Down`` keeps PyTorch's default init, ``Up`` and both biases start at
    zero, so step 0 is the backbone. Trainable and stored: ``2 · d · dim + dim + d`` per block,
    plus the head.
    """

    name = "adaptformer"
    version = "1"
    description = "AdaptFormer: a scaled ReLU bottleneck beside every MLP"
    scenarios = ("adapt",)
    params = AdaptFormerParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = AdaptFormerParams(**params)
        d = model.config.hidden_size
        weight = next(model.parameters())
        for block in vit_blocks(model):
            down, up = torch.nn.Linear(d, p.dim), torch.nn.Linear(p.dim, d)
            torch.nn.init.zeros_(down.bias)
            torch.nn.init.zeros_(up.weight)
            torch.nn.init.zeros_(up.bias)
            adapter = torch.nn.Sequential(down, torch.nn.ReLU(), torch.nn.Dropout(p.dropout), up)
            block.adaptformer = adapter.to(weight.device, weight.dtype)
            add_to_mlp(block, lambda x, a=adapter: p.scale * a(x), normed=False)
        return model
