"""The method side of the ``vqa`` scenario: connecting a frozen vision encoder to a frozen
causal LM, training only the connection.

The scenario loads the run's model as a ``causal-lm`` and the task's encoder (a transformers
ViT, ``image-classification``), freezes both, and asks the method for a connector:

* ``connect(lm, encoder, params, ctx) -> Connector`` (:class:`Connector`) — add the
  method's modules (to the LM, the encoder or a projector of its own) and make trainable
  exactly what the method trains.
  The returned ``torch.nn.Module`` owns the LM and the encoder as submodules, so its
  ``requires_grad`` parameters are the method's statement of what trains and what is stored.

A connector has two calls:

* ``encode(pixel_values) -> visual`` — what the LM is prompted with for these images (a tensor,
  or ``None`` for a method that ignores them); computed once per image and handed to every
  ``forward`` of the same prompt, prefill and each decode step;
* ``forward(visual, input_ids, attention_mask, past_key_values=None) -> output`` — the LM's
  output (``.logits`` for the text positions ``input_ids`` holds, last ``input_ids.shape[1]``
  of them, and ``.past_key_values``). ``input_ids`` is left-padded text; on a decode step it
  holds the new tokens only and ``attention_mask`` covers the text so far. A method that adds
  positions to the LM's sequence (visual tokens in the input) adds them to the mask itself,
  and only on the prefill (empty cache).

When: ``connect`` is called outside any phase, after the scenario seeded torch with the run's
seed, on the LM and encoder frozen, in eval mode, on ``ctx.device``; the connector then
trains in the ``train`` phase (the scenario's AdamW over its ``requires_grad`` parameters,
and it checks afterwards that the LM and the encoder did not change) and answers in the
``eval`` phase. What trains is stored by parameter name; unless the task's ``check_reload``
is off, ``connect`` is called once more on freshly loaded models and that state is loaded
into the new connector, which must answer the same: ``connect`` builds the same structure
every time, and a figure recorded there is recorded twice.

``params`` is a plain ``dict``, the same for every call: the run's method params from the
suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
Every vqa method's schema derives from :class:`VQAMethodParams` (the scenario reads its
``lr``), and a method that feeds the LM visual tokens from :class:`VisualParams` (how many:
the encoder's patch grid pooled to ``visual_tokens``).

``ctx`` (:class:`harness.api.RunContext`, passed to ``connect``): a method may use
``ctx.device``, ``ctx.spec`` (``seed``, ``model``), ``ctx.cache_dir``, ``ctx.load_tokenizer()``
and ``ctx.recorder.record(phase, metric, value, unit)`` for figures of its own; it raises
:class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity, the
task and its questions (``ctx.task``), the training loop and the decoding, and the figures it
records.

Services: :func:`patch_features` (the encoder's patch tokens pooled to ``n``) and
:func:`position_ids` (RoPE positions that skip left padding).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import Field

from harness.api import Params

if TYPE_CHECKING:
    import torch

__all__ = ["Connector", "VQAMethodParams", "VisualParams", "patch_features", "position_ids"]


class Connector(Protocol):
    """What ``connect`` returns (a ``torch.nn.Module`` owning the LM and the encoder)."""

    def encode(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """What the LM is prompted with for these images, or None (see the module docstring)."""
        ...

    def __call__(
        self,
        visual: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past_key_values: Any = None,
    ) -> Any:
        """The LM's output for the text positions of ``input_ids``."""
        ...


class VQAMethodParams(Params):
    """What every vqa method's params have: its peak learning rate (AdamW, cosine)."""

    lr: float = Field(1e-3, gt=0, description="peak AdamW learning rate")


class VisualParams(VQAMethodParams):
    """A method that hands the LM visual tokens: how many."""

    visual_tokens: int = Field(
        64, gt=0, description="visual tokens per image: the encoder's patch grid average-pooled"
    )


def patch_features(encoder: torch.nn.Module, pixel_values: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n, hidden]``: the encoder's final patch tokens (class token dropped), their square
    grid average-pooled to ``sqrt(n) x sqrt(n)``; gradients flow when enabled (adapters)."""
    import torch.nn.functional as F

    vit = getattr(encoder, "vit", encoder)
    tokens = vit(pixel_values=pixel_values).last_hidden_state[:, 1:]
    batch, count, hidden = tokens.shape
    side, target = math.isqrt(count), math.isqrt(n)
    if side * side != count or target * target != n or side % target:
        fits = ", ".join(str((side // d) ** 2) for d in range(1, side + 1) if side % d == 0)
        raise ValueError(
            f"visual_tokens={n} must be a square whose side divides the encoder's "
            f"{side}x{side} patch grid: one of {fits}"
        )
    grid = tokens.transpose(1, 2).reshape(batch, hidden, side, side)
    pooled = F.adaptive_avg_pool2d(grid, target)
    return pooled.flatten(2).transpose(1, 2)


def position_ids(attention_mask: torch.Tensor, new: int) -> torch.Tensor:
    """Positions of the last ``new`` tokens counted over unmasked tokens only, so a left-padded
    prompt gets the positions it would have alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -new:]
