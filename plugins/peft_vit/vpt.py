"""``vpt``: Visual Prompt Tuning (Jia et al., 2022), shallow or deep."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights, vit_blocks

if TYPE_CHECKING:
    import torch

__all__ = ["VPT", "VPTParams"]


class VPTParams(AdaptParams):
    lr: float = Field(1e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    prompts: int = Field(8, gt=0)
    """Learnable prompt tokens inserted after the CLS token (per block when deep)."""
    deep: bool = True
    """Each block gets its own prompts (replacing the previous ones); false: the first only."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout probability on the prompt tokens."""


class VPT(TrainedWeights):
    """Learnable prompt tokens inserted after the CLS token.

    Shallow prompts join the sequence before the first block and stay in it; deep prompts
    replace the prompt positions at the input of every block. Init is VPT's: uniform in
    ``±sqrt(6 / (3 · patch² + d))``. The CLS token the head reads attends to the prompts, so
    unlike the zero-initialised methods step 0 is not the backbone. Trainable and stored:
    ``prompts · d`` (shallow) or ``blocks · prompts · d`` (deep), plus the head.
    """

    name = "vpt"
    version = "1"
    description = (
        "VPT: learnable prompt tokens after CLS, at the first block (shallow) or every block "
        "(deep)"
    )
    scenarios = ("adapt",)
    params = VPTParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = VPTParams(**params)
        config = model.config
        bound = math.sqrt(6 / (3 * config.patch_size**2 + config.hidden_size))
        weight = next(model.parameters())
        blocks = vit_blocks(model)
        dropout = torch.nn.Dropout(p.dropout)
        for index, block in enumerate(blocks if p.deep else blocks[:1]):
            prompts = torch.empty(p.prompts, config.hidden_size, device=weight.device,
                                  dtype=weight.dtype)
            block.vpt_prompts = torch.nn.Parameter(torch.nn.init.uniform_(prompts, -bound, bound))
            replace = index > 0  # deep: drop the previous block's prompt outputs

            def insert(
                mod: Any, args: tuple[Any, ...], replace: bool = replace
            ) -> tuple[Any, ...]:
                hidden = args[0]
                batch = hidden.shape[0]
                rest = hidden[:, 1 + p.prompts :] if replace else hidden[:, 1:]
                tokens = dropout(mod.vpt_prompts).expand(batch, -1, -1)
                return (torch.cat([hidden[:, :1], tokens, rest], dim=1), *args[1:])

            block.register_forward_pre_hook(insert)
        model.vpt_dropout = dropout  # follows model.train()/eval()
        return model
