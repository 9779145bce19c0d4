"""The ``continual`` scenario: a stream of tasks, a learner with a memory budget, forgetting.

A labelled image dataset is split into ``tasks`` tasks of equally many classes, in a class
order drawn from the run's seed (:mod:`harness.data.streams`). The method's learner sees each
task's training set for ``epochs`` epochs in batches of ``batch_size`` (``epochs: 1`` is the
online, single-pass setting) and never sees a task again; its side of the protocol is in
:mod:`harness.scenarios.continual_protocol`. After each task the model is evaluated on every
task seen so far.

Task protocol: its params schema extends :class:`ContinualTaskParams`, and
``data(params, seed) -> ImageSplits`` (:class:`harness.data.images.ImageSplits`: train, val and
test images and labels of the whole labelled dataset; no inputs) gives the data the scenario
splits into the stream. ``seed`` is the run's seed (the split may depend on it).

Features (task param ``features``):

* ``backbone`` — the suite's model (``builtin:tiny-vit``, or an ``hf`` ViT) as a frozen feature
  extractor: its CLS token, computed once per run, then standardized. With
  ``train_backbone: true`` the backbone trains with the head instead (images go through it
  every step; slower);
* ``pixels`` — standardized raw pixels (the model is not loaded).

Standardization uses the statistics of the training inputs only, and divides by ``sqrt(d)``
so feature rows have norm about 1.

Settings (task param ``setting``): ``class-incremental`` predicts among every class seen so
far; ``task-incremental`` is told the task and predicts among its classes.

Recorded (accuracies in %, ``A[i][j]`` = accuracy on task ``j`` after training task ``i``):

* ``eval/accuracy`` — final average accuracy, the mean of ``A[T-1][j]`` (the headline);
* ``eval/avg_incremental_accuracy`` — the mean over ``i`` of the mean of ``A[i][:i+1]``;
* ``eval/forgetting`` — the mean over ``j < T-1`` of ``max_{j<=l<T-1} A[l][j] - A[T-1][j]``;
* ``eval/backward_transfer`` — the mean over ``j < T-1`` of ``A[T-1][j] - A[j][j]``;
* ``eval/within_task_forgetting`` — forgetting of the within-task accuracy (prediction
  restricted to task ``j``'s classes): how much each task's own decision boundary degraded;
* ``eval/recency_bias`` — the share of final predictions that fall in the last task's classes
  (ideal: its share of the evaluation examples, also recorded as stat ``ideal``);
* ``eval/accuracy_matrix`` and ``eval/within_task_accuracy_matrix`` — every ``A[i][j]``, as
  stats ``after_{i}_task_{j}`` (the run page draws them as a matrix);
* ``train/buffer_bytes`` — bytes the learner keeps besides the model; ``train/batches``, the
  ``observe`` calls; trainable and total parameters of the model (phase ``model``) and of a
  frozen backbone (phase ``backbone``); the probes' time and peak memory of the ``features``,
  ``train`` and ``eval`` phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import CostColumn, CostPlot, Params, QualityColumn, ResultColumns, RunContext
from harness.scenarios import continual_protocol

if TYPE_CHECKING:
    import torch

    from harness.data.images import ImageSplits
    from harness.data.streams import TaskData
    from harness.scenarios.continual_protocol import Learner, StreamInfo

__all__ = [
    "ContinualScenario",
    "ContinualTaskParams",
    "SplitDigits",
    "SplitImages",
    "SplitShapes",
    "average_forgetting",
    "backward_transfer",
    "incremental_accuracy",
]


class ContinualTaskParams(Params):
    """What every ``continual`` task's params have: the stream, the schedule, the features.

    ``eval_split: val`` evaluates on the validation split instead of the test split (for
    choosing learning rates without touching the test set).
    """

    tasks: int = Field(5, ge=2)
    """Tasks the classes are split into, equally many classes each."""
    setting: Literal["class-incremental", "task-incremental"] = "class-incremental"
    """class-incremental predicts among all classes seen; task-incremental is told the task."""
    epochs: int = Field(5, ge=1)
    """Epochs over each task's training set (1: the online, single-pass setting)."""
    batch_size: int = Field(10, ge=1)
    """Training batch size, in examples."""
    features: Literal["backbone", "pixels"] = "backbone"
    """Inputs: the model's CLS features (backbone) or standardized raw pixels (pixels)."""
    train_backbone: bool = False
    """Train the backbone with the head instead of freezing it (needs features: backbone)."""
    eval_split: Literal["test", "val"] = "test"
    """Split evaluated on; val chooses learning rates without touching the test set."""


class SplitDigitsParams(ContinualTaskParams):
    """Split sizes of scikit-learn's 1,797 digits (the defaults use all of them)."""

    train: int = Field(957, ge=1)
    """Training images."""
    val: int = Field(300, ge=0)
    """Validation images."""
    test: int = Field(540, ge=1)
    """Test images."""


class SplitShapesParams(ContinualTaskParams):
    """Which procedural task of :mod:`harness.data.images` is split, its canvas and sizes."""

    tasks: int = Field(4, ge=2)
    """Tasks the classes are split into, equally many classes each."""
    kind: Literal["orientation", "position", "count"] = "orientation"
    """Procedural task: arrow angle bins (8), disk grid cell (9) or object count (6)."""
    size: int = Field(32, ge=8)
    """Side of the rendered images, in pixels."""
    train: int = Field(800, ge=1)
    """Training images rendered."""
    val: int = Field(200, ge=0)
    """Validation images rendered."""
    test: int = Field(1000, ge=1)
    """Test images rendered."""


class SplitImagesParams(ContinualTaskParams):
    """A local folder of class sub-folders, or ``hf:NAME`` (a Hugging Face image dataset).

    ``split``/``test_split``/``image_column``/``label_column`` apply to ``hf:`` sources
    (:func:`harness.data.images.hf_image_dataset`); ``test: null`` keeps every image left over.
    """

    source: str
    """A local folder with one sub-folder of images per class, or hf:NAME for an HF dataset."""
    size: int = Field(32, ge=8)
    """Side in pixels the images are resized to."""
    grayscale: bool = True
    """Convert images to one grayscale channel; false keeps 3 RGB channels."""
    train: int = Field(800, ge=1)
    """Training images (class-balanced)."""
    val: int = Field(200, ge=0)
    """Validation images."""
    test: int | None = Field(None, ge=1)
    """Test images; null keeps every image left over."""
    split: str = "train"
    """hf: split that train and val are drawn from (and test too, without test_split)."""
    test_split: str | None = None
    """hf: split to test on (VTAB's protocol); null tests on the rest of split."""
    image_column: str = "image"
    """hf: column holding the images."""
    label_column: str = "label"
    """hf: column holding the class labels."""


class SplitDigits:
    """scikit-learn's 8x8 digits, 5 tasks of 2 classes (the standard split-digits stream)."""

    name = "split-digits"
    description = (
        "class-incremental split of scikit-learn's digits (offline): 10 classes in 5 tasks "
        "of 2, seeded class order, 957 train / 300 val / 540 test"
    )
    scenario = "continual"
    params = SplitDigitsParams

    def data(self, params: SplitDigitsParams, seed: int, **inputs: Any) -> ImageSplits:
        import numpy as np
        import torch
        from sklearn.datasets import load_digits

        from harness.data.images import ImageSplits, stratified_split

        digits = load_digits()
        images = torch.from_numpy((digits.images / 16.0).astype(np.float32))[:, None]
        labels = torch.from_numpy(digits.target.astype(np.int64))
        parts = stratified_split(digits.target, params.train, params.val, params.test, seed)
        tensors = []
        for index in parts:
            chosen = torch.from_numpy(index)
            tensors += [images[chosen], labels[chosen]]
        return ImageSplits(*tensors, classes=tuple(str(d) for d in range(10)))


class SplitShapes:
    """A procedural shapes task (orientation, position or count) split into tasks by class."""

    name = "split-shapes"
    description = (
        "class-incremental split of a procedural shapes task (offline; orientation: 8 angle "
        "bins in 4 tasks by default, or position / count)"
    )
    scenario = "continual"
    params = SplitShapesParams

    def data(self, params: SplitShapesParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data import images

        build = {
            "orientation": images.shapes_orientation,
            "position": images.shapes_position,
            "count": images.shapes_count,
        }[params.kind]
        return build(seed, params.size, train=params.train, val=params.val, test=params.test)


class SplitImages:
    """Any local image folder or Hugging Face image dataset, split into tasks by class."""

    name = "split-images"
    description = (
        "class-incremental split of a local image folder (one sub-folder per class) or an "
        "HF image dataset (source: hf:NAME)"
    )
    scenario = "continual"
    params = SplitImagesParams

    def data(self, params: SplitImagesParams, seed: int, **inputs: Any) -> ImageSplits:
        from harness.data.images import hf_image_dataset, image_folder

        sizes = {"train": params.train, "val": params.val, "test": params.test, "seed": seed}
        common = {"size": params.size, "grayscale": params.grayscale, **sizes}
        if params.source.startswith("hf:"):
            return hf_image_dataset(
                params.source[3:],
                params.split,
                image_column=params.image_column,
                label_column=params.label_column,
                test_split=params.test_split,
                **common,
            )
        return image_folder(params.source, **common)


# -- metrics --------------------------------------------------------------------------------


def average_forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over all but the last task of (best earlier accuracy − final accuracy).

    ``matrix[i][j]`` is the accuracy on task ``j`` after training task ``i`` (``j <= i``).
    """
    last = len(matrix) - 1
    drops = [max(matrix[i][j] for i in range(j, last)) - matrix[last][j] for j in range(last)]
    return sum(drops) / last


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over all but the last task of (final accuracy − accuracy right after learning it)."""
    last = len(matrix) - 1
    return sum(matrix[last][j] - matrix[j][j] for j in range(last)) / last


def incremental_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Mean over tasks ``i`` of the average accuracy on tasks ``0..i`` after task ``i``."""
    return sum(sum(row[: i + 1]) / (i + 1) for i, row in enumerate(matrix)) / len(matrix)


# -- the scenario ---------------------------------------------------------------------------


def _prepare_inputs(
    ctx: RunContext, params: ContinualTaskParams, splits: ImageSplits
) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module | None]:
    """Training and evaluation inputs as the learner sees them, and the trainable backbone
    (``None`` when features are frozen)."""
    from harness.data.streams import ClsBackbone, Standardizer, cls_features, vit_inputs

    eval_x = splits.test_x if params.eval_split == "test" else splits.val_x
    if params.features == "pixels":
        train, evaluation = (x.flatten(1).float() for x in (splits.train_x, eval_x))
        scale = Standardizer.fit(train)
        return scale(train), scale(evaluation), None
    vit = ctx.load_model("base")
    size = vit.config.image_size
    train = vit_inputs(splits.train_x, size).to(ctx.device)
    evaluation = vit_inputs(eval_x, size).to(ctx.device)
    train_features = cls_features(vit, train)
    scale = Standardizer.fit(train_features)
    if params.train_backbone:
        return train, evaluation, ClsBackbone(vit, scale)
    vit.requires_grad_(False)
    ctx.count_parameters(vit, "backbone")  # frozen: outside the model that trains
    return scale(train_features), scale(cls_features(vit, evaluation)), None


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    import torch

    return list(torch.randperm(n, generator=generator).split(batch_size))


class ContinualScenario:
    """Train a method's learner on a stream of tasks; accuracy matrix, forgetting, costs."""

    name = "continual"
    description = (
        "class- (or task-) incremental learning over a stream of tasks with a fixed memory: "
        "final and incremental accuracy, forgetting, backward transfer, recency bias, the "
        "accuracy matrix, buffer bytes, train time and peak memory"
    )
    method_protocol = ("make_learner",)
    #: The method contract (``harness show scenario continual``): the protocol module's
    #: docstring.
    contract = continual_protocol.__doc__
    model_kinds = ("base",)
    columns = ResultColumns(
        quality=(QualityColumn("accuracy", higher_is_better=True),),
        # Continual learners are compared at the replay memory they keep.
        costs=(CostColumn("buffer", "memory buffer", "buffer_bytes", "bytes"),),
        plots=(CostPlot("buffer", "Quality vs memory buffer", "bytes of the learner's memory",
                        "buffer bytes"),),
        trains=True,
    )

    def run(self, ctx: RunContext) -> None:
        import torch

        from harness.data.streams import split_by_class
        from harness.scenarios.continual_protocol import StreamInfo, continual_model_class

        params = ctx.task.params(**ctx.spec.task_params)
        if params.train_backbone and params.features != "backbone":
            raise ValueError("train_backbone: true needs features: backbone")
        seed = ctx.spec.seed
        torch.manual_seed(seed)
        splits = ctx.task.data(params, seed)
        if params.eval_split == "val" and len(splits.val_y) == 0:
            raise ValueError("eval_split: val needs a validation split (val > 0)")

        with ctx.phase("features"):
            train_x, eval_x, backbone = _prepare_inputs(ctx, params, splits)
        eval_y = splits.test_y if params.eval_split == "test" else splits.val_y
        stream = split_by_class(
            train_x.to(ctx.device), splits.train_y.to(ctx.device),
            eval_x.to(ctx.device), eval_y.to(ctx.device),
            splits.num_classes, params.tasks, seed,
        )  # fmt: skip
        info = StreamInfo(
            num_tasks=params.tasks,
            classes_per_task=splits.num_classes // params.tasks,
            input_shape=tuple(train_x.shape[1:]),
            epochs=params.epochs,
            batch_size=params.batch_size,
            train_sizes=tuple(len(task.train_y) for task in stream),
        )
        dim = train_x.shape[1] if backbone is None else backbone.mean.numel()
        model = continual_model_class()(backbone, dim, info.num_classes).to(ctx.device)
        ctx.count_parameters(model)
        learner = ctx.method.make_learner(model, info, ctx.method.params(**ctx.spec.params), ctx)

        snapshots = self._train(ctx, learner, model, stream, params, seed)
        ctx.recorder.record("train", "buffer_bytes", learner.buffer_bytes(), "bytes")
        ctx.recorder.record(
            "train", "batches",
            params.epochs * sum(-(-n // params.batch_size) for n in info.train_sizes), "count",
        )  # fmt: skip
        with ctx.phase("eval"):
            matrices = self._evaluate(model, snapshots, stream, info, params.setting)
        self._record(ctx, stream, *matrices)

    @staticmethod
    def _train(
        ctx: RunContext,
        learner: Learner,
        model: torch.nn.Module,
        stream: list[TaskData],
        params: ContinualTaskParams,
        seed: int,
    ) -> list[dict[str, torch.Tensor]]:
        """Run the stream through the learner; the model's state after each task."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        snapshots = []
        model.train()
        with ctx.phase("train"):
            for t, task in enumerate(stream):
                learner.begin_task(t)
                for epoch in range(params.epochs):
                    for batch in _batches(len(task.train_y), params.batch_size, generator):
                        batch = batch.to(task.train_y.device)
                        learner.observe(task.train_x[batch], task.train_y[batch], epoch == 0)
                learner.end_task(t)
                snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return snapshots

    @staticmethod
    def _evaluate(
        model: torch.nn.Module,
        snapshots: list[dict[str, torch.Tensor]],
        stream: list[TaskData],
        info: StreamInfo,
        setting: str,
    ) -> tuple[list[list[float]], list[list[float]], float, float]:
        """The accuracy matrix (of the setting), the within-task matrix, and the final
        recency share and its ideal (in %)."""
        import torch

        k = info.classes_per_task
        matrix: list[list[float]] = []
        within: list[list[float]] = []
        model.eval()
        with torch.inference_mode():
            for i, state in enumerate(snapshots):
                model.load_state_dict(state)
                seen = info.seen_classes(i)
                row, row_within, last_share = [], [], 0
                for j, task in enumerate(stream[: i + 1]):
                    logits = torch.cat([model(x) for x in task.eval_x.split(1024)])
                    own = logits[:, j * k : (j + 1) * k].argmax(1) + j * k
                    predicted = logits[:, :seen].argmax(1)
                    row_within.append(100.0 * float((own == task.eval_y).float().mean()))
                    if setting == "task-incremental":
                        row.append(row_within[-1])
                    else:
                        row.append(100.0 * float((predicted == task.eval_y).float().mean()))
                    last_share += int((predicted >= seen - k).sum())
                matrix.append(row)
                within.append(row_within)
        total = sum(len(task.eval_y) for task in stream)
        recency = 100.0 * last_share / total
        ideal = 100.0 * len(stream[-1].eval_y) / total
        return matrix, within, recency, ideal

    @staticmethod
    def _record(
        ctx: RunContext,
        stream: list[TaskData],
        matrix: list[list[float]],
        within: list[list[float]],
        recency: float,
        ideal: float,
    ) -> None:
        record = ctx.recorder.record
        final = sum(matrix[-1]) / len(matrix[-1])
        record("eval", "accuracy", final, "%", higher_is_better=True)
        record(
            "eval", "avg_incremental_accuracy", incremental_accuracy(matrix), "%",
            higher_is_better=True,
        )  # fmt: skip
        record("eval", "forgetting", average_forgetting(matrix), "%", higher_is_better=False)
        record("eval", "backward_transfer", backward_transfer(matrix), "%", higher_is_better=True)
        record(
            "eval", "within_task_forgetting", average_forgetting(within), "%",
            higher_is_better=False,
        )  # fmt: skip
        record("eval", "recency_bias", recency, "%", higher_is_better=False)
        record("eval", "recency_bias", ideal, "%", stat="ideal")
        for name, values in (("accuracy_matrix", matrix), ("within_task_accuracy_matrix", within)):
            for i, row in enumerate(values):
                for j, value in enumerate(row):
                    record("eval", name, value, "%", stat=f"after_{i}_task_{j}")
        record("eval", "examples", sum(len(task.eval_y) for task in stream), "count")
