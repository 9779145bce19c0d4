"""The ``adapt`` scenario: adapt a frozen pretrained ViT to a small classification task.

VTAB-1k's protocol, measured: a method attaches its modules to a frozen backbone
(:mod:`harness.scenarios.adapt_protocol`), trains on 800 images, picks the epoch with the best
accuracy on 200 validation images, and is scored once on the test split — never best-on-test.
Beside accuracy the run records what these methods trade it for: trainable parameters, the
bytes a task costs to store (the file the method saves, written and read back), the time of a
training step and peak memory while training (GPU and host), and inference latency and
throughput per image.

The recipe — AdamW with ``weight_decay``, ``epochs`` of ``batch_size``, linear warm-up over
``warmup`` of the steps then cosine decay to zero — is the task's params, so a suite fixes it
once for every method; the peak learning rate is each method's ``lr`` param, because methods
need very different rates. The run's seed sets the head's and the method's initialisation and
the order of the training data; the images come from the task's ``split_seed``, so every seed
and method sees the same split.

Images: tasks give float32 ``[N, C, H, W]`` in ``[0, 1]``. They are resized to the model's
``image_size`` (bilinear), grayscale is replicated to the model's channels, and values are
mapped to ``[-1, 1]`` (mean 0.5, std 0.5: the normalisation of ``builtin:tiny-vit`` and of
google/vit-base-patch16-224-in21k).

The task model is rebuilt from the saved file on a fresh copy of the backbone and must give the
very same test predictions; a run where it does not is marked ``invalid``.

Task protocol: its params schema extends :class:`AdaptTaskParams`, and
``data(params, seed) -> ImageSplits`` (:class:`harness.data.images.ImageSplits`: train, val and
test images and labels) gives its splits. The scenario passes the task's ``split_seed`` as
``seed`` (no inputs), so the split does not depend on the run's seed; the splits of the last few
tasks are kept in memory for the next run of the same worker.
"""

from __future__ import annotations

import copy
import math
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import CostColumn, CostPlot, Params, QualityColumn, ResultColumns, RunContext
from harness.probes.timing import LoopTimer, record_latency, summarize
from harness.scenarios import adapt_protocol
from harness.scenarios.adapt_protocol import load_task_state, save_task_state

if TYPE_CHECKING:
    import torch

    from harness.data.images import ImageSplits

__all__ = [
    "AdaptScenario",
    "AdaptTaskParams",
    "DigitsShift",
    "HFImages",
    "ImageFolder",
    "ShapesCount",
    "ShapesOrientation",
    "ShapesPosition",
    "pixel_values",
]


class AdaptTaskParams(Params):
    """A task's split sizes and the suite's training recipe (shared by every method)."""

    train: int = Field(800, gt=0)
    """Training images (class-balanced)."""
    val: int = Field(200, gt=0)
    """Validation images, on which the best epoch is picked."""
    test: int | None = Field(None, gt=0)
    """Test images; null keeps every image left over (tasks built from a fixed pool)."""
    size: int = Field(32, ge=8)
    """Side in pixels of the images the task renders or loads (the model resizes them)."""
    split_seed: int = 0
    """Seed of the images and their split, the same for every run seed and method."""
    epochs: int = Field(20, gt=0)
    """Training epochs over the train split."""
    batch_size: int = Field(64, gt=0)
    """Training batch size, in images."""
    weight_decay: float = Field(1e-4, ge=0)
    """AdamW weight decay."""
    warmup: float = Field(0.1, ge=0, lt=1)
    """Fraction of the training steps spent warming the learning rate up linearly."""
    eval_batch: int = Field(256, gt=0)
    """Batch size of evaluation and of the inference throughput timing, in images."""
    autocast: Literal["none", "bfloat16", "float16"] = "none"
    """Mixed precision for training and inference (CUDA); none computes in the model dtype."""


class _Generated:
    """A task rendered by a builder of :mod:`harness.data.images` from the split seed.

    The params beyond :class:`AdaptTaskParams` are the builder's own keyword arguments.
    """

    scenario = "adapt"
    params: type[AdaptTaskParams]
    builder: str

    def data(self, p: AdaptTaskParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data import images

        own = p.model_dump(exclude=set(AdaptTaskParams.model_fields))
        return getattr(images, self.builder)(
            seed, p.size, train=p.train, val=p.val, test=p.test, **own
        )


class DigitsShift(_Generated):
    """scikit-learn's digits rescaled and pasted at random on a noisy canvas."""

    name = "digits-shift"
    description = (
        "scikit-learn's digits (10 classes) at random scale and position on a noisy canvas; "
        "800/200 split, the 797 digits left over as test"
    )
    params = AdaptTaskParams
    builder = "digits_shift"


class RenderedParams(AdaptTaskParams):
    """Procedural tasks render as many test images as asked."""

    test: int = Field(1000, gt=0)
    """Test images rendered."""


class ShapesCountParams(RenderedParams):
    max_count: int = Field(6, ge=2)
    """Most objects in an image; the classes are the counts 1 to max_count."""


class ShapesCount(_Generated):
    """How many objects are in the image (CLEVR-count-like, structured)."""

    name = "shapes-count"
    description = "count 1..max_count disks, squares and diamonds (CLEVR-count-like)"
    params = ShapesCountParams
    builder = "shapes_count"


class ShapesPositionParams(RenderedParams):
    grid: int = Field(3, ge=2)
    """Cells per side of the grid; the classes are its grid x grid cells."""


class ShapesPosition(_Generated):
    """Which cell of a grid the disk is in, among distractor shapes (dSprites-location-like)."""

    name = "shapes-position"
    description = "which grid x grid cell holds the disk among distractors (dSprites-location)"
    params = ShapesPositionParams
    builder = "shapes_position"


class ShapesOrientationParams(RenderedParams):
    bins: int = Field(8, ge=2)
    """Angle bins the full turn is cut into, one class each."""


class ShapesOrientation(_Generated):
    """Which way an arrow points, in angle bins (dSprites-orientation-like)."""

    name = "shapes-orientation"
    description = "which of `bins` directions an arrow points (dSprites-orientation-like)"
    params = ShapesOrientationParams
    builder = "shapes_orientation"


class ImageFolderParams(AdaptTaskParams):
    path: str
    """Local folder with one sub-folder of images per class (the class names)."""
    grayscale: bool = True
    """Convert images to one grayscale channel; false keeps 3 RGB channels."""


class ImageFolder:
    """A local folder with one sub-folder of images per class."""

    name = "image-folder"
    description = "a local folder of images, one sub-folder per class (path=...), VTAB-1k split"
    scenario = "adapt"
    params = ImageFolderParams

    def data(self, p: ImageFolderParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data.images import image_folder

        return image_folder(
            p.path, p.size, grayscale=p.grayscale, train=p.train, val=p.val, test=p.test,
            seed=seed,
        )  # fmt: skip


class HFImagesParams(AdaptTaskParams):
    dataset: str
    """A hub id, a builder such as imagefolder (with data_dir), or a saved directory."""
    split: str = "train"
    """Split that train and val are drawn from (and test too, without test_split)."""
    test_split: str | None = None
    """VTAB's protocol: test on this split; null tests on the rest of split."""
    data_dir: str | None = None
    """data_dir passed to datasets.load_dataset (for builders such as imagefolder)."""
    image_column: str = "image"
    """Column holding the images."""
    label_column: str = "label"
    """Column holding the class labels."""
    grayscale: bool = True
    """Convert images to one grayscale channel; false keeps 3 RGB channels."""


class HFImages:
    """A Hugging Face image classification dataset (needs the ``datasets`` package)."""

    name = "hf-images"
    description = (
        "a Hugging Face image classification dataset (dataset=..., needs `datasets`), "
        "VTAB-1k split of `split`, optionally tested on `test_split`"
    )
    scenario = "adapt"
    params = HFImagesParams

    def data(self, p: HFImagesParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data.images import hf_image_dataset

        extra = {"data_dir": p.data_dir} if p.data_dir else {}
        return hf_image_dataset(
            p.dataset, p.split, image_column=p.image_column, label_column=p.label_column,
            size=p.size, grayscale=p.grayscale, train=p.train, val=p.val, test=p.test,
            test_split=p.test_split, seed=seed, **extra,
        )  # fmt: skip


#: Recently built splits of this process, keyed by task and params: a worker runs many
#: methods and seeds on the same task, and rendering a task takes up to seconds.
_SPLITS: OrderedDict[tuple[str, str], ImageSplits] = OrderedDict()


def task_splits(task: Any, params: AdaptTaskParams) -> ImageSplits:
    """``task.data(params, params.split_seed)``, remembered for the last few tasks of this
    process."""
    key = (task.name, params.model_dump_json())
    if key not in _SPLITS:
        _SPLITS[key] = task.data(params, params.split_seed)
        while len(_SPLITS) > 4:
            _SPLITS.popitem(last=False)
    _SPLITS.move_to_end(key)
    return _SPLITS[key]


def pixel_values(images: torch.Tensor, config: Any) -> torch.Tensor:
    """Task images in ``[0, 1]`` as the model's ``pixel_values`` (see the module docstring)."""
    import torch.nn.functional as F

    size, channels = config.image_size, config.num_channels
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    if images.shape[1] != channels:
        if images.shape[1] != 1:
            raise ValueError(
                f"the task's images have {images.shape[1]} channels and the model takes "
                f"{channels}; use grayscale images or a model with {images.shape[1]} channels"
            )
        images = images.expand(-1, channels, -1, -1)
    return images * 2 - 1


def fresh_head(model: torch.nn.Module, num_classes: int) -> None:
    """Freeze ``model`` and give it a trainable ``classifier`` for ``num_classes`` classes."""
    import torch

    head = getattr(model, "classifier", None)
    if not isinstance(head, torch.nn.Module) or not hasattr(model.config, "hidden_size"):
        raise TypeError(
            f"the adapt scenario needs a ViT-style image classifier with a `classifier` head "
            f"and config.hidden_size; got {type(model).__name__}"
        )
    model.requires_grad_(False)
    param = next(model.parameters())
    model.classifier = torch.nn.Linear(model.config.hidden_size, num_classes).to(
        param.device, param.dtype
    )
    model.config.num_labels = num_classes
    model.num_labels = num_classes


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class AdaptScenario:
    """Train a method's modules on a frozen backbone; accuracy beside every cost it trades."""

    name = "adapt"
    description = (
        "adapt a frozen pretrained ViT to a VTAB-1k-style task: test accuracy at the best "
        "validation epoch, trainable params, stored bytes per task, train step time and memory, "
        "inference latency and throughput"
    )
    method_protocol = ("attach", "task_state", "load_task_state")
    #: The method contract (``harness show scenario adapt``): the protocol module's docstring.
    contract = adapt_protocol.__doc__
    model_kinds = ("image-classification",)
    columns = ResultColumns(
        quality=(QualityColumn("accuracy", higher_is_better=True),
                 QualityColumn("accuracy", higher_is_better=True, phase="select")),
        # What a method costs to keep per task: the file it saves.
        costs=(CostColumn("storage", "storage", "storage_bytes", "bytes"),),
        plots=(CostPlot("storage", "Quality vs storage", "bytes stored", "storage bytes"),),
        trains=True,
    )

    def run(self, ctx: RunContext) -> None:
        import torch

        p: AdaptTaskParams = ctx.task.params(**ctx.spec.task_params)
        method_params = dict(ctx.spec.params)
        lr = ctx.method.params(**method_params).lr
        recorder = ctx.recorder
        data = task_splits(ctx.task, p)
        recorder.record("data", "classes", data.num_classes, "count")
        recorder.record("data", "test_images", len(data.test_y), "count")

        backbone = ctx.load_model("image-classification")
        # An untouched copy to rebuild the task model on; kept in host memory, so the GPU
        # memory measured while training is the method's alone.
        pristine = copy.deepcopy(backbone).cpu()
        torch.manual_seed(ctx.spec.seed)
        fresh_head(backbone, data.num_classes)
        head_params = sum(t.numel() for t in backbone.classifier.parameters())
        with ctx.phase("attach"):
            model = ctx.method.attach(backbone, method_params, ctx)
        _, trainable = ctx.count_parameters(model)
        recorder.record("model", "params_head", head_params, "count")
        if trainable == 0:
            raise ValueError(f"method '{ctx.spec.method}' left no parameter to train")

        trainer = _Trainer(model, p, lr, ctx)
        with ctx.phase("train"):
            best_epoch, best_val = trainer.fit(data)
        recorder.record("train", "best_epoch", best_epoch, "epoch")
        recorder.record("select", "accuracy", best_val, "", higher_is_better=True)

        with ctx.phase("eval"):
            logits = trainer.logits(data.test_x)
        predictions = logits.argmax(-1).cpu()
        accuracy = float((predictions == data.test_y).float().mean())
        recorder.record("eval", "accuracy", accuracy, "", higher_is_better=True)

        self._store_and_reload(ctx, p, model, pristine, method_params, data, predictions, logits)
        self._time_inference(ctx, trainer, data, p)

    def _store_and_reload(
        self,
        ctx: RunContext,
        p: AdaptTaskParams,
        model: torch.nn.Module,
        pristine: torch.nn.Module,
        method_params: Mapping[str, Any],
        data: ImageSplits,
        predictions: torch.Tensor,
        logits: torch.Tensor,
    ) -> None:
        """Save the task state, record its size, rebuild the task model from it and check it."""
        import torch

        recorder = ctx.recorder
        state = ctx.method.task_state(model, method_params)
        payload = sum(t.numel() * t.element_size() for t in state.values())
        with tempfile.TemporaryDirectory(prefix="harness-adapt-") as tmp:
            path = Path(tmp) / "task.safetensors"
            with ctx.phase("store"):
                stored = save_task_state(state, path)
            recorder.record("model", "storage_bytes", stored, "bytes")
            recorder.record("model", "payload_bytes", payload, "bytes")
            # The same head shape and a different seed: load_task_state must set everything.
            torch.manual_seed(ctx.spec.seed + 1)
            pristine.to(ctx.device)
            fresh_head(pristine, data.num_classes)
            rebuilt = ctx.method.attach(pristine, method_params, ctx)
            template = ctx.method.task_state(rebuilt, method_params)
            ctx.method.load_task_state(rebuilt, load_task_state(path, template), method_params)
        reloaded = _Trainer(rebuilt, p, 0.0, ctx).logits(data.test_x)
        same = torch.equal(reloaded.argmax(-1).cpu(), predictions)
        recorder.record("model", "reload_max_abs_diff", float((reloaded - logits).abs().max()), "")
        if not same:
            recorder.mark_invalid(
                "the task model rebuilt from the stored task state predicts differently"
            )

    def _time_inference(
        self, ctx: RunContext, trainer: _Trainer, data: ImageSplits, p: AdaptTaskParams
    ) -> None:
        """Throughput on full batches, and latency of one image."""
        batch = data.test_x[: p.eval_batch]
        single = data.test_x[:1]
        ctx.time("infer", lambda: trainer.logits(batch), items=len(batch), item_unit="image")
        ctx.time("infer_1", lambda: trainer.logits(single), items=1, item_unit="image")


class _Trainer:
    """The suite's recipe applied to one model: the training loop and batched inference."""

    def __init__(self, model: torch.nn.Module, p: AdaptTaskParams, lr: float, ctx: RunContext):
        import torch

        self.model = model
        self.p = p
        self.lr = lr
        self.ctx = ctx
        self.device = ctx.device
        self.config = _config(model)
        self.autocast = (
            torch.autocast(ctx.device.split(":")[0], dtype=getattr(torch, p.autocast))
            if p.autocast != "none"
            else None
        )

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        import contextlib

        x = pixel_values(images.to(self.device), self.config)
        x = x.to(next(self.model.parameters()).dtype)
        with self.autocast or contextlib.nullcontext():
            return self.model(pixel_values=x).logits.float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Eval-mode logits of ``images``, in batches of ``eval_batch``."""
        import torch

        self.model.eval()
        with torch.inference_mode():
            return torch.cat([self._forward(b) for b in images.split(self.p.eval_batch)])

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What the head reads for ``images`` (its input, caught by a hook), in eval mode."""
        import torch

        caught: list[torch.Tensor] = []
        hook = self.model.classifier.register_forward_pre_hook(
            lambda mod, args: caught.append(args[0])
        )
        try:
            self.logits(images)
        finally:
            hook.remove()
        return torch.cat(caught).clone()  # a clone made outside inference mode can train

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        return float((self.logits(images).argmax(-1).cpu() == labels).float().mean())

    def fit(self, data: ImageSplits) -> tuple[int, float]:
        """Train by the recipe; keep the trainable weights of the best validation epoch.

        Returns that epoch (1-based) and its validation accuracy. Ties keep the earlier epoch.
        """
        import torch
        import torch.nn.functional as F

        p, ctx = self.p, self.ctx
        params = [t for t in self.model.parameters() if t.requires_grad]
        head = self.model.classifier
        if {id(t) for t in params} <= {id(t) for t in head.parameters()}:
            # Only the head trains (linear probing): the frozen features it reads are the
            # same every epoch, so compute them once, as linear-probe protocols do.
            train_x, val_x = self.features(data.train_x), self.features(data.val_x)

            def forward(indices: torch.Tensor) -> torch.Tensor:
                return head(train_x[indices])

            def validate() -> float:
                self.model.eval()
                with torch.inference_mode():
                    predicted = head(val_x).argmax(-1).cpu()
                return float((predicted == data.val_y).float().mean())
        else:

            def forward(indices: torch.Tensor) -> torch.Tensor:
                return self._forward(data.train_x[indices])

            def validate() -> float:
                return self.accuracy(data.val_x, data.val_y)

        optimizer = torch.optim.AdamW(params, lr=self.lr, weight_decay=p.weight_decay)
        n = len(data.train_y)
        per_epoch = math.ceil(n / p.batch_size)
        total = p.epochs * per_epoch
        warmup = round(p.warmup * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(step, total, warmup)
        )
        order = torch.Generator().manual_seed(ctx.spec.seed)
        timer = LoopTimer(self.device)
        best_epoch, best_val, best_state = 0, -1.0, None
        losses: list[float] = []
        for epoch in range(1, p.epochs + 1):
            self.model.train()
            permutation = torch.randperm(n, generator=order)
            epoch_losses = []
            for indices in permutation.split(p.batch_size):
                with timer.step():
                    logits = forward(indices)
                    loss = F.cross_entropy(logits, data.train_y[indices].to(self.device))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    scheduler.step()
                epoch_losses.append(loss.detach())
            losses.append(float(torch.stack(epoch_losses).mean()))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"training loss is {losses[-1]} in epoch {epoch}")
            val = validate()
            if val > best_val:
                best_epoch, best_val = epoch, val
                best_state = [t.detach().clone() for t in params]
        with torch.no_grad():
            for t, kept in zip(params, best_state or [], strict=True):
                t.copy_(kept)
        self._record_steps(timer, losses, per_epoch, total)
        return best_epoch, best_val

    def _record_steps(
        self, timer: LoopTimer, losses: list[float], per_epoch: int, total: int
    ) -> None:
        record = self.ctx.recorder.record
        samples = timer.samples_ms()
        # The first epoch holds one-time costs (allocator growth, lazy init): report it apart.
        steady = samples[per_epoch:] or samples
        stats = record_latency(self.ctx.recorder, "train_step", samples, summarize(steady))
        record("train_step", "latency", summarize(samples[:per_epoch])["mean"], "ms",
               stat="first_epoch_mean")
        record("train_step", "throughput", self.p.batch_size / (stats["median"] / 1e3),
               "image/s", stat="median")
        record("train", "steps", total, "count")
        record("train", "final_loss", losses[-1], "nats")


def _config(model: Any) -> Any:
    """The transformers config of ``model`` or of the model a wrapper (PEFT) holds."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "image_size"):
        raise TypeError(f"{type(model).__name__} has no ViT config (image_size, num_channels)")
    return config
