"""``lora``: LoRA (Hu et al., 2022) through the PEFT library, on the attention projections."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights

if TYPE_CHECKING:
    import torch

__all__ = ["LoRA", "LoRAParams"]


class LoRAParams(AdaptParams):
    lr: float = Field(1e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    rank: int = Field(8, gt=0)
    """Rank of the low-rank update B A."""
    alpha: float = Field(8.0, gt=0)
    """LoRA alpha: the update is scaled by alpha / rank."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout probability on the LoRA branch's input (PEFT's lora_dropout)."""
    # PEFT's built-in ViT mapping still has transformers 4.x's names (query/value), so the
    # targets are always given explicitly.
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Module names inside each ViT block that get LoRA (transformers 4.x: query, value)."""


class LoRA(TrainedWeights):
    """``W x + (alpha / rank) · B A x`` on each target projection of every block.

    PEFT's ``inject_adapter_in_model`` adds the ``lora_A`` (Kaiming-uniform) and ``lora_B``
    (zero) matrices in place, so step 0 is the backbone and the model stays a plain ViT.
    Trainable and stored: ``2 · rank · d`` per target per block, plus the head.
    """

    name = "lora"
    version = "1"
    description = "LoRA on q_proj and v_proj of every block, through PEFT"
    scenarios = ("adapt",)
    params = LoRAParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        from peft import LoraConfig, inject_adapter_in_model

        p = LoRAParams(**params)
        config = LoraConfig(
            r=p.rank,
            lora_alpha=p.alpha,
            lora_dropout=p.dropout,
            target_modules=list(p.targets),
        )
        model = inject_adapter_in_model(config, model)
        # PEFT marks only the adapters trainable; the task's new head trains too.
        model.classifier.requires_grad_(True)
        return model
