"""``moe``: the paper's MoE baseline — Mixtral-like top-k routing (top-2 of 10 by default),
no shared expert, experts half the dense FFN's width, load-balance loss (coef 0.01) and
router z-loss (coef 0.001) returned as the output's ``aux_loss`` in training.

A module of ours (:class:`~.modeling.MoEMLP`) replaces each ``LlamaMLP``, rather than
transformers' Mixtral: its fused expert tensors have no z-loss and would make expert-level
offloading (``moe-offload``) awkward. Routing as Mixtral's: fp32 softmax over all experts,
top-k, weights renormalised over the k. ``aux_loss = aux_coef · mean_ℓ N·Σ_e f_e·P_e +
z_coef · mean_ℓ mean_t logsumexp(logits_t)²`` (``f_e`` share of the token→expert
assignments, ``P_e`` mean router probability).

``active_params``: the total minus ``(experts − top_k)`` experts' weights per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.lm_train_protocol import LMTrainParams

__all__ = ["MoE", "MoEParams", "build_moe", "moe_active_params"]


class MoEParams(LMTrainParams):
    """Experts, how many a token uses, their width and the auxiliary losses' weights."""

    experts: int = Field(10, ge=1, description="routed experts per layer")
    top_k: int = Field(2, ge=1, description="experts per token")
    expert_hidden: int | None = Field(
        None, ge=1, description="experts' FFN width (None: half the dense FFN's)"
    )
    aux_coef: float = Field(0.01, ge=0, description="load-balance loss weight")
    z_coef: float = Field(0.001, ge=0, description="router z-loss weight")


def build_moe(config: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
    from .modeling import MoEForCausalLM, as_llama

    p = MoEParams(**params)
    if p.top_k > p.experts:
        raise ValueError(f"top_k {p.top_k} > experts {p.experts}")
    model = MoEForCausalLM(
        as_llama(config), p.experts, p.top_k, p.expert_hidden, p.aux_coef, p.z_coef
    )
    return model.to(ctx.device).train()


def moe_active_params(model: Any) -> int:
    """Total minus the experts a token does not use, ``(experts − top_k)`` per layer."""
    total = sum(p.numel() for p in model.parameters())
    idle = (model.experts - model.top_k) * len(model.model.layers)
    one = getattr(model, "expert_params", None)
    if one is None:  # the offloaded form: its experts are not parameters
        return total + model.top_k * len(model.model.layers) * _host_expert_params(model)
    return total - idle * one()


def _host_expert_params(model: Any) -> int:
    return sum(t.numel() for t in model.caches()[0].host[0])


class MoE:
    """Top-k routed MoE with load-balance and z-loss."""

    name = "moe"
    version = "1"
    description = (
        "Mixtral-like top-k MoE (top-2 of 10 half-width experts), load-balance 0.01 + "
        "z-loss 0.001: the paper's MoE baseline"
    )
    scenarios = ("lm_train", "lm_eval")
    params = MoEParams

    def build(self, config: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        return build_moe(config, params, ctx)

    def trained_as(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``moe``'s identity, for ``moe-offload`` too: both measure one trained model."""
        return {"name": MoE.name, "version": MoE.version, "params": dict(params)}

    def active_params(self, model: Any, params: Mapping[str, Any]) -> int:
        return moe_active_params(model)
