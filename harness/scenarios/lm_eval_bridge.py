"""The bridge to lm-evaluation-harness: lm-eval's own ``HFLM`` around the run's model.

Imported by the ``lm_eval`` scenario on first use, so the rest of harness does not import
lm-eval. Subclassing ``HFLM`` (rather than writing an ``LM`` of our own) keeps every request
type, batching, padding and scoring rule lm-eval's, so scores equal what ``lm_eval`` alone
gives for the same model; the subclass only

* gives ``generate`` a KV cache from the method (``make_cache``), fresh for every call, and,
  with ``score_chunk``, scores too through a fresh cache, feeding each batch ``score_chunk``
  tokens at a time (chunked prefill: later tokens attend to what the cache kept), and
* counts what was asked and how long it took, per request type, for the run's costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lm_eval.models.huggingface import HFLM

__all__ = ["HarnessLM", "RequestStats"]


@dataclass
class RequestStats:
    """Requests of one type, their wall time and the tokens they processed."""

    requests: int = 0
    seconds: float = 0.0
    tokens: int = 0


@dataclass
class _Counts:
    by_type: dict[str, RequestStats] = field(default_factory=dict)
    forward_tokens: int = 0
    generated_tokens: int = 0


class HarnessLM(HFLM):
    """lm-eval's HF model class over an already built (and transformed) model.

    ``generate_batch_size`` — requests per ``generate`` call (default ``batch_size``); 1
    keeps left padding out of a KV-cache method's cache.
    ``make_cache()`` — when given, a fresh ``transformers.Cache`` for each ``generate`` call
    (a KV-cache method's), and with ``score_chunk`` for each scoring forward, which then
    feeds the batch through it ``score_chunk`` tokens at a time (right padding sits at the
    end, where lm-eval reads no logits). ``stats`` holds, per request type (``loglikelihood``,
    ``loglikelihood_rolling``, ``generate_until``), the requests served, their wall time
    and the tokens processed: forward tokens (padding included, as the model computes them)
    for scoring requests, generated tokens for generation.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int,
        generate_batch_size: int | None = None,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
        make_cache: Callable[[], Any] | None = None,
        score_chunk: int | None = None,
    ) -> None:
        super().__init__(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
            add_bos_token=add_bos_token,
        )  # fmt: skip
        self._generate_batch_size = generate_batch_size or batch_size
        self._make_cache = make_cache
        self._score_chunk = score_chunk if make_cache is not None else None
        self._counts = _Counts()

    @property
    def stats(self) -> dict[str, RequestStats]:
        return dict(self._counts.by_type)

    def _timed(self, kind: str, call: Callable[[], Any], requests: int) -> Any:
        counts = self._counts
        forward, generated = counts.forward_tokens, counts.generated_tokens
        started = time.perf_counter()
        out = call()
        stats = counts.by_type.setdefault(kind, RequestStats())
        stats.seconds += time.perf_counter() - started
        stats.requests += requests
        stats.tokens += (counts.forward_tokens - forward) + (counts.generated_tokens - generated)
        return out

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        return self._timed(
            "loglikelihood", lambda: super(HarnessLM, self).loglikelihood(requests, True),
            len(requests),
        )  # fmt: skip

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        return self._timed(
            "loglikelihood_rolling",
            lambda: super(HarnessLM, self).loglikelihood_rolling(requests, True),
            len(requests),
        )

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> Any:
        scoring_batch = self.batch_size_per_gpu
        self.batch_size_per_gpu = self._generate_batch_size
        try:
            return self._timed(
                "generate_until", lambda: super(HarnessLM, self).generate_until(requests, True),
                len(requests),
            )  # fmt: skip
        finally:
            self.batch_size_per_gpu = scoring_batch

    def _model_call(self, inps: Any, attn_mask: Any = None, labels: Any = None) -> Any:
        self._counts.forward_tokens += inps.numel()
        if self._score_chunk is None or attn_mask is not None:
            return super()._model_call(inps, attn_mask, labels)
        import torch

        cache = self._make_cache()  # type: ignore[misc]
        with torch.no_grad():
            return torch.cat([
                self.model(inps[:, start : start + self._score_chunk], past_key_values=cache,
                           use_cache=True).logits
                for start in range(0, inps.shape[1], self._score_chunk)
            ], dim=1)  # fmt: skip

    def _model_generate(self, context: Any, max_length: int, stop: list[str], **kwargs: Any) -> Any:
        if self._make_cache is not None:
            kwargs["past_key_values"] = self._make_cache()
        out = super()._model_generate(context, max_length, stop, **kwargs)
        self._counts.generated_tokens += (out.shape[1] - context.shape[1]) * out.shape[0]
        return out
