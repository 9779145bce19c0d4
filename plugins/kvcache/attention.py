"""Custom-attention plumbing for KV-cache methods that need more than the cache's ``update``.

transformers 5.x calls an attention function with ``(module, query, key, value,
attention_mask, scaling, dropout, **kwargs)`` and never passes it the cache, yet a method such
as H2O (needs the attention probabilities) or SpeCache (picks top-k keys from them) must reach
its cache layer from there. The pieces:

* :func:`register_attention` registers a function under a name with *both*
  ``AttentionInterface`` and ``AttentionMaskInterface`` (with ``sdpa_mask``): without the mask
  registration transformers hands the function ``attention_mask=None`` even in prefill.
* :func:`bind_layer` / :func:`take_layer`: a cache layer's ``update()`` — which runs right
  before attention in the same decoder layer — binds itself under its layer index in a
  context variable; the attention function takes (and so unbinds) it by ``module.layer_idx``.
* :data:`KV_ATTENTION` is one registered dispatching function: it calls the bound layer's
  ``attend(module, query, key, value, attention_mask, scaling, dropout, **kwargs)``, or
  transformers' own sdpa attention when no layer bound itself (a plain cache). A model
  switched to it by :func:`use_kv_attention` therefore behaves exactly as before with any
  other method's cache.
* :func:`eager_attention` is the reference the ``attend`` methods build on: boolean or
  additive 4-D masks, ``mask=None`` (causal aligned lower-right when ``q_len > 1``, no mask
  otherwise — the cases where transformers skips the mask), GQA, probabilities on request.
  It is Llama-style attention: no logit soft-capping, no sliding window, no learned sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "KV_ATTENTION",
    "bind_layer",
    "eager_attention",
    "register_attention",
    "take_layer",
    "use_kv_attention",
]

#: Name of the dispatching attention function (see :func:`use_kv_attention`).
KV_ATTENTION = "harness_kvcache"

_BOUND: ContextVar[dict[int, Any] | None] = ContextVar("harness_kvcache_bound", default=None)


def register_attention(name: str, fn: Callable[..., Any]) -> None:
    """Register ``fn`` as attention implementation ``name``, with sdpa's boolean causal masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, fn)
    AttentionMaskInterface.register(name, sdpa_mask)


def bind_layer(layer_idx: int, layer: Any) -> None:
    """Make ``layer`` the one the next attention call of decoder layer ``layer_idx`` uses."""
    bound = _BOUND.get()
    if bound is None:
        bound = {}
        _BOUND.set(bound)
    bound[layer_idx] = layer


def take_layer(layer_idx: int) -> Any | None:
    """The layer bound for ``layer_idx`` (unbinding it), or None when none is bound."""
    bound = _BOUND.get()
    return None if bound is None else bound.pop(layer_idx, None)


def use_kv_attention(model: Any) -> None:
    """Switch ``model`` to the dispatching attention (registering it on first use)."""
    from transformers import AttentionInterface

    if KV_ATTENTION not in AttentionInterface._global_mapping:
        register_attention(KV_ATTENTION, _dispatch)
    if getattr(model.config, "_attn_implementation", None) != KV_ATTENTION:
        model.set_attn_implementation(KV_ATTENTION)


def _dispatch(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    layer = take_layer(module.layer_idx)
    if layer is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return layer.attend(module, query, key, value, attention_mask, **kwargs)


def eager_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Softmax attention of ``query [B, Hq, q, D]`` over ``key``/``value [B, Hkv, kv, D]``.

    Returns the output as transformers' attention functions do, ``[B, q, Hq, D]``, and the
    float32 probabilities ``[B, Hq, q, kv]`` when ``return_probs``. ``Hq`` must be a
    multiple of ``Hkv`` (GQA: each KV head serves ``Hq // Hkv`` consecutive query heads).
    ``attention_mask``: boolean (True = attend) or additive float, broadcastable to
    ``[B, Hq, q, kv]``; None means causal aligned to the lower right when ``q > 1``.
    """
    import torch

    groups = query.shape[1] // key.shape[1]
    if groups * key.shape[1] != query.shape[1]:
        raise ValueError(f"{query.shape[1]} query heads do not split over {key.shape[1]} KV heads")
    keys = key.repeat_interleave(groups, dim=1)
    values = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query.float(), keys.float().transpose(-1, -2)) * scaling
    q_len, kv_len = scores.shape[-2], scores.shape[-1]
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        else:
            scores = scores + attention_mask.float()
    elif q_len > 1:
        rows = torch.arange(q_len, device=scores.device).unsqueeze(-1)
        cols = torch.arange(kv_len, device=scores.device)
        scores = scores.masked_fill(cols > rows + (kv_len - q_len), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs.to(value.dtype), values).transpose(1, 2).contiguous()
    return out, (probs if return_probs else None)
