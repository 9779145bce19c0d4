"""``rtn``: round-to-nearest weight-only group quantization, the GPTQ/AWQ papers' RTN baseline.

Each output row of a Linear's weight is cut into groups of ``group_size`` consecutive input
columns; each group is quantized asymmetrically over its own min-max range,
``q = clamp(round((w - min) / scale), 0, 2**bits - 1)``, ``scale = (max - min) / (2**bits - 1)``,
and stored as ``bits``-bit codes plus an fp16 scale and an fp16 zero (the min) per group. The
simulation keeps scale and zero in float32, as GPTQ's reference simulation does.

This is *simulated* quantization: the weights are replaced by their dequantized values
``q * scale + min`` in the model's own dtype, so quality is exactly that of the quantized
model, but the forward pass runs the same dense floating-point matmuls as before. Latency
and runtime memory therefore do not improve — that needs packed storage and a low-bit
kernel — while ``storage_bytes`` reports what the quantized checkpoint would take.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import Params, RunContext

from .common import storage_bytes, target_linears

if TYPE_CHECKING:
    import torch

#: Bytes of one group's scale and zero (two fp16 numbers).
GROUP_OVERHEAD_BYTES = 4


class RTNParams(Params):
    """Bit width, group size and whether the output head stays in full precision."""

    bits: Literal[2, 3, 4, 8] = 4
    """Bits per weight code (asymmetric min-max round-to-nearest)."""
    group_size: int = Field(64, gt=0)
    """Consecutive input columns per group, each with its own fp16 scale and zero."""
    skip_lm_head: bool = True
    """Leave the output head (get_output_embeddings) unquantized, as GPTQ/AWQ do."""


def fake_quantize(
    weight: torch.Tensor, bits: int, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize-dequantize a 2-D weight by groups along its input dim (computed in float32).

    Returns the dequantized weight in ``weight``'s dtype and the per-group scales, shape
    ``(rows, ceil(cols / group_size))``; a last group shorter than ``group_size`` is a group
    of its own. Each weight moves by at most half its group's scale.
    """
    import torch

    w = weight.detach().float()
    qmax = 2**bits - 1
    out = torch.empty_like(w)
    scales = []
    for start in range(0, w.shape[1], group_size):
        block = w[:, start : start + group_size]
        low = block.amin(dim=1, keepdim=True)
        # A constant group gets a tiny scale: its codes are all 0 and it dequantizes exactly.
        scale = ((block.amax(dim=1, keepdim=True) - low) / qmax).clamp(min=1e-12)
        codes = torch.clamp(torch.round((block - low) / scale), 0, qmax)
        out[:, start : start + group_size] = codes * scale + low
        scales.append(scale)
    return out.to(weight.dtype), torch.cat(scales, dim=1)


def quantized_bytes(rows: int, cols: int, bits: int, group_size: int) -> int:
    """Packed ``bits``-bit codes plus an fp16 scale and zero per group of one weight matrix."""
    groups = rows * math.ceil(cols / group_size)
    return math.ceil(rows * cols * bits / 8) + groups * GROUP_OVERHEAD_BYTES


class RTN:
    """Round-to-nearest group quantization of every Linear weight (simulated)."""

    name = "rtn"
    version = "1"
    description = (
        "round-to-nearest asymmetric min-max group quantization of Linear weights "
        "(weight-only, simulated: quality and storage change, latency does not)"
    )
    scenarios = ("perplexity", "lm_eval")
    params = RTNParams

    def apply(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = RTNParams(**params)
        with torch.no_grad():
            for linear in target_linears(model, p.skip_lm_head):
                dequantized, _ = fake_quantize(linear.weight, p.bits, p.group_size)
                linear.weight.copy_(dequantized)
        return model

    def storage_bytes(self, model: torch.nn.Module, params: Mapping[str, Any]) -> int:
        p = RTNParams(**params)
        compressed = {
            id(linear.weight): quantized_bytes(*linear.weight.shape, p.bits, p.group_size)
            for linear in target_linears(model, p.skip_lm_head)
        }
        return storage_bytes(model, compressed)
