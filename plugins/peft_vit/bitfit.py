"""``bitfit``: BitFit (Ben Zaken et al., 2022) — train only the bias terms."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights

if TYPE_CHECKING:
    import torch

__all__ = ["BitFit", "BitFitParams"]


class BitFitParams(AdaptParams):
    lr: float = Field(1e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""


class BitFit(TrainedWeights):
    """Every ``bias`` of the backbone trains (linear layers, LayerNorms and the patch
    embedding, as in the VTAB baselines), plus the head."""

    name = "bitfit"
    version = "1"
    description = "BitFit: every bias of the backbone (and the head) trains"
    scenarios = ("adapt",)
    params = BitFitParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.requires_grad_(True)
        return model
