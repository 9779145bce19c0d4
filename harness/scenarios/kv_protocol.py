"""The method side of the ``generate`` scenario: a KV cache, and optionally its own decode loop.

A KV-cache method provides

* ``make_cache(model, params, ctx) -> transformers.Cache`` — a fresh cache for one generate
  call (the installed transformers 5.x ``Cache``/``CacheLayerMixin`` API). The scenario
  prefills the context through it, then decodes with :class:`GreedyDecoder`;
* optionally ``make_decoder(model, cache, params, ctx) -> Decoder`` — its own prefill/decode
  loop around that cache, for methods that change the decode step itself (e.g. feeding two
  tokens per step). It must produce the same kind of result as :class:`GreedyDecoder`:
  greedy tokens, ``on_token`` called once per generated token.

The cache a method returns may also report, and the scenario records when it does:

* ``resident_bytes() -> int`` — bytes of KV state allocated on the compute device (packed
  codes, scales, residual windows at the dtype they are kept in, fetched-row buffers:
  everything the method holds there between steps), counting a buffer grown in place at its
  capacity, not the rows in use (:func:`allocated_bytes` counts tensors so). Without it the
  scenario counts the ``keys``/``values`` tensors of the cache's layers on the device;
* ``host_bytes() -> int`` — bytes of KV state allocated off the device, in host memory,
  counted as ``resident_bytes`` is (buffers at their capacity, staging buffers included);
* ``counters() -> Mapping[str, tuple[float, str]]`` — additive totals over the cache's life,
  name → (value, unit), e.g. host→device bytes copied. The scenario sums them over episodes
  and records each total and its per-generated-token rate.

and the method may define ``derived_metrics(totals) -> Mapping[str, tuple[float, str]]`` to
turn summed counters into ratios (e.g. a hit rate from hits and lookups).

Positions: a cache that evicts or compresses must report the number of tokens it has *seen*
from ``get_seq_length()`` (transformers derives position ids and the prompt slice from it),
and ``(physical + q_len, seen - physical)`` from ``get_mask_sizes``.

When: ``make_cache`` (and ``make_decoder``, when the method has it) is called for every
generate call: once for an untimed warm-up, once per episode inside the ``eval`` phase
(before the clock starts: building the cache is in no prefill or decode sample), and once
more for the probed call on the first episode, whose ``prefill`` and ``decode`` phases carry
peak memory and energy. The model is the suite's causal LM as loaded (on ``ctx.device``,
frozen; torch seeded with the run's seed). After each episode the scenario reads the
cache's ``resident_bytes()`` and ``host_bytes()`` (the maximum over episodes is recorded)
and its ``counters()`` (summed over the episodes, not the warm-up or the probed call);
``derived_metrics`` is called once, on those totals, when there are any.

``params`` is a plain ``dict``, the same for every call: the run's method params from the
suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
There is no common base schema.

``ctx`` (:class:`harness.api.RunContext`): a method may use ``ctx.device``, ``ctx.spec``
(``seed``, ``model``), ``ctx.cache_dir``, ``ctx.load_tokenizer()`` and
``ctx.recorder.record(phase, metric, value, unit)`` for fixed figures of its own — but not
from ``make_cache``, ``make_decoder`` or the cache, which run once per call (a figure
recorded there repeats): per-call figures are the cache's ``counters()``, turned into
ratios by ``derived_metrics``. It raises :class:`harness.api.Unsupported` for a run this
machine can't do (e.g. offloading without CUDA). The rest is the scenario's: phases and
timing (``ctx.phase``, ``ctx.time``), parameter counts, validity (decode samples are checked
against the suite's measure rules), the task and its episodes and answers (``ctx.task``),
and the figures it records (scores, latencies, KV bytes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

__all__ = [
    "Decoder",
    "GreedyDecoder",
    "allocated_bytes",
    "cache_counters",
    "kv_full_bytes",
    "resident_kv_bytes",
]


@runtime_checkable
class Decoder(Protocol):
    """One generate call over one cache: prefill a context, then decode greedily."""

    def prefill(self, context_ids: torch.Tensor) -> None:
        """Run the context (shape ``[1, L]``) through the model, filling the cache."""
        ...

    def decode(
        self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None]
    ) -> list[int]:
        """Feed ``input_ids`` (``[1, q]``: the question, or the last prompt token) after the
        prefilled context and return ``max_new_tokens`` greedy tokens. ``on_token()`` is
        called right after each token is chosen (the scenario timestamps it there)."""
        ...


class GreedyDecoder:
    """The default loop: the cache's own ``update`` is the whole method.

    The context is prefilled on its own, so a method that compresses while storing K/V is
    measured on compressed state from the first question token on (prefilling question and
    context together would let the question attend to the uncompressed context).
    """

    def __init__(self, model: Any, cache: Any) -> None:
        self.model = model
        self.cache = cache

    def prefill(self, context_ids: torch.Tensor) -> None:
        import torch

        with torch.inference_mode():
            self.model(
                input_ids=context_ids, past_key_values=self.cache, use_cache=True,
                logits_to_keep=1,
            )  # fmt: skip

    def decode(
        self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None]
    ) -> list[int]:
        import torch

        tokens: list[torch.Tensor] = []
        step_ids = input_ids
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = self.model(
                    input_ids=step_ids, past_key_values=self.cache, use_cache=True,
                    logits_to_keep=1,
                ).logits  # fmt: skip
                step_ids = logits[:, -1].argmax(dim=-1, keepdim=True)
                on_token()
                tokens.append(step_ids)
        return torch.cat(tokens, dim=1)[0].tolist() if tokens else []


def allocated_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes allocated behind ``tensors`` (None skipped): each distinct storage once and
    whole, since a view keeps all of its base allocated and views of one buffer share it."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for tensor in tensors:
        if tensor is None:
            continue
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def resident_kv_bytes(cache: Any, device: str) -> int:
    """Bytes of KV state the cache holds on ``device``: its own figure when it reports one,
    else what the ``keys``/``values`` tensors of its layers that live there allocate."""
    if hasattr(cache, "resident_bytes"):
        return int(cache.resident_bytes())
    import torch

    target = torch.device(device)
    tensors = [
        tensor
        for layer in getattr(cache, "layers", ())
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None))
        if isinstance(tensor, torch.Tensor) and tensor.device.type == target.type
    ]
    return allocated_bytes(*tensors)


def kv_full_bytes(config: Any, tokens: int, element_size: int) -> int:
    """What a full cache of ``tokens`` tokens takes at ``element_size`` bytes per element:
    keys and values of every layer and KV head."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return 2 * text.num_hidden_layers * heads * head_dim * tokens * element_size


def cache_counters(cache: Any) -> Mapping[str, tuple[float, str]]:
    """The cache's additive counters (empty when it keeps none)."""
    return dict(cache.counters()) if hasattr(cache, "counters") else {}
