"""MoLE and its baselines for the ``lm_train`` scenario: LMs pretrained from scratch on the
same token budget, then measured in their inference form.

* ``dense-lm`` — transformers' ``LlamaForCausalLM`` from the suite's config: the reference;
* ``mole`` — Mixture of Lookup Experts (ICML 2025): routed experts on the raw token
  embedding, trained densely; at inference re-parameterised into one lookup table
  ``[V, L·N·d]`` kept in host memory, gathered per step by token id;
* ``moe`` — a Mixtral-like top-k MoE (half-width experts, load-balance + z-loss);
* ``moe-offload`` — that MoE at inference with its experts in host memory, loaded on
  demand into a per-layer cache of the previous step's experts (CUDA only).

The models live in :mod:`.modeling`, imported on first use, so registering this plugin
imports neither torch nor transformers.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .dense import DenseLM
from .moe import MoE
from .mole import MoLE
from .offload import MoEOffload

__all__ = ["DenseLM", "MoE", "MoEOffload", "MoLE", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [DenseLM(), MoLE(), MoE(), MoEOffload()]
