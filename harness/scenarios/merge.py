"""The ``merge`` scenario: a token-merged ViT run at a merge ratio other than the one its
downstream head was fine-tuned at, with and without a method that compensates.

Token merging (ToMe, :mod:`harness.models.tome`) makes a ViT faster by merging ``r`` tokens
per block; a downstream model fine-tuned at one ``r`` loses accuracy at another. A run is one
``(r_src, r_tgt)`` pair (the method's params, :class:`~.merge_protocol.MergeParams`), or
``r_tgt`` alone for a method whose head is tuned where it runs
(:class:`~.merge_protocol.MergeTarget`):

1. the pretrained ViT (model kind ``image-classification``) gets ToMe and is frozen;
2. a fresh linear head is fine-tuned on its class-token features at ``r_src`` (``r_tgt``
   when the method's params have no ``r_src``): ``head_steps`` full-batch
   AdamW steps from the run's seed on the task's train split (the features are computed once:
   the frozen backbone has no dropout in eval mode);
3. the method may ``transform`` the model for running at ``r_tgt``;
4. the model runs at ``r_tgt``: test accuracy, throughput of ``eval_batch`` images
   (images/s) and single-image latency, both timed loops, and the FLOPs of its blocks per
   image counted from the tokens that enter each (:func:`~.merge_protocol.vit_block_flops`).

Records: ``eval/accuracy`` (the headline), ``select/accuracy`` (the validation split at
``r_tgt``, on which a method's settings are chosen), ``eval/accuracy_at_head_ratio`` (the same
head at the ratio it was fine-tuned at: what mismatch costs), ``model/flops_per_image``,
``model/final_tokens`` (tokens leaving the last block), timed phases ``batch`` and
``single``, ``model/added_params`` and ``model/storage_bytes`` (what the method adds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import CostColumn, CostPlot, Params, QualityColumn, ResultColumns, RunContext
from harness.scenarios import merge_protocol

if TYPE_CHECKING:
    import torch

    from harness.data.images import ImageSplits

__all__ = ["MergeDigits", "MergeScenario", "MergeShapesCount", "MergeTaskParams"]


class MergeTaskParams(Params):
    """A downstream image task's split sizes and how its head is fine-tuned."""

    train: int = Field(800, gt=0)
    """Training images, on which the linear head is fine-tuned."""
    val: int = Field(200, gt=0)
    """Validation images split off: scored at ``r_tgt`` as ``select/accuracy``, to choose
    a method's settings on (never the test split)."""
    test: int | None = Field(None, gt=0)
    """Test images; null: every image left over, or 1000 for a rendered task."""
    size: int = Field(32, ge=8)
    """Side in pixels of the rendered images (the model resizes them)."""
    split_seed: int = 0
    """Seed of the images and their split, the same for every run seed and method."""
    head_steps: int = Field(300, gt=0)
    """Full-batch AdamW steps fine-tuning the head on the frozen backbone's features."""
    head_lr: float = Field(1e-2, gt=0)
    """Learning rate of the head's fine-tuning."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay of the head's fine-tuning."""
    eval_batch: int = Field(256, gt=0)
    """Images per evaluation batch, and the batch of the throughput timing."""


class _MergeTask:
    """A downstream task rendered by a builder of :mod:`harness.data.images`."""

    scenario = "merge"
    params: type[MergeTaskParams] = MergeTaskParams
    builder: str

    def data(self, p: MergeTaskParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data import images

        # null: the builder's own default (every image left over, or a rendered task's count).
        sizes = {"train": p.train, "val": p.val, **({"test": p.test} if p.test else {})}
        return getattr(images, self.builder)(p.split_seed, p.size, **sizes)


class MergeDigits(_MergeTask):
    name = "digits-merge"
    description = (
        "scikit-learn's digits at random scale and position on a noisy canvas (10 classes), "
        "800 train, the rest test: a downstream task for a token-merged ViT"
    )
    builder = "digits_shift"


class MergeShapesCount(_MergeTask):
    name = "shapes-count-merge"
    description = "count 1..6 disks, squares and diamonds: a downstream task for a merged ViT"
    builder = "shapes_count"


def _features(model: Any, x: torch.Tensor, batch: int) -> torch.Tensor:
    """Class-token features of the frozen, token-merged backbone (after its final norm)."""
    import torch

    with torch.inference_mode():
        return torch.cat([
            model.vit(pixel_values=x[i : i + batch]).last_hidden_state[:, 0]
            for i in range(0, len(x), batch)
        ])  # fmt: skip


def _accuracy(model: Any, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    import torch

    with torch.inference_mode():
        predicted = torch.cat([model(pixel_values=x[i : i + batch]).logits.argmax(-1)
                               for i in range(0, len(x), batch)])  # fmt: skip
    return float((predicted.cpu() == y).float().mean())


class MergeScenario:
    """A downstream ViT fine-tuned at one merge ratio, run at another."""

    name = "merge"
    description = (
        "a frozen token-merged ViT with a head fine-tuned at merge ratio r_src, run at r_tgt: "
        "test accuracy beside images/s, single-image latency and FLOPs per image"
    )
    method_protocol = ()
    #: The method contract (``harness show scenario merge``): the protocol module's docstring.
    contract = merge_protocol.__doc__
    model_kinds = ("image-classification",)
    columns = ResultColumns(
        quality=(QualityColumn("accuracy", higher_is_better=True),
                 QualityColumn("accuracy", higher_is_better=True, phase="select")),
        costs=(
            CostColumn("flops", "FLOPs / image", "flops_per_image", "flop"),
            CostColumn("added_params", "added params", "added_params", "count"),
        ),
        plots=(CostPlot("throughput", "Accuracy vs throughput", "images/s", "throughput"),
               CostPlot("flops", "Accuracy vs FLOPs", "FLOPs per image", "FLOPs per image")),
        trains=True,
    )  # fmt: skip

    def run(self, ctx: RunContext) -> None:
        import torch

        from harness.models.tome import TokenMerging, token_counts
        from harness.scenarios.adapt import pixel_values
        from harness.scenarios.merge_protocol import vit_block_flops

        p = ctx.task.params(**ctx.spec.task_params)
        params = dict(ctx.spec.params)
        r_tgt = int(params["r_tgt"])
        method = ctx.method
        record = ctx.recorder.record
        data = ctx.task.data(p, ctx.spec.seed)
        model = ctx.load_model("image-classification").eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        tome = TokenMerging(model)
        config = model.config
        train_x = pixel_values(data.train_x, config).to(ctx.device)
        test_x = pixel_values(data.test_x, config).to(ctx.device)
        val_x = pixel_values(data.val_x, config).to(ctx.device)

        tome.r = int(params.get("r_src", r_tgt))
        with ctx.phase("fine_tune"):
            head = self.fine_tune(ctx, _features(model, train_x, p.eval_batch), data.train_y,
                                  data.num_classes, p)  # fmt: skip
        model.classifier = head
        at_head = _accuracy(model, test_x, data.test_y, p.eval_batch)
        if hasattr(method, "transform"):
            with ctx.phase("transform"):
                model = method.transform(model, params, ctx)
        tome.r = r_tgt
        with ctx.phase("eval"):
            accuracy = _accuracy(model, test_x, data.test_y, p.eval_batch)
        record("eval", "accuracy", accuracy, "", higher_is_better=True)
        record("select", "accuracy", _accuracy(model, val_x, data.val_y, p.eval_batch), "",
               higher_is_better=True)
        record("eval", "accuracy_at_head_ratio", at_head, "")
        record("eval", "test_images", len(data.test_y), "count")
        counts = tome.counts
        record("model", "flops_per_image",
               vit_block_flops(counts, config.hidden_size, config.intermediate_size), "flop")
        leaving = token_counts(counts[0], r_tgt, len(counts) + 1)[-1]
        record("model", "final_tokens", leaving, "count")
        added = method.added_params(model, params) if hasattr(method, "added_params") else 0
        stored = method.storage_bytes(model, params) if hasattr(method, "storage_bytes") else 0
        record("model", "added_params", added, "count")
        record("model", "storage_bytes", stored, "bytes")

        batch, single = test_x[: p.eval_batch], test_x[:1]

        def forward(x: torch.Tensor) -> None:
            with torch.inference_mode():
                model(pixel_values=x)

        ctx.time("batch", lambda: forward(batch), items=len(batch), item_unit="image")
        ctx.time("single", lambda: forward(single), items=1, item_unit="image")

    @staticmethod
    def fine_tune(ctx: RunContext, features: torch.Tensor, labels: torch.Tensor,
                  classes: int, p: MergeTaskParams) -> torch.nn.Module:  # fmt: skip
        """A linear head on frozen features: full-batch AdamW from the run's seed."""
        import torch

        torch.manual_seed(ctx.spec.seed)
        head = torch.nn.Linear(features.shape[1], classes).to(features.device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=p.head_lr,
                                      weight_decay=p.weight_decay)  # fmt: skip
        labels = labels.to(features.device)
        features = features.clone()  # out of inference mode: autograd may use it
        for _ in range(p.head_steps):
            loss = torch.nn.functional.cross_entropy(head(features), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        ctx.recorder.record("fine_tune", "final_loss", float(loss.detach()), "nats")
        return head.eval()
