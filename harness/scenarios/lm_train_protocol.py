"""The method side of the ``lm_train`` scenario: build a causal LM to pretrain, and the form
it is measured in at inference.

The scenario trains a model from scratch on a token budget and then measures it, so methods
that change an LM's architecture (routed experts, lookup experts) are compared with a dense
model at equal training tokens, on held-out loss and on inference cost. The suite's model is
a transformers config (``hf-config:PATH`` with ``overrides``): the shape every method builds
on (layers, hidden size, heads, FFN width, vocabulary size, which the scenario sets to the
task's tokenizer).

A method provides

* ``build(config, params, ctx) -> torch.nn.Module`` — the training form, on ``ctx.device``,
  in train mode, randomly initialised from the current torch seed (the scenario seeds it).
  Called as ``model(input_ids=ids)`` it returns an object with ``.logits`` ``[B, T, V]``
  and, optionally, ``.aux_loss`` (a scalar tensor added to the LM loss as is, or None);
* optionally ``inference(model, params, ctx) -> torch.nn.Module`` — the form measured at
  inference, derived from the trained model (MoLE's re-parameterised lookup table, a MoE
  with its experts offloaded to host memory). Without it the trained model itself is
  measured. Either way the inference model is called as transformers causal LMs are:
  ``model(input_ids=ids, past_key_values=cache, use_cache=True)`` returning ``.logits``
  and ``.past_key_values``, and it may provide the :class:`InferenceCosts` methods;
* optionally ``active_params(model, params) -> int`` — parameters that compute for one token
  (a top-k MoE activates k of its experts); without it every parameter is active;
* optionally ``trained_as(params) -> {"name", "version", "params"}`` — what the trained
  weights depend on, for the cache of trained models: runs with equal values share one
  trained model (params that only change the inference form left out; a method that
  measures another method's trained model in another form names that method). Without it
  the method's own name, version and params.

When: ``build`` is called once per run, outside any phase, after the scenario seeded torch
with the run's seed, on the suite's config (its vocabulary set to the task's tokenizer); the
model is then trained in the ``train`` phase, or, when the cache holds a model an equal
recipe trained, that model's state dict is loaded into it and nothing trains (so ``build``
must give the same parameters, by name and shape, every time, and nothing may depend on
having trained in this process). ``trained_as`` is called to make the recipe;
``active_params`` once the model is trained; ``inference`` in the ``derive_inference`` phase,
on the trained model in eval mode. The ``lm_eval`` scenario pretrains such a method's model
the same way.

``params`` is a plain ``dict``, the same for every call: the run's method params from the
suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
Every method's schema derives from :class:`LMTrainParams`: the scenario reads its ``lr``.

``ctx`` (:class:`harness.api.RunContext`, passed to ``build`` and ``inference``): a method may
use ``ctx.device`` (where ``build`` puts the model), ``ctx.spec`` (``seed``, ``model``),
``ctx.cache_dir`` and ``ctx.recorder.record(phase, metric, value, unit)`` for figures of its
own (fixed figures of the inference form are better returned by its ``figures()``); it
raises :class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity, the
task and its data (``ctx.task``), the training loop, optimizer and schedule, the trained
model cache, and the figures it records.

What the scenario records from these: held-out loss, bits per token and perplexity; training
tokens/s and ms/step; total, active-per-token and trainable parameters; bytes resident on
the accelerator and in host memory at inference; host→device bytes per generated token
(the method's counter, not an estimate); prefill and decode latency at several batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import Field

from harness.api import Params

if TYPE_CHECKING:
    import torch

__all__ = ["InferenceCosts", "LMOutput", "LMTrainParams", "parameter_bytes"]


class LMTrainParams(Params):
    """What every ``lm_train`` method's params have: the peak learning rate (AdamW, linear
    warmup then cosine decay over the task's step budget)."""

    lr: float = Field(3e-3, gt=0)
    """Peak AdamW learning rate (linear warm-up, then cosine decay over the step budget)."""


@dataclass
class LMOutput:
    """What a training-form model returns when it is not a transformers model already."""

    logits: torch.Tensor
    aux_loss: torch.Tensor | None = None
    past_key_values: Any = None


@runtime_checkable
class InferenceCosts(Protocol):
    """What an inference model may report; the scenario reads each that it has.

    * ``device_bytes()`` — bytes the model keeps on the accelerator (weights, tables);
    * ``host_bytes()`` — bytes it keeps in host memory for inference (an offloaded lookup
      table, offloaded experts);
    * ``counters()`` — additive counters since the last ``reset_counters()``, as
      ``{name: (value, unit)}``; ``h2d_bytes`` (bytes copied host→device) is the one the
      scenario turns into bytes per generated token;
    * ``reset_counters()``;
    * ``figures()`` — fixed figures of the inference form as ``{name: (value, unit)}``
      (a quantized table's error against what it replaces), recorded once.
    """

    def device_bytes(self) -> int: ...

    def host_bytes(self) -> int: ...

    def counters(self) -> dict[str, tuple[float, str]]: ...

    def reset_counters(self) -> None: ...

    def figures(self) -> dict[str, tuple[float, str]]: ...


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module`` at its dtype (shared ones once)."""
    seen: set[int] = set()
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * tensor.element_size()
    return total
