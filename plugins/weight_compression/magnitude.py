"""``magnitude``: unstructured magnitude pruning, the classic sparsity baseline.

In every Linear weight the ``sparsity`` fraction of entries with the smallest absolute value
is set to zero (``torch.nn.utils.prune.l1_unstructured``, then ``prune.remove`` to bake the
zeros into the weight). Like simulated quantization, dense kernels still multiply the zeros,
so latency does not improve; ``storage_bytes`` counts a sparse format: a 1-bit mask plus the
nonzero values, or the dense weight when that is smaller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import Params, RunContext

from .common import storage_bytes, target_linears, tensor_bytes

if TYPE_CHECKING:
    import torch


class MagnitudeParams(Params):
    """Fraction of each Linear weight to zero, and whether the output head is left dense."""

    sparsity: float = Field(0.5, gt=0, lt=1)
    """Fraction of each Linear weight's entries, smallest in magnitude, set to zero."""
    skip_lm_head: bool = True
    """Leave the output head (get_output_embeddings) dense, as SparseGPT does."""


def sparse_bytes(weight: torch.Tensor) -> int:
    """A 1-bit mask plus the nonzero values, or the dense weight if that is smaller."""
    nonzero = int(weight.count_nonzero())
    masked = math.ceil(weight.numel() / 8) + nonzero * weight.element_size()
    return min(tensor_bytes(weight), masked)


class Magnitude:
    """Unstructured L1-magnitude pruning of every Linear weight."""

    name = "magnitude"
    version = "1"
    description = (
        "unstructured magnitude pruning of Linear weights to a given sparsity "
        "(zeros are simulated: quality and storage change, latency does not)"
    )
    scenarios = ("perplexity", "lm_eval")
    params = MagnitudeParams

    def apply(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        from torch.nn.utils import prune

        p = MagnitudeParams(**params)
        zeros = total = 0
        for linear in target_linears(model, p.skip_lm_head):
            prune.l1_unstructured(linear, "weight", amount=p.sparsity)
            prune.remove(linear, "weight")
            zeros += linear.weight.numel() - int(linear.weight.count_nonzero())
            total += linear.weight.numel()
        ctx.recorder.record("model", "weight_sparsity", zeros / total, "ratio")
        return model

    def storage_bytes(self, model: torch.nn.Module, params: Mapping[str, Any]) -> int:
        p = MagnitudeParams(**params)
        compressed = {
            id(linear.weight): sparse_bytes(linear.weight)
            for linear in target_linears(model, p.skip_lm_head)
        }
        return storage_bytes(model, compressed)
