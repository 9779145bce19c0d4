"""The continual methods: registration objects and params (torch is imported per run).

Defaults of ``lr`` are the learning rates chosen on validation seeds for standardized digit
pixels, 5 epochs per task (suites/continual-digits-lr.yaml); other features and schedules
need their own selection.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from harness.api import Params, RunContext
from harness.scenarios.continual_protocol import ContinualModel, Learner, StreamInfo

__all__ = ["DERPP", "ER", "ERACE", "Finetune", "Joint", "TaER"]


class LRParams(Params):
    """Plain SGD's learning rate (features have norm about 1, so useful values are 0.1-30)."""

    lr: float = Field(10.0, gt=0)
    """Plain SGD learning rate."""


class FinetuneParams(LRParams):
    """Validation picked the top of the grid (an unstable regime a little above the floor)."""

    lr: float = Field(30.0, gt=0)
    """Plain SGD learning rate."""


class JointParams(LRParams):
    """Joint training's validation-selected learning rate."""

    lr: float = Field(1.0, gt=0)
    """Plain SGD learning rate."""


class ReplayParams(LRParams):
    """``buffer``: the memory budget in examples; ``replay_batch_size``: examples replayed
    per step (drawn without replacement from the eligible buffer examples)."""

    buffer: int = Field(20, ge=1)
    """Memory budget: examples the reservoir buffer holds."""
    replay_batch_size: int = Field(10, ge=1)
    """Buffer examples replayed per step (without replacement, from the eligible ones)."""


class DERPPParams(ReplayParams):
    """``alpha`` weighs the logit-matching MSE, ``beta`` the replayed labels' cross-entropy."""

    lr: float = Field(3.0, gt=0)
    """Plain SGD learning rate."""
    alpha: float = Field(0.3, ge=0)
    """Weight of the MSE between current and stored logits of a replay batch."""
    beta: float = Field(0.5, ge=0)
    """Weight of the cross-entropy on a second replay batch's labels."""


class TaERParams(ReplayParams):
    """``detach``: ``both`` (old tasks' head rows detached in the current and the replay
    loss) or ``current`` (detached in the current loss only); ``weight``: the replay loss is
    multiplied by the number of old tasks (``old_tasks``) or by 1 (``one``); ``sampling``:
    ``uniform`` over old-task buffer examples or ``class_balanced``."""

    lr: float = Field(1.0, gt=0)
    """Plain SGD learning rate."""
    detach: Literal["both", "current"] = "both"
    """Detach old tasks' head rows in the current and replay losses (both) or current only."""
    weight: Literal["old_tasks", "one"] = "old_tasks"
    """Replay loss multiplier: the number of old tasks (old_tasks) or 1 (one)."""
    sampling: Literal["uniform", "class_balanced"] = "uniform"
    """Replay draw: uniform over old-task buffer examples, or a class first (class_balanced)."""


class _ContinualMethod:
    """Shared registration: every method here runs the ``continual`` scenario."""

    version = "1"
    scenarios = ("continual",)
    learner: str

    def make_learner(
        self, model: ContinualModel, stream: StreamInfo, params: Any, ctx: RunContext
    ) -> Learner:
        from . import learners

        return getattr(learners, self.learner)(model, stream, params, ctx.spec.seed)


class Finetune(_ContinualMethod):
    """Fine-tuning: cross-entropy over the seen classes on the current batch, nothing else.

    The lower bound: every new task overwrites the old ones.
    """

    name = "finetune"
    role = "lower-bound"
    description = "fine-tuning on each task in turn, no memory (lower bound)"
    params = FinetuneParams
    learner = "FinetuneLearner"


class Joint(_ContinualMethod):
    """Joint training: the upper bound that ignores the memory budget.

    It keeps every example shown so far (``buffer_bytes`` reports all of it) and trains on
    batches of the stream's batch size drawn uniformly from all of them: in task ``t`` it
    makes as many steps as ``epochs`` epochs over every example of tasks ``0..t`` take (spread
    evenly over the task's batches, so what it has not been shown yet is never used). The same
    number of epochs as the other methods, over all data seen so far.
    """

    name = "joint"
    role = "upper-bound"
    description = "joint training on every example seen so far, same epochs (upper bound)"
    params = JointParams
    learner = "JointLearner"


class ER(_ContinualMethod):
    """Experience replay with a reservoir buffer.

    Loss: cross-entropy of the current batch plus cross-entropy of ``replay_batch_size``
    examples drawn from the whole buffer (current task included), both over the seen classes
    with full gradients, weight 1. The buffer is offered each example once, on its first pass
    (a reservoir over the stream, not over epochs), after the step it was trained on.
    """

    name = "er"
    description = "experience replay from a reservoir buffer of `buffer` examples"
    params = ReplayParams
    learner = "ERLearner"


class ERACE(_ContinualMethod):
    """ER-ACE (Caccia et al., 2022): ER with an asymmetric cross-entropy.

    The current batch's softmax runs over the current task's classes only, so new classes
    never push old logits down; the replayed batch uses the seen classes, as in ER. (The
    official loss masks to the classes present in the batch; with one task's classes per
    batch this is the same up to classes missing from a small batch.)
    """

    name = "er-ace"
    description = "ER with asymmetric cross-entropy: current batch over current-task classes"
    params = ReplayParams
    learner = "ERACELearner"


class DERPP(_ContinualMethod):
    """DER++ (Buzzega et al., 2020): the buffer also keeps each example's logits.

    Loss: cross-entropy of the current batch over the seen classes; plus ``alpha`` times the
    mean squared error between the model's logits over every class and the logits stored when
    a first replay batch was inserted; plus ``beta`` times the cross-entropy of a second,
    independently drawn replay batch. Stored logits are the pre-step logits over every class
    (float32), counted in ``buffer_bytes``.
    """

    name = "der++"
    description = "dark experience replay++: replayed logits (MSE, alpha) and labels (CE, beta)"
    params = DERPPParams
    learner = "DERPPLearner"


class TaER(_ContinualMethod):
    """TaER, task-aware experience replay (Li, Jie and Deng, arXiv 2302.11730), reconstructed.

    No code and only the abstract are public: TaER "rebalances the replay loss and detaches
    classifier weight for the old tasks from the update process". The default reading
    (shared/research/exp-continual.md, "TaER-frz") in task ``t`` (0-indexed):

    * logits over the seen classes in which the head rows (weights and biases) of the old
      tasks' classes enter detached, in BOTH the current-batch and the replay loss, so only the
      current task's rows move: old tasks' within-task decision boundaries stay exactly as
      they were when their task ended (within-task forgetting 0);
    * replay draws only old-task examples from the reservoir buffer; its loss teaches the new
      rows to stay below the old logits on old data (telling tasks apart);
    * the replay loss is weighted by ``t``, the number of old tasks, so each old task weighs as
      much as the current one (with equal tasks this equals |old classes| / |new classes|).

    ``detach: current`` detaches only in the current loss (replay refits old rows on the
    memory); ``weight: one`` drops the reweighting; ``sampling: class_balanced`` draws a class
    uniformly, then an example. Measured on digits, detaching alone or reweighting alone does
    not beat ER; together they do.
    """

    name = "taer"
    description = (
        "task-aware ER: old tasks' classifier rows detached, old-task replay weighted by "
        "the number of old tasks"
    )
    params = TaERParams
    learner = "TaERLearner"
