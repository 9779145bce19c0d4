"""``dense``: the reference point — weights untouched, stored at their own dtype."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from harness.api import NoParams, RunContext

from .common import storage_bytes

if TYPE_CHECKING:
    import torch


class Dense:
    """No compression: every parameter stored as it is."""

    name = "dense"
    role = "reference"
    version = "1"
    description = "unchanged floating-point weights (the baseline every method is compared with)"
    scenarios = ("perplexity", "lm_eval")
    params = NoParams

    def apply(
        self, model: torch.nn.Module, params: Mapping[str, Any], ctx: RunContext
    ) -> torch.nn.Module:
        return model

    def storage_bytes(self, model: torch.nn.Module, params: Mapping[str, Any]) -> int:
        return storage_bytes(model, {})
