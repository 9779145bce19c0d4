"""What the ViT adaptation methods share: the default task state, and where to plug in.

Every method here adds its modules *without rewriting the backbone*: a module is registered
as a child of the ViT block it serves (so it moves with the model and its parameters are
named, e.g. ``vit.layers.3.adaptformer.down.weight``) and joins the computation through
forward hooks on the block's existing sub-modules. The backbone's own weights, names and
state dict stay those of the pretrained model.

Hook points in a transformers ViT block (``model.vit.layers[i]``, transformers 5 names)::

    x = x + attention(layernorm_before(x))      # attention.{q,k,v,o}_proj
    x = x + mlp(layernorm_after(x))             # mlp.fc1, mlp.fc2
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from harness.scenarios.adapt_protocol import load_trainable_state, trainable_state

if TYPE_CHECKING:
    import torch

__all__ = [
    "TrainedWeights",
    "add_to_attention",
    "add_to_mlp",
    "add_to_output",
    "vit_blocks",
]


class TrainedWeights:
    """Base of methods whose task state is simply the weights they train (the head included)."""

    def task_state(self, model: torch.nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        return trainable_state(model)

    def load_task_state(
        self, model: torch.nn.Module, state: Mapping[str, Any], params: Mapping[str, Any]
    ) -> None:
        load_trainable_state(model, state)


def vit_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a ``ViTForImageClassification`` (``model.vit.layers``)."""
    layers = getattr(getattr(model, "vit", None), "layers", None)
    if layers is None:
        raise TypeError(
            f"{type(model).__name__} has no `vit.layers`: these methods need a transformers "
            f"ViT (ViTForImageClassification, transformers >= 5 module names)"
        )
    return list(layers)


def add_to_output(
    module: torch.nn.Module, branch: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Make ``module(x)`` return ``module(x) + branch(x)`` (a parallel branch on a Linear)."""

    def hook(mod: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + branch(args[0])

    module.register_forward_hook(hook)


def add_to_attention(
    block: torch.nn.Module, branch: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Add ``branch(layernorm_before(x))`` to the block's attention output (a bypass of MHSA)."""

    def hook(mod: Any, args: tuple[Any, ...], output: tuple[Any, ...]) -> tuple[Any, ...]:
        return (output[0] + branch(args[0]), *output[1:])

    block.attention.register_forward_hook(hook)


def add_to_mlp(
    block: torch.nn.Module,
    branch: Callable[[torch.Tensor], torch.Tensor],
    *,
    normed: bool = True,
) -> None:
    """Add a branch parallel to the block's MLP.

    With ``normed`` the branch sees the MLP's own input, ``layernorm_after(x)`` (Convpass);
    otherwise the residual stream ``x`` before that norm (AdaptFormer).
    """
    if normed:
        add_to_output(block.mlp, branch)
        return
    seen: list[torch.Tensor] = []

    def keep_input(mod: Any, args: tuple[Any, ...]) -> None:
        seen[:] = [args[0]]

    def add(mod: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output + branch(seen.pop())

    block.layernorm_after.register_forward_pre_hook(keep_input)
    block.mlp.register_forward_hook(add)
