"""The projector both visual-prompting methods train: encoder features to the LM's width."""

from __future__ import annotations

from typing import Any


def projector(features: int, hidden: int, width: int, activation: str) -> Any:
    """``Linear(features → hidden) → activation → Linear(hidden → width)``, Xavier-uniform
    weights and zero biases, as MemVP's official projector is initialised."""
    from torch import nn

    act = {"silu": nn.SiLU, "gelu": nn.GELU}[activation]
    layers = nn.Sequential(nn.Linear(features, hidden), act(), nn.Linear(hidden, width))
    for layer in (layers[0], layers[2]):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return layers


def like(module: Any, reference: Any) -> Any:
    """``module`` on the device and in the dtype of ``reference``'s first parameter."""
    weight = next(reference.parameters())
    return module.to(weight.device, weight.dtype)
