"""The method side of the ``adapt`` scenario: modules on a frozen backbone, and what a task stores.

The scenario loads a ViT image classifier (transformers' ``ViTForImageClassification`` or a
model with the same layout: ``config.hidden_size`` and a ``classifier`` ``Linear`` on the final
CLS feature), freezes every parameter, and replaces ``classifier`` with a fresh, trainable
``Linear(hidden_size, num_classes)`` initialised from the run's seed. An adaptation method then
provides

* ``attach(model, params, ctx) -> torch.nn.Module`` — add the method's modules and make
  trainable exactly what the method trains (its modules, and the head unless it swaps it); may
  return a wrapper (PEFT's ``PeftModel``). The returned model is called as
  ``model(pixel_values=x).logits``. Its ``requires_grad`` flags are the method's statement of
  what trains: the scenario optimises those parameters and counts them.
* ``task_state(model, params) -> dict[str, torch.Tensor]`` — every tensor needed to rebuild the
  task model from the pretrained backbone, in the form the method stores it (packed bit codes
  for quantized adapters, the trainable weights otherwise: :func:`trainable_state`);
* ``load_task_state(model, state, params) -> None`` — the inverse, on a model fresh from
  ``attach``: after it, that model must predict exactly what the trained one does.

When: ``attach`` is called in the ``attach`` phase on the backbone (on ``ctx.device``), after
the scenario seeded torch with the run's seed and initialised the head; the scenario then
trains, evaluates, takes ``task_state`` of the trained model (saved in the ``store`` phase)
and rebuilds the task model outside any phase: ``attach`` again on a fresh copy of the
backbone (torch seeded with the run's seed + 1), ``task_state`` of that copy as the template,
then ``load_task_state``. So ``attach`` must
build the same structure every time, and a figure recorded in ``attach`` or ``task_state``
is recorded twice.

``params`` is a plain ``dict``, the same for every call: the run's method params from the
suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
Every adapt method's schema derives from :class:`AdaptParams`: the scenario reads its ``lr``.

``ctx`` (:class:`harness.api.RunContext`, passed to ``attach``): a method may use
``ctx.device``, ``ctx.spec`` (``seed``, ``model``), ``ctx.cache_dir`` (what it builds once
and reuses) and ``ctx.recorder.record(phase, metric, value, unit)`` for figures of its own;
it raises :class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity, the
task and its splits (``ctx.task``), the training loop, optimizer and schedule, and the
figures it records (trainable parameters are counted from ``requires_grad``).

Storage: the scenario writes ``task_state`` with :func:`save_task_state` — all tensors' bytes
in one safetensors tensor, in the order the method gives them — and records the file's size.
Names, shapes and dtypes are not stored: they follow from the backbone, the method and its
params, as an architecture follows from code, and :func:`load_task_state` takes them from the
``task_state`` of a freshly attached model. So the figure is the method's payload plus a
header of about a hundred bytes, the same for every method.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import Field

from harness.api import Params

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdaptParams",
    "load_task_state",
    "load_trainable_state",
    "save_task_state",
    "trainable_state",
]


class AdaptParams(Params):
    """What every adapt method's params have: the peak learning rate of the suite's recipe.

    Methods differ in the rate they need (PEFT modules 10-30x full fine-tuning's), so each
    method's default is the rate chosen on validation for the built-in tasks, and a suite
    may set its own.
    """

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate of the task's AdamW recipe (warm-up, then cosine decay)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train, by name: what most methods store per task."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy :func:`trainable_state` tensors back into ``model`` by name."""
    import torch

    params = dict(model.named_parameters())
    missing = set(state) - params.keys()
    if missing:
        raise KeyError(f"task state names parameters the model lacks: {sorted(missing)[:5]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def save_task_state(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> int:
    """Write ``state`` as one flat byte tensor in a safetensors file; return the file's size."""
    import torch
    from safetensors.torch import save_file

    blob = torch.cat(
        [t.detach().contiguous().cpu().reshape(-1).view(torch.uint8) for t in state.values()]
    )
    save_file({"task_state": blob}, os.fspath(path))
    return os.path.getsize(path)


def load_task_state(
    path: str | os.PathLike, template: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Read a :func:`save_task_state` file back into tensors named, shaped and typed as
    ``template`` (the ``task_state`` of a freshly attached model)."""
    from safetensors.torch import load_file

    blob = load_file(os.fspath(path))["task_state"]
    expected = sum(t.numel() * t.element_size() for t in template.values())
    if blob.numel() != expected:
        raise ValueError(
            f"{path} holds {blob.numel()} bytes, the method's task state needs {expected}"
        )
    state, offset = {}, 0
    for name, t in template.items():
        size = t.numel() * t.element_size()
        chunk = blob[offset : offset + size].clone()
        state[name] = chunk.view(t.dtype).reshape(t.shape).to(t.device)
        offset += size
    return state
