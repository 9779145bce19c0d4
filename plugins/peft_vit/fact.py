"""``fact-tt`` and ``fact-tk``: FacT (Jie & Deng, AAAI 2023) — factor-tuning of a frozen ViT.

FacT stacks the weight increments of every block into one tensor ``ΔW ∈ R^{12L × d × d}`` —
per block ``q, k, v, o``, ``fc1`` as four ``d × d`` slices and ``fc2`` as four more — and
trains only a low-rank factorisation of it, with the two big factors shared by all blocks::

    ΔW_i = s · U Σ_i V        U: d → r (shared), V: r → d (shared, zero init)

so each frozen linear gets a parallel branch ``Δy = s · V(Dropout(Σ_i(U x)))``. ``fc1``'s
branch maps ``r → 4r`` and is read as four ``d``-wide slices of the ``4d`` hidden layer;
``fc2``'s input is split into four ``d``-wide slices, each projected by ``U``, and the ``4r``
values go through ``Σ_fc2`` (``4r → r``). The factorisations differ only in ``Σ_i``:

* tensor-train (``fact-tt``): a free ``r × r`` matrix per slice (per block: four ``r × r``,
  ``fc1`` ``r × 4r``, ``fc2`` ``4r × r``);
* Tucker (``fact-tk``): ``Σ_i = C ×₃ P[:, i]`` with one core ``C ∈ R^{r×r×r}`` and a factor
  ``P ∈ R^{r × 12L}``, both shared.

Re-implemented from the paper and the description of the official code (which uses bias-free
linears for U, V and the Σs, as here). With ``V = 0`` at the start, step 0 is the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import AdaptParams

from .common import TrainedWeights, add_to_output, vit_blocks

if TYPE_CHECKING:
    import torch

__all__ = ["FacTTK", "FacTTKParams", "FacTTT", "FacTTTParams"]

#: Slices of ΔW per block: q, k, v, o, then fc1 and fc2 as four d x d slices each.
_SLICES = 12
_ATTENTION = ("q", "k", "v", "o")


class FacTTTParams(AdaptParams):
    """Rank r of the factors, scale s of the increments, dropout before ``V``.

    Rank 4 (the paper's smallest TT rank) keeps FacT-TT under 1/5 of LoRA rank 8's parameters
    on the tiny ViT (1,536 against 12,288; with the head 2,312 against 13,064). Scale and
    learning rate are the best validation accuracy of suites/peft-vit-lr.yaml (16-epoch
    recipe) among the settings within that budget (s 1 or 10, lr 3e-3 to 3e-2: s 1 at 3e-2).
    """

    lr: float = Field(3e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    rank: int = Field(4, gt=0)
    """Rank r of the shared factors U (d to r) and V (r to d)."""
    scale: float = Field(1.0, gt=0)
    """Scale s of the weight increments (each branch's output)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout probability before V in each branch."""


class FacTTKParams(FacTTTParams):
    """As FacT-TT's; the Tucker form affords rank 8 (2,432 parameters on the tiny ViT), and
    validation chose s 1 at lr 3e-2."""

    lr: float = Field(3e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    rank: int = Field(8, gt=0)
    """Rank r of the shared factors U (d to r) and V (r to d)."""
    scale: float = Field(1.0, gt=0)
    """Scale s of the weight increments (each branch's output)."""


def _check(model: torch.nn.Module) -> tuple[int, list[torch.nn.Module]]:
    """The width ``d`` and the blocks; FacT's slicing needs an MLP of width ``4d``."""
    d = model.config.hidden_size
    if model.config.intermediate_size != 4 * d:
        raise ValueError(
            f"FacT slices the MLP into 4 d x d blocks and needs intermediate_size = 4 * "
            f"hidden_size; this model has {model.config.intermediate_size} and {d}"
        )
    return d, vit_blocks(model)


def _shared(d: int, rank: int) -> torch.nn.Module:
    """The shared factors: ``u`` (d→r, default init) and ``v`` (r→d, zero init), bias-free."""
    import torch

    shared = torch.nn.Module()
    shared.u = torch.nn.Linear(d, rank, bias=False)
    shared.v = torch.nn.Linear(rank, d, bias=False)
    torch.nn.init.zeros_(shared.v.weight)
    return shared


def _hook_block(
    block: torch.nn.Module,
    shared: torch.nn.Module,
    sigma: Callable[[str, torch.Tensor], torch.Tensor],
    drop: torch.nn.Module,
    scale: float,
) -> None:
    """Add FacT's branches to ``block``'s q, k, v, o, fc1 and fc2.

    ``sigma(kind, u)`` applies ``Σ`` of slice ``kind`` (``q``..``o``, ``fc1``: r → (.., 4, r),
    ``fc2``: (.., 4, r) → r) to the ``U``-projected input ``u``.
    """
    u, v = shared.u, shared.v

    def attention_branch(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: scale * v(drop(sigma(kind, u(x))))

    for kind in _ATTENTION:
        add_to_output(getattr(block.attention, f"{kind}_proj"), attention_branch(kind))

    def fc1_branch(x: torch.Tensor) -> torch.Tensor:
        return scale * v(drop(sigma("fc1", u(x)))).flatten(-2)

    def fc2_branch(x: torch.Tensor) -> torch.Tensor:
        slices = u(x.unflatten(-1, (4, x.shape[-1] // 4)))
        return scale * v(drop(sigma("fc2", slices)))

    add_to_output(block.mlp.fc1, fc1_branch)
    add_to_output(block.mlp.fc2, fc2_branch)


class FacTTT(TrainedWeights):
    """FacT-TT: ``Δy = s · V(Dropout(Σ_i(U x)))`` with a free ``Σ_i`` per slice.

    ``U`` (d→r) keeps ``nn.Linear``'s init, ``V`` (r→d) starts at zero, the ``Σ``s (bias-free
    ``Linear``: ``r→r`` for q, k, v, o; ``r→4r`` for fc1; ``4r→r`` for fc2) keep the default
    init; one dropout per block. Trainable: ``2·d·r + 12·L·r²``, plus the head.
    """

    name = "fact-tt"
    version = "1"
    description = (
        "FacT-TT: all attention and MLP weight increments as one tensor, tensor-train "
        "factors shared across blocks (rank, scale)"
    )
    scenarios = ("adapt",)
    params = FacTTTParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = FacTTTParams(**params)
        d, blocks = _check(model)
        weight = next(model.parameters())
        r = p.rank
        model.fact = _shared(d, r).to(weight.device, weight.dtype)
        for block in blocks:
            sigmas = torch.nn.ModuleDict(
                {kind: torch.nn.Linear(r, r, bias=False) for kind in _ATTENTION}
            )
            sigmas["fc1"] = torch.nn.Linear(r, 4 * r, bias=False)
            sigmas["fc2"] = torch.nn.Linear(4 * r, r, bias=False)
            block.fact = torch.nn.ModuleDict(
                {"sigma": sigmas, "drop": torch.nn.Dropout(p.dropout)}
            ).to(weight.device, weight.dtype)

            def sigma(kind: str, u: torch.Tensor, s: Any = sigmas) -> torch.Tensor:
                if kind == "fc1":
                    return s["fc1"](u).unflatten(-1, (4, r))
                if kind == "fc2":
                    return s["fc2"](u.flatten(-2))
                return s[kind](u)

            _hook_block(block, model.fact, sigma, block.fact["drop"], p.scale)
        return model


class FacTTK(TrainedWeights):
    """FacT-TK: ``Σ_i = C ×₃ P[:, i]`` from a shared core ``C`` (r×r×r) and ``P`` (r×12L).

    Column ``12·l + j`` of ``P`` serves block ``l``'s slice ``j``: q, k, v, o, then fc1's four
    and fc2's four slices; a slice's branch is ``u ↦ u Σ_i`` (the official code's orientation).
    ``U`` default init, ``V`` zero, ``C`` and ``P`` Xavier-uniform; one dropout per block.
    Trainable: ``2·d·r + 12·L·r + r³``, plus the head. Departure from the official code, whose
    attention and MLP of a block read overlapping columns of ``P`` (only ``8·L`` of its
    ``12·L`` columns are used): here every slice has its own column, as the paper writes it.
    """

    name = "fact-tk"
    version = "1"
    description = (
        "FacT-TK: all attention and MLP weight increments as one tensor, Tucker core and "
        "factors shared across blocks (rank, scale)"
    )
    scenarios = ("adapt",)
    params = FacTTKParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = FacTTKParams(**params)
        d, blocks = _check(model)
        weight = next(model.parameters())
        r = p.rank
        shared = _shared(d, r)
        shared.core = torch.nn.Parameter(torch.empty(r, r, r))
        shared.factors = torch.nn.Parameter(torch.empty(r, _SLICES * len(blocks)))
        torch.nn.init.xavier_uniform_(shared.core)
        torch.nn.init.xavier_uniform_(shared.factors)
        model.fact = shared.to(weight.device, weight.dtype)
        columns = {kind: j for j, kind in enumerate(_ATTENTION)}
        for index, block in enumerate(blocks):
            block.fact = torch.nn.ModuleDict({"drop": torch.nn.Dropout(p.dropout)}).to(
                weight.device
            )
            first = _SLICES * index

            def sigma(kind: str, u: torch.Tensor, first: int = first) -> torch.Tensor:
                if kind == "fc1":  # r -> (4, r): one Σ per slice of the hidden layer
                    cores = shared.core @ shared.factors[:, first + 4 : first + 8]
                    return torch.einsum("...a,abj->...jb", u, cores)
                if kind == "fc2":  # (4, r) -> r: the four slices' Σs summed
                    cores = shared.core @ shared.factors[:, first + 8 : first + 12]
                    return torch.einsum("...ja,abj->...b", u, cores)
                column = first + columns[kind]
                return u @ (shared.core @ shared.factors[:, column])

            _hook_block(block, shared, sigma, block.fact["drop"], p.scale)
        return model
