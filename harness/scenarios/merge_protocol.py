"""The method side of the ``merge`` scenario: a ViT run at a token-merging ratio other than
the one its downstream head was fine-tuned at.

The scenario loads a pretrained ViT (``image-classification``), installs ToMe
(:class:`harness.models.tome.TokenMerging`) and freezes it; a downstream head is
fine-tuned on the backbone's features at one merge ratio, and the model is then evaluated at
``r_tgt`` tokens merged per block. Every merge method's params derive from
:class:`MergeParams`, so a run is one ``(r_src, r_tgt)`` pair, or from :class:`MergeTarget`
alone (no ``r_src``) for a method whose head is fine-tuned at the ratio it runs at (the
matched upper bound). A method provides

* ``transform(model, params, ctx) -> model`` (optional) — change the backbone for running at
  ``r_tgt`` after being fine-tuned at ``r_src`` (a compensator), called once the head is
  trained and before evaluation; it may record its own figures; without it the model runs as
  is (plain ToMe at a mismatched ratio);
* ``added_params(model, params) -> int`` and ``storage_bytes(model, params) -> int``
  (optional) — what the method adds to every downstream model, counted and stored (none
  without them).

``model`` is the ``ViTForImageClassification`` (on ``ctx.device``, frozen, in eval mode)
with the scenario's ToMe installed, and its fine-tuned head as ``classifier``. When:
``transform`` in the ``transform`` phase, once the head is trained, with ToMe at the head's
ratio — after it the scenario sets ``r_tgt`` on its ToMe, so a method leaves that installed
(and does not install another on ``model``); ``added_params`` and ``storage_bytes`` after
evaluation, on the model ``transform`` returned.

``params`` is a plain ``dict``, the same for every call: the run's method params from the
suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
Every merge method's schema derives from :class:`MergeParams` or :class:`MergeTarget`: the
scenario reads its ``r_tgt``, and its ``r_src`` where it has one.

``ctx`` (:class:`harness.api.RunContext`, passed to ``transform``): a method may use
``ctx.device``, ``ctx.spec`` (``seed``, ``model``), ``ctx.cache_dir`` (through
:func:`build_cached`), ``ctx.load_model("image-classification")`` for a fresh copy of the
backbone to work on (its pretraining head intact; loading it records a ``load`` phase of its
own) and ``ctx.recorder.record(phase, metric, value, unit)`` for figures of its own (a
compensator's training loss); it raises :class:`harness.api.Unsupported` for a run this
machine can't do. The rest is the scenario's: phases and timing (``ctx.phase``,
``ctx.time``), validity, the downstream task and its data (``ctx.task``), the head's
fine-tuning, and the figures it records.

Services for a method that trains something of its own on the backbone (a compensator):
:func:`token_merging` (ToMe on a model, its ratio settable), :func:`pretraining_batches`
(the backbone's own pretraining images, for the built-in ViTs), :func:`backbone_id` and
:func:`build_cached` (train once per recipe, cached under the run's cache dir).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import Params, RunContext, Unsupported

if TYPE_CHECKING:
    import numpy as np
    import torch

    from harness.models.tome import TokenMerging

__all__ = [
    "MergeParams",
    "MergeTarget",
    "backbone_id",
    "build_cached",
    "pretraining_batches",
    "token_merging",
    "vit_block_flops",
]


class MergeTarget(Params):
    """The merge ratio a run's model runs at (``r_tgt``), its head fine-tuned there too."""

    r_tgt: int = Field(0, ge=0, description="tokens merged per block at fine-tuning and "
                       "evaluation")


class MergeParams(Params):
    """The merge ratios of a run: tokens merged per block when the head was fine-tuned
    (``r_src``) and when the model runs (``r_tgt``)."""

    r_src: int = Field(0, ge=0, description="tokens merged per block at fine-tuning")
    r_tgt: int = Field(0, ge=0, description="tokens merged per block at evaluation")


def vit_block_flops(counts: list[int], hidden: int, intermediate: int) -> int:
    """Floating-point operations (a multiply-add is 2) of ViT blocks entered by ``counts``
    tokens each: q, k, v and output projections, attention scores and mixing, and the MLP."""
    total = 0
    for n in counts:
        total += 8 * n * hidden * hidden + 4 * n * n * hidden + 4 * n * hidden * intermediate
    return total


def token_merging(model: Any, r: int = 0) -> TokenMerging:
    """ToMe installed on ``model`` (:class:`harness.models.tome.TokenMerging`), ``r`` settable."""
    from harness.models.tome import TokenMerging

    return TokenMerging(model, r)


def _recipe(model: Any) -> dict[str, Any] | None:
    """The ``recipe.json`` a built-in model was saved with, if it was."""
    path = Path(str(getattr(model.config, "_name_or_path", ""))) / "recipe.json"
    return json.loads(path.read_text()) if path.is_file() else None


def backbone_id(model: Any) -> str:
    """What identifies the backbone's weights: a built-in model's recipe hash, else its path."""
    info = _recipe(model)
    return str(info["recipe_hash"]) if info else str(getattr(model.config, "_name_or_path", ""))


def pretraining_batches(model: Any) -> Callable[[int, np.random.Generator], torch.Tensor]:
    """``batch(n, rng)``: ``n`` images of the backbone's pretraining data as its
    ``pixel_values`` — the fractals a built-in ViT's ``recipe.json`` names. Raises
    :class:`~harness.api.Unsupported` for a model without one."""
    from harness.data.fractals import FractalDB
    from harness.models.tiny_vit import pixel_values

    recipe = (_recipe(model) or {}).get("recipe", {})
    if "data" not in recipe:
        raise Unsupported(
            "this needs the backbone's pretraining data, and the model has no recipe.json "
            "naming it (a built-in ViT has)"
        )
    data = FractalDB(**recipe["data"])
    channels = model.config.num_channels

    def batch(n: int, rng: np.random.Generator) -> torch.Tensor:
        images, _ = data.batch(n, rng)
        return pixel_values(images, channels)

    return batch


def build_cached(ctx: RunContext, kind: str, recipe: Mapping[str, Any],
                 build: Callable[[Path], None], shipped: Path | None = None) -> Path:  # fmt: skip
    """``<shipped>/<recipe hash>/`` when a package ships it (as the built-in models ship
    their weights), else ``<cache_dir>/<kind>/<recipe hash>/``, made once by
    ``build(tmp_dir)`` (atomically, one process at a time) and reused by every run whose
    recipe is equal."""
    from harness.models.recipes import build_once, recipe_hash

    digest = recipe_hash(recipe)
    if shipped is not None and (shipped / digest).is_dir():
        return shipped / digest
    return build_once(Path(ctx.cache_dir) / kind / digest, build)
