"""``full``: full fine-tuning, the reference every parameter-efficient method is measured by."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights

if TYPE_CHECKING:
    import torch

__all__ = ["Full", "FullParams"]


class FullParams(AdaptParams):
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""


class Full(TrainedWeights):
    """Every weight of the backbone trains, with the head; a task stores the whole model."""

    name = "full-finetune"
    role = "reference"
    version = "1"
    description = "full fine-tuning: every backbone weight and the head train and are stored"
    scenarios = ("adapt",)
    params = FullParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        return model.requires_grad_(True)
