"""The method side of the ``continual`` scenario: a learner that sees a stream one batch at a time.

The scenario owns the data, the stream and the measurement: it splits a task's classes into
``T`` tasks (task ``t`` owns the *stream labels* ``t*k .. t*k+k-1``, ``k`` classes per task,
in a class order drawn from the run's seed), computes frozen features once, builds the model
(:class:`ContinualModel`: optional trainable backbone, then a zero-initialised linear head
over all classes), shuffles each task's training set every epoch, evaluates every seen task
after each task, and records the metrics. A continual method provides

* ``make_learner(model, stream, params, ctx) -> Learner`` — a fresh learner for one run over
  ``model`` (a :class:`ContinualModel`) and ``stream`` (a :class:`StreamInfo`).

A :class:`Learner` is driven like this, with nothing else in between::

    for task in range(stream.num_tasks):
        learner.begin_task(task)
        for epoch in range(stream.epochs):
            for x, y in batches of task's training set:   # reshuffled each epoch
                learner.observe(x, y, first_pass=(epoch == 0))
        learner.end_task(task)

``x`` is what the model takes (features ``[n, d]`` when they are frozen, images when the
backbone trains), ``y`` int64 stream labels of the current task. ``observe`` makes one
training step: it owns its optimizer, its loss and its memory. ``first_pass`` is true the
first time each example is seen, so a memory filled only then is a memory over the stream,
not over repeated epochs. ``buffer_bytes()`` says how many bytes the learner keeps besides
the model (a replay buffer's stored tensors: inputs, labels, logits), to be compared at equal
budgets.

``make_learner`` is called once per run, outside any phase, once the model is built on
``ctx.device`` (torch was seeded with the run's seed when the run began); ``begin_task``,
``observe`` and ``end_task`` run inside the ``train`` phase (its time and peak memory are the
training's), and ``buffer_bytes()`` is read once, after the stream. ``x`` and ``y`` arrive
on ``ctx.device``.

``params`` is not a dict here: it is the method's ``params`` schema object,
``ctx.method.params(**ctx.spec.params)`` — the run's method params from the suite,
validated, defaults filled in, read as attributes (``params.lr``). There is no common base
schema: the learning rate, if any, is the method's own field.

``ctx`` (:class:`harness.api.RunContext`): a method may use ``ctx.device``, ``ctx.spec.seed``
(for a learner's own generator: sampling a memory), ``ctx.cache_dir`` and
``ctx.recorder.record(phase, metric, value, unit)`` for figures of its own; it raises
:class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity, the
task and its data (``ctx.task``: a learner sees only what ``observe`` gives it), the
evaluation, and the figures it records.

Evaluation uses :meth:`ContinualModel.forward` (logits over every class) on snapshots of the
model taken after each task; the scenario masks them to the seen classes (class-incremental)
or to one task's classes (task-incremental, and the within-task accuracy).

This module imports torch only inside :func:`continual_model_class`, so registering the
scenario and its methods stays torch-free.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.api import RunContext

if TYPE_CHECKING:
    import torch

__all__ = ["ContinualMethod", "ContinualModel", "Learner", "StreamInfo", "continual_model_class"]


@dataclass(frozen=True)
class StreamInfo:
    """What a learner may know about the stream before it starts."""

    num_tasks: int
    classes_per_task: int
    #: Shape of one input as ``observe`` receives it (``(d,)`` for frozen features).
    input_shape: tuple[int, ...]
    epochs: int
    batch_size: int
    #: Training examples of each task.
    train_sizes: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        """Width of the head: every class of every task."""
        return self.num_tasks * self.classes_per_task

    def seen_classes(self, task: int) -> int:
        """Classes seen once ``task`` (0-indexed) has started: the stream labels ``< this``."""
        return (task + 1) * self.classes_per_task

    def task_of(self, labels: torch.Tensor) -> torch.Tensor:
        """The task each stream label belongs to."""
        return labels // self.classes_per_task


@runtime_checkable
class ContinualModel(Protocol):
    """The scenario's model (a ``torch.nn.Module``): features, then a linear head."""

    #: ``torch.nn.Linear(d, num_classes)``, zero-initialised.
    head: Any

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, d]`` features of inputs (the identity when features are frozen)."""
        ...

    def logits(self, h: torch.Tensor, seen: int, frozen: int = 0) -> torch.Tensor:
        """Logits of features ``h`` over the first ``seen`` classes; the head rows of the first
        ``frozen`` classes (weights and biases) enter detached, so no loss moves them."""
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits over every class of the stream."""
        ...


@runtime_checkable
class Learner(Protocol):
    """One method's learner over one stream (see the module docstring for the call order)."""

    def begin_task(self, task: int) -> None: ...

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None: ...

    def end_task(self, task: int) -> None: ...

    def buffer_bytes(self) -> int: ...


class ContinualMethod(Protocol):
    """The attribute a method adds to :class:`harness.api.Method` for ``continual``."""

    def make_learner(
        self, model: ContinualModel, stream: StreamInfo, params: Any, ctx: RunContext
    ) -> Learner: ...


@functools.cache
def continual_model_class() -> type:
    """The ``torch.nn.Module`` class of :class:`ContinualModel` (defined on first use)."""
    import torch

    class FeatureClassifier(torch.nn.Module):
        """An optional backbone (``None``: inputs are features) and a zero-init linear head."""

        def __init__(self, backbone: torch.nn.Module | None, dim: int, num_classes: int) -> None:
            super().__init__()
            self.backbone = backbone
            self.head = torch.nn.Linear(dim, num_classes)
            # Zero init: an untrained class scores exactly 0 and gets no spurious preference.
            torch.nn.init.zeros_(self.head.weight)
            torch.nn.init.zeros_(self.head.bias)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return x if self.backbone is None else self.backbone(x)

        def logits(self, h: torch.Tensor, seen: int, frozen: int = 0) -> torch.Tensor:
            weight, bias = self.head.weight[:seen], self.head.bias[:seen]
            if frozen:
                weight = torch.cat([weight[:frozen].detach(), weight[frozen:]])
                bias = torch.cat([bias[:frozen].detach(), bias[frozen:]])
            return h @ weight.T + bias

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(x))

    return FeatureClassifier
