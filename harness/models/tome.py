"""Token merging (ToMe, Bolya et al., ICLR 2023) on transformers' ViT, for any scenario.

Between each block's attention and its MLP, ``r`` tokens are merged away: the tokens are
split alternately into two sets, every token of the first set is matched to its most
similar token of the second (cosine similarity of the block's keys averaged over heads), and
the ``r`` best-matched ones are folded into their partners by a size-weighted average. The
class token is never merged. Each token carries its size (how many patches it stands for);
attention adds ``log size`` to the logits (proportional attention) so a merged token weighs
as the tokens it replaced. The same ``r`` in every block, capped so that a block never
merges more than half of its non-class tokens: the tokens entering block ``l + 1`` are
``n_l - min(r, (n_l - 1) // 2)`` (:func:`token_counts`).

:class:`TokenMerging` wraps the layers of a ``ViTModel`` (or of the ``.vit`` of a
``ViTForImageClassification``) in place; its ``r`` can be changed between forwards, and
``r = 0`` computes exactly what the unwrapped model does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["TokenMerging", "bipartite_soft_matching", "merge_weighted", "token_counts"]


def token_counts(tokens: int, r: int, depth: int) -> list[int]:
    """Tokens (class token included) entering each of ``depth`` blocks merging ``r`` each."""
    counts = [tokens]
    for _ in range(depth - 1):
        counts.append(counts[-1] - min(r, (counts[-1] - 1) // 2))
    return counts


Merge = Callable[[torch.Tensor, str], torch.Tensor]


def bipartite_soft_matching(metric: torch.Tensor, r: int) -> Merge:
    """The merge ToMe does for ``metric`` ``[B, N, C]`` (token 0 the class token): returns a
    function that merges ``r`` tokens of any ``[B, N, D]`` tensor (``reduce`` ``sum`` or
    ``mean`` over the tokens folded together), keeping the class token first."""
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        first, second = metric[:, ::2], metric[:, 1::2]
        scores = first @ second.transpose(-1, -2)
        scores[:, 0, :] = -torch.inf  # the class token (first of the first set) stays
        best, partner = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        kept = order[:, r:].sort(dim=1).values  # sorted: the class token stays at 0
        moved = order[:, :r]
        into = partner[..., None].gather(1, moved)

    def merge(x: torch.Tensor, reduce: str = "mean") -> torch.Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        width = x.shape[-1]
        stay = a.gather(1, kept.expand(-1, -1, width))
        go = a.gather(1, moved.expand(-1, -1, width))
        b = b.scatter_reduce(1, into.expand(-1, -1, width), go, reduce=reduce)
        return torch.cat([stay, b], dim=1)

    return merge


def merge_weighted(
    merge: Merge, x: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge ``x`` as the size-weighted average of the tokens folded together; new sizes."""
    summed = merge(x * size, "sum")
    size = merge(size, "sum")
    return summed / size, size


class _State:
    """One forward's token sizes and the token count entering each block."""

    def __init__(self) -> None:
        self.size: torch.Tensor | None = None
        self.counts: list[int] = []


class _MergingLayer(nn.Module):
    """A ``ViTLayer`` with ToMe between its attention and its MLP."""

    def __init__(self, layer: nn.Module, owner: TokenMerging) -> None:
        super().__init__()
        self.layer = layer
        self._owner = [owner]  # a list: not a submodule
        self._keys: torch.Tensor | None = None
        self.hook = layer.attention.k_proj.register_forward_hook(self._keep_keys)

    def _keep_keys(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        self._keys = out

    def forward(self, hidden_states: torch.Tensor, attention_mask: Any = None,
                **kwargs: Any) -> torch.Tensor:  # fmt: skip
        owner, layer = self._owner[0], self.layer
        state = owner.state
        state.counts.append(hidden_states.shape[1])
        if owner.proportional and state.size is not None:
            bias = state.size[..., 0].log()[:, None, None, :].to(hidden_states.dtype)
            attention_mask = bias if attention_mask is None else attention_mask + bias
        residual = hidden_states
        x, _ = layer.attention(layer.layernorm_before(hidden_states), attention_mask, **kwargs)
        x = layer.dropout(x) + residual
        r = min(owner.r, (x.shape[1] - 1) // 2)
        if r > 0:
            keys, self._keys = self._keys, None
            assert keys is not None
            batch, tokens = keys.shape[:2]
            heads = layer.attention.config.num_attention_heads
            metric = keys.view(batch, tokens, heads, -1).mean(dim=2)
            size = state.size
            if size is None:
                size = torch.ones(batch, tokens, 1, dtype=x.dtype, device=x.device)
            x, state.size = merge_weighted(bipartite_soft_matching(metric, r), x, size)
        residual = x
        x = layer.mlp(layer.layernorm_after(x))
        return layer.dropout(x) + residual


class TokenMerging:
    """ToMe on a transformers ViT, installed in place: ``r`` tokens merged per block.

    ``counts`` — the tokens that entered each block in the last forward; ``sizes`` — the
    final tokens' sizes (they sum to the input's token count). ``remove()`` puts the
    original layers back.
    """

    def __init__(self, model: nn.Module, r: int = 0, proportional: bool = True) -> None:
        vit = getattr(model, "vit", model)
        if not hasattr(vit, "layers"):
            raise TypeError(f"{type(model).__name__} is not a transformers ViT (no .layers)")
        self.r = r
        self.proportional = proportional
        self.state = _State()
        self._vit = vit
        self._layers = list(vit.layers)
        vit.layers = nn.ModuleList(_MergingLayer(layer, self) for layer in self._layers)
        self._reset = vit.register_forward_pre_hook(lambda module, args: self._fresh())

    def _fresh(self) -> None:
        self.state = _State()

    @property
    def counts(self) -> list[int]:
        return list(self.state.counts)

    @property
    def sizes(self) -> torch.Tensor | None:
        return self.state.size

    def remove(self) -> None:
        for wrapped in self._vit.layers:
            wrapped.hook.remove()
        self._vit.layers = nn.ModuleList(self._layers)
        self._reset.remove()
