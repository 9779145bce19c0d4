"""``tocom``: Token Compensator (Jie et al., ECCV 2024), as the official code does it.

Every block's ``q_proj`` and ``v_proj`` get a LoRA-like bypass without activation, ``down``
``d → 2R`` and ``up`` ``2R → d`` (zero-initialised), with dropout on the hidden channels
while it trains, scaled by ``scale``, whose hidden channels come in ``R = max_r``
sub-blocks ``P_i`` of rank 2. Sub-block ``i`` compensates between merge ratios ``i − 1``
and ``i``, so the compensator from ratio ``m`` to ``n`` is
``ΔW(m→n) = Σ_{i=m+1..n} P_i`` when ``n > m`` and ``−Σ_{i=n+1..m} P_i`` when ``n < m``
(a ±1 mask on the hidden channels): compensators chain additively, reverse by negation and
vanish at ``m = n``; ``k`` is left alone.

Trained once per backbone, not per downstream task, by self-distillation on the backbone's
pretraining data (the built-in ViTs' fractal recipe, read from the model's ``recipe.json``):
every step draws ``m ≠ n`` from ``0..R``; the frozen backbone with ToMe at ``m`` (no
compensation) is the teacher, the same backbone with ToMe at ``n`` and ``ΔW(m→n)`` the
student; loss KL(teacher ‖ student) at temperature 1; only the bypasses train (AdamW, with
dropout on their hidden channels, 0.1 as in the official code). The result is cached under
``<cache_dir>/tocom/<recipe hash>/`` (recipe: the backbone's recipe hash or path, ``max_r``
and the training params), unless the package ships it (:data:`SHIPPED_DIR`).

In the ``merge`` scenario it is inserted into the downstream model (head fine-tuned at
``r_src``) set to ``ΔW(r_src → r_tgt)`` and folded into ``W_q`` and ``W_v``
(:meth:`CompensatedLinear.merged`), so the model that runs has the backbone's shape and
costs what plain ToMe costs; the downstream model itself is not retrained.
``added_params``/``storage_bytes`` count the full plug-in (fp32), stored once per backbone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.merge_protocol import (
    MergeParams,
    backbone_id,
    build_cached,
    pretraining_batches,
    token_merging,
)

__all__ = ["ToCom", "ToComParams"]

#: Bumped when the training changes what it trains, so cached compensators are retrained.
TRAINER_VERSION = 1


class ToComParams(MergeParams):
    """The plug-in's size and scale, and how it is trained (once per backbone)."""

    scale: float = Field(1.0, ge=0, description="s: the bypass's output scale (0 disables it)")
    max_r: int = Field(16, ge=1, description="R: sub-blocks, the largest ratio compensated")
    steps: int = Field(600, gt=0, description="self-distillation steps")
    batch: int = Field(64, gt=0, description="pretraining images per step")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    dropout: float = Field(0.1, ge=0, lt=1,
                           description="dropout on the bypass's hidden channels while it trains")


#: Params that only set the plug-in up for a run: the trained weights do not depend on them.
RUN_ONLY = frozenset({"r_src", "r_tgt", "scale"})
#: Trained plug-ins shipped as package data, one folder per recipe hash (``plug_in.pt`` and
#: ``recipe.json``, as the cache holds them): the built-in suite's, for ``builtin:tiny-vit-p4``.
#: Another recipe trains into the cache; to ship it, copy ``<cache_dir>/tocom/<hash>`` here.
SHIPPED_DIR = Path(__file__).parent / "weights"


def _modules() -> Any:
    import torch
    from torch import nn

    class CompensatedLinear(nn.Module):
        """``base(x) + scale · up(mask ⊙ dropout(down(x)))``: a linear layer with ToCom's
        bypass."""

        def __init__(self, base: nn.Linear, blocks: int, dropout: float = 0.0) -> None:
            super().__init__()
            self.base = base
            self.blocks = blocks
            self.down = nn.Linear(base.in_features, 2 * blocks, bias=False)
            self.dropout = nn.Dropout(dropout)
            self.up = nn.Linear(2 * blocks, base.out_features, bias=False)
            nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
            nn.init.zeros_(self.up.weight)
            self.register_buffer("mask", torch.zeros(2 * blocks), persistent=False)
            self.scale = 1.0

        def set(self, m: int, n: int, scale: float) -> None:
            """``ΔW(m→n)``: sub-blocks ``min+1..max`` on, signed by the direction."""
            if max(m, n) > self.blocks:
                raise ValueError(f"ratio {max(m, n)} exceeds the compensator's {self.blocks}")
            self.mask.zero_()
            low, high = sorted((m, n))
            self.mask[2 * low : 2 * high] = 1.0 if n > m else -1.0
            self.scale = scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.base(x)
            if self.scale == 0 or not bool(self.mask.any()):
                return out
            return out + self.scale * self.up(self.dropout(self.down(x)) * self.mask)

        def merged(self) -> nn.Linear:
            """``base`` with the bypass folded into its weight: the same outputs."""
            merged = nn.Linear(self.base.in_features, self.base.out_features,
                               bias=self.base.bias is not None)  # fmt: skip
            delta = self.up.weight @ (self.mask[:, None] * self.down.weight)
            with torch.no_grad():
                merged.weight.copy_(self.base.weight + self.scale * delta)
                if self.base.bias is not None:
                    merged.bias.copy_(self.base.bias)
            return merged.to(self.base.weight.device, self.base.weight.dtype)

    return CompensatedLinear


def _projections(model: Any) -> list[tuple[Any, str]]:
    """``(attention, "q_proj")`` and ``(attention, "v_proj")`` of every block of ``model`` (a
    transformers ViT, its layers possibly wrapped by ToMe), in order."""
    vit = getattr(model, "vit", model)
    return [(getattr(layer, "layer", layer).attention, name)
            for layer in vit.layers for name in ("q_proj", "v_proj")]  # fmt: skip


def install(model: Any, blocks: int, dropout: float = 0.0) -> list[Any]:
    """Wrap every block's ``q_proj`` and ``v_proj`` of ``model`` (a transformers ViT, possibly
    with ToMe installed) in a :class:`CompensatedLinear`; returns them in order."""
    compensated = _modules()
    out = []
    for attention, name in _projections(model):
        wrapped = compensated(getattr(attention, name), blocks, dropout)
        wrapped.to(getattr(attention, name).weight.device)
        setattr(attention, name, wrapped)
        out.append(wrapped)
    return out


def fold(model: Any) -> None:
    """Replace every :class:`CompensatedLinear` of ``model`` by its folded ``Linear``."""
    for attention, name in _projections(model):
        module = getattr(attention, name)
        if hasattr(module, "merged"):
            setattr(attention, name, module.merged())


def set_ratios(compensators: list[Any], m: int, n: int, scale: float) -> None:
    for c in compensators:
        c.set(m, n, scale)


def plug_in_state(compensators: list[Any]) -> dict[str, Any]:
    return {f"{i}.{part}": getattr(c, part).weight.detach().cpu()
            for i, c in enumerate(compensators) for part in ("down", "up")}  # fmt: skip


def load_plug_in(compensators: list[Any], state: Mapping[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for i, c in enumerate(compensators):
            for part in ("down", "up"):
                weight = getattr(c, part).weight
                weight.copy_(state[f"{i}.{part}"].to(weight.device, weight.dtype))


def train(backbone: Any, p: ToComParams, seed: int) -> tuple[dict[str, Any], list[float]]:
    """Self-distil the plug-in on ``backbone`` (with its pretraining head); its state and the
    loss per step."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    batch = pretraining_batches(backbone)
    backbone.eval()
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    tome = token_merging(backbone)
    compensators = install(backbone, p.max_r, p.dropout)
    for c in compensators:
        c.train()  # its dropout; the frozen backbone stays in eval mode
    trainable = [w for c in compensators for w in (c.down.weight, c.up.weight)]
    for weight in trainable:
        weight.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=p.lr, weight_decay=0.0)
    rng = np.random.default_rng([seed, 0x70C0])
    torch.manual_seed(seed)
    device = next(backbone.parameters()).device
    losses = []
    for _ in range(p.steps):
        x = batch(p.batch, rng).to(device)
        m, n = (int(v) for v in rng.choice(p.max_r + 1, size=2, replace=False))
        with torch.no_grad():
            set_ratios(compensators, m, m, 1.0)
            tome.r = m
            teacher = F.log_softmax(backbone(pixel_values=x).logits.float(), dim=-1)
        set_ratios(compensators, m, n, 1.0)
        tome.r = n
        student = F.log_softmax(backbone(pixel_values=x).logits.float(), dim=-1)
        loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    tome.remove()
    return plug_in_state(compensators), losses


class ToCom:
    """Token Compensator: a plug-in trained once per backbone, set to ``r_src → r_tgt``."""

    name = "tocom"
    version = "1"
    description = (
        "Token Compensator: rank-2 sub-blocks on q and v compensating between adjacent ToMe "
        "ratios, self-distilled once on the backbone's pretraining data, plugged into the "
        "downstream model for r_src→r_tgt without retraining it"
    )
    scenarios = ("merge",)
    params = ToComParams

    def recipe(self, model: Any, p: ToComParams) -> dict[str, Any]:
        """What the trained plug-in depends on."""
        kept = {k: v for k, v in p.model_dump().items() if k not in RUN_ONLY}
        return {"trainer": TRAINER_VERSION, "backbone": backbone_id(model), "params": kept,
                "seed": 0}  # fmt: skip

    def plug_in(self, model: Any, p: ToComParams, ctx: RunContext) -> dict[str, Any]:
        """The trained plug-in's state: from the cache, or trained on a fresh copy of the
        backbone (its pretraining head intact) and cached."""
        import torch

        recipe = self.recipe(model, p)

        def train_into(tmp: Path) -> None:
            backbone = ctx.load_model("image-classification")
            state, losses = train(backbone, p, seed=recipe["seed"])
            torch.save(state, tmp / "plug_in.pt")
            body = {"recipe": recipe, "losses": losses}
            (tmp / "recipe.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")

        final = build_cached(ctx, "tocom", recipe, train_into, shipped=SHIPPED_DIR)
        losses = json.loads((final / "recipe.json").read_text())["losses"]
        tenth = max(1, len(losses) // 10)
        ctx.recorder.record("tocom", "final_kl", sum(losses[-tenth:]) / tenth, "nats")
        return torch.load(final / "plug_in.pt", weights_only=True)

    def transform(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        p = ToComParams(**params)
        state = self.plug_in(model, p, ctx)
        compensators = install(model, p.max_r)
        load_plug_in(compensators, state)
        set_ratios(compensators, p.r_src, p.r_tgt, p.scale)
        fold(model)
        return model

    def added_params(self, model: Any, params: Mapping[str, Any]) -> int:
        p = ToComParams(**params)
        config = model.config
        return 2 * config.num_hidden_layers * 2 * (config.hidden_size * 2 * p.max_r)

    def storage_bytes(self, model: Any, params: Mapping[str, Any]) -> int:
        return 4 * self.added_params(model, params)
