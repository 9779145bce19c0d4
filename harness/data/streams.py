"""Task streams for continual learning: a labelled dataset split into tasks by class.

A class-incremental stream presents a dataset's classes a few at a time. :func:`split_by_class`
draws the class order from the run's seed and relabels the classes in stream order, so task
``t`` of a stream with ``k`` classes per task owns the labels ``t*k .. t*k+k-1`` and a head can
tell old classes from new by index alone. :func:`standardize` and :func:`cls_features` turn
images into the features a learner sees (standardized pixels, or a frozen ViT's CLS token),
with statistics from the training inputs only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ClsBackbone",
    "Standardizer",
    "TaskData",
    "class_order",
    "cls_features",
    "split_by_class",
    "standardize",
    "vit_inputs",
]


@dataclass(frozen=True)
class TaskData:
    """One task of a stream: its training and evaluation examples, labels in stream order."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    eval_x: torch.Tensor
    eval_y: torch.Tensor
    #: Original class indices of the task's stream labels, in order.
    classes: tuple[int, ...]


def class_order(num_classes: int, seed: int) -> np.ndarray:
    """The seeded order in which a stream presents ``num_classes`` classes."""
    return np.random.default_rng([seed, 0xC1]).permutation(num_classes)


def split_by_class(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    eval_x: torch.Tensor,
    eval_y: torch.Tensor,
    num_classes: int,
    tasks: int,
    seed: int,
) -> list[TaskData]:
    """Split a dataset into ``tasks`` tasks of equally many classes, in a seeded class order.

    Labels are relabelled to stream order (class ``order[i]`` becomes label ``i``). Every
    class must have training and evaluation examples, so no task is silently empty.
    """
    if tasks < 1 or num_classes % tasks:
        raise ValueError(
            f"{num_classes} classes cannot be split into {tasks} tasks of equally many classes; "
            f"choose tasks among {[d for d in range(2, num_classes + 1) if num_classes % d == 0]}"
        )
    for name, labels in (("training", train_y), ("evaluation", eval_y)):
        missing = sorted(set(range(num_classes)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no {name} examples; enlarge that split")
    order = class_order(num_classes, seed)
    relabel = torch.empty(num_classes, dtype=torch.long)
    relabel[torch.from_numpy(order)] = torch.arange(num_classes)
    train_s, eval_s = relabel[train_y], relabel[eval_y]
    per_task = num_classes // tasks
    stream = []
    for t in range(tasks):
        low, high = t * per_task, (t + 1) * per_task
        in_train = (train_s >= low) & (train_s < high)
        in_eval = (eval_s >= low) & (eval_s < high)
        stream.append(
            TaskData(
                train_x[in_train],
                train_s[in_train],
                eval_x[in_eval],
                eval_s[in_eval],
                tuple(int(c) for c in order[low:high]),
            )
        )
    return stream


@dataclass(frozen=True)
class Standardizer:
    """Per-dimension standardization, then division by ``sqrt(d)`` so rows have norm about 1
    (one learning-rate grid then fits features of any width)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, x: torch.Tensor) -> Standardizer:
        """Statistics of ``x`` ``[n, d]``; a constant dimension (a blank corner) maps to 0."""
        return cls(x.mean(0), x.std(0).clamp(min=1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std / math.sqrt(x.shape[-1])


def standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """``train`` and ``others`` flattened to ``[n, d]`` and standardized with ``train``'s
    statistics."""
    flat = [t.flatten(1).float() for t in (train, *others)]
    scale = Standardizer.fit(flat[0])
    return [scale(t) for t in flat]


def vit_inputs(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """``pixel_values`` of ``[n, C, H, W]`` images in [0, 1] for a ViT that takes 3 channels
    in [-1, 1] at ``image_size`` (``builtin:tiny-vit``'s convention): resized bilinearly,
    grayscale replicated."""
    x = images.float()
    if x.shape[-2:] != (image_size, image_size):
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 2 - 1).contiguous()


def _cls(vit: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The CLS token after the final layer norm (``builtin:tiny-vit`` has no pooler)."""
    return vit(pixel_values=pixel_values).last_hidden_state[:, 0]


def cls_features(vit: Any, pixel_values: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Frozen CLS features ``[n, hidden]`` of ``pixel_values``, computed in batches."""
    with torch.inference_mode():
        parts = [_cls(vit, batch).float() for batch in pixel_values.split(batch_size)]
    return torch.cat(parts).clone()


class ClsBackbone(torch.nn.Module):
    """A trainable ViT as a feature extractor: CLS token, then a fixed standardization
    (the frozen backbone's training statistics, so training starts where frozen features are)."""

    def __init__(self, vit: torch.nn.Module, scale: Standardizer) -> None:
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", scale.mean.clone())
        self.register_buffer("std", scale.std.clone())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = _cls(self.vit, pixel_values).float()
        return Standardizer(self.mean, self.std)(h)
