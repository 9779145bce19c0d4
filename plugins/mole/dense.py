"""``dense-lm``: transformers' ``LlamaForCausalLM`` (pre-norm, RMSNorm, RoPE) from the suite's
config — the dense reference MoLE and the MoE are compared with at equal training tokens.

(Named ``dense-lm`` because method names are global and ``dense`` is the perplexity
family's uncompressed reference.) Every parameter is active; no inference form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.api import RunContext
from harness.scenarios.lm_train_protocol import LMTrainParams

__all__ = ["DenseLM", "DenseLMParams"]


class DenseLMParams(LMTrainParams):
    """Only the learning rate."""


class DenseLM:
    """A plain Llama decoder, trained from scratch."""

    name = "dense-lm"
    role = "reference"
    version = "1"
    description = "dense Llama decoder (transformers LlamaForCausalLM): the reference LM"
    scenarios = ("lm_train", "lm_eval")
    params = DenseLMParams

    def build(self, config: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        from .modeling import dense_lm

        return dense_lm(config).to(ctx.device).train()
