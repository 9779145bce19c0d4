"""The learners behind the continual methods (imported when a run makes one; needs torch).

Every learner trains the scenario's model with plain SGD (no momentum, no weight decay) on
cross-entropy over the classes seen so far: a class that has not arrived yet has no logit,
so it is neither pushed down nor predicted. The exact losses are in the method docstrings of
:mod:`.methods`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.scenarios.continual_protocol import ContinualModel, StreamInfo

from .buffer import ReservoirBuffer

__all__ = [
    "DERPPLearner",
    "ERACELearner",
    "ERLearner",
    "FinetuneLearner",
    "JointLearner",
    "TaERLearner",
]


class FinetuneLearner:
    """Cross-entropy on the current batch only: the lower bound."""

    def __init__(self, model: ContinualModel, stream: StreamInfo, params: Any, seed: int) -> None:
        self.model = model
        self.stream = stream
        self.params = params
        self.generator = torch.Generator().manual_seed(seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=params.lr)
        self.task = 0

    @property
    def old(self) -> int:
        """Classes of the tasks before the current one."""
        return self.task * self.stream.classes_per_task

    @property
    def seen(self) -> int:
        """Classes up to and including the current task's."""
        return self.stream.seen_classes(self.task)

    def begin_task(self, task: int) -> None:
        self.task = task

    def end_task(self, task: int) -> None:
        """Nothing to consolidate: these learners keep only their replay memory."""

    def buffer_bytes(self) -> int:
        return 0

    def ce(self, x: torch.Tensor, y: torch.Tensor, frozen: int = 0) -> torch.Tensor:
        """Cross-entropy over the seen classes, the first ``frozen`` head rows detached."""
        return F.cross_entropy(self.model.logits(self.model.features(x), self.seen, frozen), y)

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
        self.step(self.ce(x, y))


class JointLearner(FinetuneLearner):
    """Keeps every example it is shown and trains on i.i.d. batches drawn from all of them,
    as many as ``epochs`` epochs over everything seen so far take."""

    def __init__(self, model: ContinualModel, stream: StreamInfo, params: Any, seed: int) -> None:
        super().__init__(model, stream, params, seed)
        self.xs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self.steps_owed = 0.0

    def buffer_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.xs, *self.ys))

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
        if first_pass:
            self.xs.append(x.detach().clone())
            self.ys.append(y.clone())
        all_x, all_y = torch.cat(self.xs), torch.cat(self.ys)
        # Each call covers len(y) of the task's examples; the union is this many times larger.
        sizes = self.stream.train_sizes
        self.steps_owed += sum(sizes[: self.task + 1]) / sizes[self.task]
        while self.steps_owed >= 1 - 1e-9:
            self.steps_owed -= 1
            pick = torch.randperm(len(all_y), generator=self.generator)[: len(y)]
            pick = pick.to(all_y.device)
            self.step(self.ce(all_x[pick], all_y[pick]))


class ERLearner(FinetuneLearner):
    """Experience replay: current batch plus a batch from the whole reservoir buffer."""

    keeps_logits = False

    def __init__(self, model: ContinualModel, stream: StreamInfo, params: Any, seed: int) -> None:
        super().__init__(model, stream, params, seed)
        if params.buffer > sum(stream.train_sizes):
            raise ValueError(
                f"buffer {params.buffer} holds more examples than the stream has "
                f"({sum(stream.train_sizes)}), so it is no budget; joint is the no-limit bound"
            )
        self.buffer = ReservoirBuffer(params.buffer, self.keeps_logits, self.generator)

    def buffer_bytes(self) -> int:
        return self.buffer.nbytes()

    def current_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.ce(x, y)

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
        loss = self.current_loss(x, y)
        slots = self.buffer.sample(self.params.replay_batch_size)
        if len(slots):
            loss = loss + self.ce(self.buffer.x[slots], self.buffer.y[slots])
        self.step(loss)
        if first_pass:
            self.buffer.add(x, y)


class ERACELearner(ERLearner):
    """ER with the asymmetric current loss: softmax over the current task's classes only."""

    def current_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = self.model.logits(self.model.features(x), self.seen)
        return F.cross_entropy(logits[:, self.old :], y - self.old)


class DERPPLearner(ERLearner):
    """DER++: replayed logits matched by MSE (alpha) plus replayed labels (beta)."""

    keeps_logits = True

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
        every_logit = self.model(x)
        loss = F.cross_entropy(every_logit[:, : self.seen], y)
        first = self.buffer.sample(self.params.replay_batch_size)
        if len(first):
            replayed = self.model(self.buffer.x[first])
            loss = loss + self.params.alpha * F.mse_loss(replayed, self.buffer.logits[first])
            second = self.buffer.sample(self.params.replay_batch_size)
            loss = loss + self.params.beta * self.ce(self.buffer.x[second], self.buffer.y[second])
        self.step(loss)
        if first_pass:
            self.buffer.add(x, y, every_logit.detach())


class TaERLearner(ERLearner):
    """Task-aware ER: old tasks' head rows detached, replay of old tasks reweighted."""

    def observe(self, x: torch.Tensor, y: torch.Tensor, first_pass: bool) -> None:
        p = self.params
        loss = self.ce(x, y, frozen=self.old)
        if self.task > 0:
            slots = self.buffer.sample(
                p.replay_batch_size, below=self.old, balanced=p.sampling == "class_balanced"
            )
            if len(slots):
                weight = self.task if p.weight == "old_tasks" else 1
                frozen = self.old if p.detach == "both" else 0
                replay = self.ce(self.buffer.x[slots], self.buffer.y[slots], frozen=frozen)
                loss = loss + weight * replay
        self.step(loss)
        if first_pass:
            self.buffer.add(x, y)
