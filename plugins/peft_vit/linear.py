"""``linear``: linear probing, the floor every adaptation method must beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights

if TYPE_CHECKING:
    import torch

__all__ = ["Linear", "LinearParams"]


class LinearParams(AdaptParams):
    lr: float = Field(3e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""


class Linear(TrainedWeights):
    """Only the new classification head trains, on the frozen backbone's CLS feature.

    Stored per task: the head (``hidden · classes + classes`` values).
    """

    name = "linear"
    version = "1"
    description = "linear probe: the frozen backbone's CLS feature into a trained head"
    scenarios = ("adapt",)
    params = LinearParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        return model
