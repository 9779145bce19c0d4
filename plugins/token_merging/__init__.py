"""Token merging at mismatched ratios, for the ``merge`` scenario.

* ``tome`` — plain ToMe: the head fine-tuned at ``r_src``, the model run at ``r_tgt``;
* ``tome-matched`` — the upper bound: the head fine-tuned at the ratio it runs at;
* ``tocom`` — Token Compensator (ECCV 2024): a LoRA-like plug-in on every block's q and v,
  trained once on the backbone's pretraining data by self-distillation, whose rank-2
  sub-blocks compensate between adjacent ratios, inserted into the downstream model for
  ``r_src → r_tgt`` without retraining it.

Registering imports neither torch nor transformers: the modules do, on first use.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .tocom import ToCom
from .tome import ToMe, ToMeMatched

__all__ = ["ToCom", "ToMe", "ToMeMatched", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [ToMe(), ToMeMatched(), ToCom()]
