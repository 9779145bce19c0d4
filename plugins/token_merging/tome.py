"""``tome`` and ``tome-matched``: token merging without compensation, and its upper bound.

``tome`` runs the downstream model, whose head was fine-tuned at ``r_src``, at ``r_tgt`` as
is. ``tome-matched`` fine-tunes the head at ``r_tgt`` itself: the accuracy a model tuned for
the ratio it runs at reaches, which a compensator tries to approach without retraining.
"""

from __future__ import annotations

from harness.scenarios.merge_protocol import MergeParams, MergeTarget

__all__ = ["ToMe", "ToMeMatched"]


class ToMe:
    """ToMe at a mismatched ratio: no compensation."""

    name = "tome"
    version = "1"
    description = "token merging (ToMe) run at r_tgt with the head fine-tuned at r_src"
    scenarios = ("merge",)
    params = MergeParams


class ToMeMatched:
    """The head fine-tuned at the ratio the model runs at: its params have no ``r_src``."""

    name = "tome-matched"
    role = "upper-bound"
    version = "1"
    description = "token merging with the head fine-tuned at r_tgt itself: the upper bound"
    scenarios = ("merge",)
    params = MergeTarget
