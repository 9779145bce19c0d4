"""``moe-offload``: the trained ``moe`` at inference with its experts in host memory — the
paper's MoE + expert-offloading baseline (CUDA only).

``build`` and ``trained_as`` are ``moe``'s, so the ``moe`` run's trained model (same params,
seed and task) is reused from the cache. ``inference`` keeps the shared weights and routers
on the device and moves every expert to pinned host memory; each layer has an
:class:`~.modeling.ExpertCache` holding the experts the previous step used: a step routes
its tokens, loads the experts it needs that are not resident (``non_blocking`` from pinned
memory) and then keeps exactly those. Reported: ``device_bytes`` shared weights plus the
resident experts, ``host_bytes`` all experts, counters ``h2d_bytes`` (bytes of the experts
loaded) and ``expert_loads``. On CPU there is nothing to offload to: ``Unsupported``.

``active_params``: as ``moe``'s — the non-expert weights plus ``top_k`` experts per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.api import RunContext, Unsupported

from .moe import MoE, MoEParams

__all__ = ["MoEOffload", "MoEOffloadParams"]


class MoEOffloadParams(MoEParams):
    """``moe``'s params: the same model is trained."""


class MoEOffload(MoE):
    """Top-k MoE with its experts offloaded to host memory, loaded on demand (CUDA only).

    Trained and counted as ``moe`` (its ``build`` and ``active_params``); only the
    inference form differs."""

    name = "moe-offload"
    version = "1"
    description = (
        "the moe baseline at inference with experts in pinned host memory, loaded on "
        "demand into a per-layer cache of the previous step's experts (CUDA only)"
    )
    scenarios = ("lm_train", "lm_eval")
    params = MoEOffloadParams

    def inference(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        import torch

        device = torch.device(ctx.device)
        if device.type != "cuda":
            raise Unsupported("expert offloading moves experts host→device: needs a CUDA device")
        from .modeling import OffloadMoEForCausalLM

        return OffloadMoEForCausalLM.from_trained(model, device)
