"""Continual-learning methods: a classifier over features learnt task after task, for ``continual``.

Each method gives the ``continual`` scenario a learner (``make_learner``; see
:mod:`harness.scenarios.continual_protocol`) that trains the scenario's model (features,
then a zero-initialised linear head) one batch at a time with plain SGD, and reports the
bytes of the memory it keeps (``buffer_bytes``), so accuracy and forgetting are compared at
equal budgets:

* ``finetune`` — no memory (lower bound);
* ``joint`` — every example seen so far, same number of steps (upper bound);
* ``er`` — experience replay from a reservoir buffer;
* ``er-ace`` — ER with an asymmetric current-batch cross-entropy;
* ``der++`` — replay of stored logits (MSE) and labels;
* ``taer`` — task-aware ER: old tasks' classifier rows detached, reweighted old-task replay.

Choices shared by all: plain SGD (no momentum, no weight decay, so a head row with a zero
gradient stays bit-identical); softmax over the classes seen so far; one replay batch of
``replay_batch_size`` per step, drawn without replacement; the reservoir is offered each
example once, on its first pass. :mod:`.methods` documents each method's loss; :mod:`.buffer`
the reservoir. Registering imports neither torch nor transformers.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .methods import DERPP, ER, ERACE, Finetune, Joint, TaER

__all__ = ["DERPP", "ER", "ERACE", "Finetune", "Joint", "TaER", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [Finetune(), Joint(), ER(), ERACE(), DERPP(), TaER()]
