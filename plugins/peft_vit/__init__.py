"""Parameter-efficient adaptation of a frozen ViT, for the ``adapt`` scenario.

Each method attaches its modules to a frozen pretrained ViT, says what trains, and says what a
task stores (:mod:`harness.scenarios.adapt_protocol`):

* baselines — ``linear`` (head only), ``full-finetune`` (every weight), ``bitfit`` (biases), ``vpt``
  (prompt tokens, shallow or deep), ``lora`` (through PEFT), ``adaptformer`` (a bottleneck
  beside each MLP);
* ``fact-tt`` and ``fact-tk`` — FacT: every block's weight increments as one tensor, factorised
  by tensor-train or Tucker with factors shared across blocks;
* ``convpass`` — Convpass: 3x3 convolutional bypasses over the patch grid beside attention
  and MLP;
* ``bi-adaptformer`` and ``bi-lora`` — adapters quantized to 1 (2, 4, 8) bits with a
  Gaussian-quantile codebook and a straight-through estimator, stored as packed bits.

Registering this plugin imports neither torch nor transformers: the methods import them
when they attach.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .adaptformer import AdaptFormer
from .bi_adapters import BiAdaptFormer, BiLoRA
from .bitfit import BitFit
from .convpass import Convpass
from .fact import FacTTK, FacTTT
from .full import Full
from .linear import Linear
from .lora import LoRA
from .vpt import VPT

__all__ = [
    "VPT",
    "AdaptFormer",
    "BiAdaptFormer",
    "BiLoRA",
    "BitFit",
    "Convpass",
    "FacTTK",
    "FacTTT",
    "Full",
    "Linear",
    "LoRA",
    "harness_add_methods",
]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [
        Linear(), Full(), BitFit(), VPT(), LoRA(), AdaptFormer(),
        FacTTT(), FacTTK(), Convpass(), BiAdaptFormer(), BiLoRA(),
    ]  # fmt: skip
