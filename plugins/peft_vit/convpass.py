"""``convpass``: Convpass (Jie & Deng, 2022) — convolutional bypasses beside attention and MLP.

A ViT has no spatial inductive bias of its own; Convpass adds a small one to a frozen ViT. Each
block gets a bottleneck whose middle is a 3x3 convolution over the patch grid, in parallel with
MHSA and with the MLP, both fed the block's normed input::

    x = x + Attn(LN1 x) + s · Convpass_attn(LN1 x)
    x = x + MLP(LN2 x)  + s · Convpass_mlp(LN2 x)        (Convpass-attn: the first only)

Re-implemented from the paper and the description of the official code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights, add_to_attention, add_to_mlp, vit_blocks

if TYPE_CHECKING:
    import torch

__all__ = ["Convpass", "ConvpassParams"]


class ConvpassParams(AdaptParams):
    """Bottleneck width, output scale, dropout, and ``attn_only`` for Convpass-attn.

    Width 8 is the paper's. The official scale is chosen per dataset (0.01-100); on a short
    validation check (shapes-orientation and -count, 400 images, 8 epochs, lr 1e-2) s = 1 and
    0.1 tied and s = 10 was ~5 points lower.
    """

    lr: float = Field(1e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    dim: int = Field(8, gt=0)
    """Bottleneck width (channels of the 3x3 convolution)."""
    scale: float = 1.0
    """Factor s on each bypass's output."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout probability before each bypass's up-projection."""
    attn_only: bool = False
    """Convpass-attn: a bypass beside attention only, none beside the MLP."""


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x * torch.sigmoid(1.702 * x)


def _bypass(d: int, p: ConvpassParams) -> torch.nn.Module:
    """One bypass's modules, initialised as the official code does by default."""
    import torch

    bypass = torch.nn.Module()
    bypass.down = torch.nn.Linear(d, p.dim)
    bypass.conv = torch.nn.Conv2d(p.dim, p.dim, 3, padding=1)
    bypass.drop = torch.nn.Dropout(p.dropout)
    bypass.up = torch.nn.Linear(p.dim, d)
    with torch.no_grad():
        torch.nn.init.xavier_uniform_(bypass.down.weight)
        torch.nn.init.zeros_(bypass.down.bias)
        torch.nn.init.zeros_(bypass.conv.weight)
        bypass.conv.weight[:, :, 1, 1] = torch.eye(p.dim)
        torch.nn.init.zeros_(bypass.conv.bias)
        torch.nn.init.zeros_(bypass.up.weight)
        torch.nn.init.zeros_(bypass.up.bias)
    return bypass


def _run_bypass(bypass: torch.nn.Module, x: torch.Tensor, scale: float) -> torch.Tensor:
    """``s · Up(Drop(QuickGELU(Conv(QuickGELU(Down x)))))`` with the conv over the patch grid.

    ``x`` is ``[B, 1 + side², d]``: the class token first, then the patches row by row. The
    class token goes through the same conv as a 1x1 image (only the centre tap reaches it).
    """
    import torch

    batch, tokens, _ = x.shape
    side = math.isqrt(tokens - 1)
    if side * side != tokens - 1:
        raise ValueError(
            f"convpass needs a class token plus a square patch grid; got {tokens} tokens"
        )
    z = _quick_gelu(bypass.down(x))
    dim = z.shape[-1]
    grid = z[:, 1:].transpose(1, 2).reshape(batch, dim, side, side)
    patches = bypass.conv(grid).flatten(2).transpose(1, 2)
    cls = bypass.conv(z[:, :1].transpose(1, 2).reshape(batch, dim, 1, 1)).reshape(batch, 1, dim)
    z = bypass.drop(_quick_gelu(torch.cat([cls, patches], dim=1)))
    return scale * bypass.up(z)


class Convpass(TrainedWeights):
    """Convpass: ``s · Up(Drop(QuickGELU(Conv3x3(QuickGELU(Down x)))))`` beside MHSA and MLP.

    ``x`` is the block's normed input (LN1 for the attention bypass, LN2 for the MLP one). The
    patch tokens form the ``√N × √N`` grid for the conv (padding 1); the class token passes the
    same conv as a 1x1 image. Init (the official default): ``Down`` Xavier-uniform weight and
    zero bias, the conv zero except an identity on the centre tap, zero conv bias, ``Up`` zero
    (weight and bias), so step 0 is the backbone. Trainable per bypass:
    ``2·d·m + d + 9·m² + 2·m`` (m = ``dim``), two bypasses per block (one with ``attn_only``),
    plus the head.
    """

    name = "convpass"
    version = "1"
    description = (
        "Convpass: 3x3 convolutional bypasses over the patch grid beside attention and MLP "
        "(dim, scale; attn_only for Convpass-attn)"
    )
    scenarios = ("adapt",)
    params = ConvpassParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = ConvpassParams(**params)
        d = model.config.hidden_size
        weight = next(model.parameters())
        for block in vit_blocks(model):
            bypasses = torch.nn.ModuleDict({"attn": _bypass(d, p)})
            if not p.attn_only:
                bypasses["mlp"] = _bypass(d, p)
            block.convpass = bypasses.to(weight.device, weight.dtype)
            add_to_attention(block, lambda x, b=bypasses["attn"]: _run_bypass(b, x, p.scale))
            if not p.attn_only:
                add_to_mlp(block, lambda x, b=bypasses["mlp"]: _run_bypass(b, x, p.scale))
        return model
