"""``bi-adaptformer`` and ``bi-lora``: adapters quantized to 1 (2, 4, 8) bits, stored packed.

"Revisiting the Parameter Efficiency of Adapters from the Perspective of Precision Redundancy"
(Jie et al., ICCV 2023): adapters converge to flat minima, so their weights survive low
precision. Every adapter matrix is a :class:`~.quantized.QLinear` — normalised
by its own mean and std, rounded to a Gaussian-quantile codebook (±0.6745 at 1 bit), trained
through a straight-through estimator — and a task stores only the packed codes plus μ, σ per
matrix. ``bits=32`` is the same adapter in plain fp32. With ``bi_head`` the classifier is a
bias-free QLinear of the same width too, so the whole task fits in a few hundred bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import RunContext
from harness.scenarios.adapt_protocol import (
    AdaptParams,
    load_trainable_state,
    trainable_state,
)

from .common import add_to_mlp, add_to_output, vit_blocks

if TYPE_CHECKING:
    import torch

__all__ = ["BiAdaptFormer", "BiAdaptFormerParams", "BiLoRA", "BiLoRAParams"]

#: Half-width of the truncated normal that quantized up-projections start from (std 0.001).
_UP_STD = 1e-3


class _BiParams(AdaptParams):
    """Bit width, bottleneck width, output scale, dropout, and the binary head.

    Width 8 matches ``adaptformer``'s and ``lora``'s defaults here (the paper uses 32 at
    d = 768). Scale 1: on a short validation check (shapes-orientation and -count, 400
    images, 8 epochs, lr 1e-2) s = 1 was as good as or better than 0.1 at both 1 and 32
    bits, by ~2 points at 1 bit.
    """

    lr: float = Field(1e-2, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""
    bits: Literal[1, 2, 4, 8, 32] = 1
    """Bits per adapter weight; 32 is plain fp32 (no quantization)."""
    dim: int = Field(8, gt=0)
    """Bottleneck width: AdaptFormer's hidden size, or LoRA's rank."""
    scale: float = 1.0
    """Factor s on the adapter's output."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout probability between the down- and up-projection."""
    bi_head: bool = False
    """Make the classifier a bias-free QLinear of bits bits too (the paper's Bi-Head)."""


class BiAdaptFormerParams(_BiParams):
    """Bi-AdaptFormer's params: those of every quantized adapter here."""


class BiLoRAParams(_BiParams):
    """Bi-LoRA's params: those of every quantized adapter here."""


def _qlinear(d_in: int, d_out: int, bits: int, *, zero_start: bool) -> torch.nn.Module:
    """A QLinear with ``nn.Linear``'s default init, or the up-projection's start.

    An up-projection (``zero_start``) is zero in fp32, so step 0 is the backbone; a quantized
    one starts from a truncated normal (std 0.001, cut at ±0.002) as in the paper, because an
    all-zero matrix has no std to normalise by (and no gradient through it).
    """
    import torch

    from .quantized import QLinear

    layer = QLinear(d_in, d_out, bits)
    if not zero_start:
        torch.nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))
    elif bits == 32:
        torch.nn.init.zeros_(layer.weight)
    else:
        torch.nn.init.trunc_normal_(layer.weight, std=_UP_STD, a=-2 * _UP_STD, b=2 * _UP_STD)
    return layer


def _binary_head(model: torch.nn.Module, bits: int) -> None:
    """Replace the fresh ``classifier`` by a bias-free QLinear starting from its weight."""
    import torch

    from .quantized import QLinear

    old = model.classifier
    head = QLinear(old.in_features, old.out_features, bits)
    with torch.no_grad():
        head.weight.copy_(old.weight)
    model.classifier = head.to(old.weight.device, old.weight.dtype)


class _QuantizedAdapters:
    """Task state of quantized adapters: packed codes and μ, σ per QLinear, fp32 for the rest.

    Every QLinear (adapters, and the head with ``bi_head``) stores ``codes`` (``bits`` bits
    per weight, packed into uint8) and ``stats`` (μ, σ in fp32), or its fp32 ``weight`` at 32
    bits; any other trainable tensor (the fp32 head's weight and bias) is stored as is.
    """

    def task_state(self, model: torch.nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        from .quantized import QLinear

        state: dict[str, Any] = {}
        packed_weights = set()
        for name, module in model.named_modules():
            if isinstance(module, QLinear):
                for key, tensor in module.packed().items():
                    state[f"{name}.{key}"] = tensor
                packed_weights.add(f"{name}.weight")
        for name, tensor in trainable_state(model).items():
            if name not in packed_weights:
                state[name] = tensor
        return state

    def load_task_state(
        self, model: torch.nn.Module, state: Mapping[str, Any], params: Mapping[str, Any]
    ) -> None:
        from .quantized import QLinear

        rest = dict(state)
        for name, module in model.named_modules():
            if isinstance(module, QLinear):
                keys = [k for k in rest if k.rpartition(".")[0] == name]
                module.load_packed({k.rpartition(".")[2]: rest.pop(k) for k in keys})
        load_trainable_state(model, rest)


class BiAdaptFormer(_QuantizedAdapters):
    """AdaptFormer with ``bits``-bit weights: ``x + MLP(LN(x)) + s · Up(Drop(ReLU(Down(x))))``.

    The adapter reads the residual stream ``x`` before the MLP's LayerNorm (AdaptFormer's
    parallel form). ``Down`` (d→dim) and ``Up`` (dim→d) are bias-free QLinears (the paper
    drops the biases so that everything stored is quantized). Init: ``Down`` as
    ``nn.Linear``; ``Up`` zero at 32 bits (step 0 is the backbone), else a truncated normal of
    std 0.001 (step 0 is then *near* the backbone). Trainable: ``2 · d · dim`` per block, plus
    the head (``d · K + K``, or ``d · K`` with ``bi_head``). Stored per matrix:
    ``⌈n · bits / 8⌉`` bytes of codes + 8 bytes of μ, σ (fp32 weights at 32 bits).
    """

    name = "bi-adaptformer"
    version = "1"
    description = (
        "Bi-AdaptFormer: AdaptFormer with 1/2/4/8-bit Gaussian-codebook weights (STE), "
        "stored packed; optional 1-bit head"
    )
    scenarios = ("adapt",)
    params = BiAdaptFormerParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = BiAdaptFormerParams(**params)
        d = model.config.hidden_size
        weight = next(model.parameters())
        for block in vit_blocks(model):
            adapter = torch.nn.Sequential(
                _qlinear(d, p.dim, p.bits, zero_start=False),
                torch.nn.ReLU(),
                torch.nn.Dropout(p.dropout),
                _qlinear(p.dim, d, p.bits, zero_start=True),
            )
            block.bi_adaptformer = adapter.to(weight.device, weight.dtype)
            add_to_mlp(block, lambda x, a=adapter: p.scale * a(x), normed=False)
        if p.bi_head:
            _binary_head(model, p.bits)
        return model


class BiLoRA(_QuantizedAdapters):
    """LoRA on the query and value projections with ``bits``-bit ``A`` and ``B``.

    ``q = W_q x + s · B_q(Drop(A_q x))`` and likewise for ``v``, with ``A`` (d→dim) and ``B``
    (dim→d) bias-free QLinears and dropout between them (as in the paper's code; PEFT's LoRA
    drops the input instead). Init: ``A`` as ``nn.Linear`` (Kaiming uniform); ``B`` zero at 32
    bits (step 0 is the backbone), else a truncated normal of std 0.001. Trainable:
    ``4 · d · dim`` per block, plus the head; stored as for :class:`BiAdaptFormer`.
    """

    name = "bi-lora"
    version = "1"
    description = (
        "Bi-LoRA: LoRA on q and v with 1/2/4/8-bit Gaussian-codebook weights (STE), "
        "stored packed; optional 1-bit head"
    )
    scenarios = ("adapt",)
    params = BiLoRAParams

    def attach(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        import torch

        p = BiLoRAParams(**params)
        d = model.config.hidden_size
        weight = next(model.parameters())
        for block in vit_blocks(model):
            pair = torch.nn.ModuleDict()
            for key in ("q", "v"):
                pair[key] = torch.nn.Sequential(
                    _qlinear(d, p.dim, p.bits, zero_start=False),
                    torch.nn.Dropout(p.dropout),
                    _qlinear(p.dim, d, p.bits, zero_start=True),
                )
                projection = getattr(block.attention, f"{key}_proj")
                add_to_output(projection, lambda x, m=pair[key]: p.scale * m(x))
            block.bi_lora = pair.to(weight.device, weight.dtype)
        if p.bi_head:
            _binary_head(model, p.bits)
        return model
