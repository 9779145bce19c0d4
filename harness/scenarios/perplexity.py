"""The ``perplexity`` scenario: how a method that changes weight storage trades quality for bytes.

A method transforms a causal LM's weights (``apply``) and says how many bytes the result
takes to store (``storage_bytes``); the scenario then scores held-out text and times a
forward pass, so quality, storage and latency of the same transformed model sit side by side.

Protocol:

* method — ``apply(model, params, ctx) -> model`` (may change the model in place) and
  ``storage_bytes(model, params) -> int``;
* task — its params schema has ``seq_len``, ``windows`` and ``batch_size``, and
  ``data(params, seed) -> str`` gives the held-out text (no inputs).

The method's side, in detail:

* ``apply`` is called once, in the ``apply`` phase (its time and peak memory are recorded),
  on the causal LM as the suite's model entry loads it (on ``ctx.device``, torch seeded with
  the run's seed); the model it returns is the one scored and timed. ``storage_bytes`` is
  called after scoring, on that model: the bytes the method's form of the weights takes to
  store (``compression_ratio`` is the loaded model's parameter bytes over it).
* ``params`` is a plain ``dict``, the same for both calls: the run's method params from the
  suite, validated by the method's ``params`` schema with its defaults filled in, as JSON
  values (a tuple field arrives as a list). ``YourParams(**params)`` gives the typed object.
* ``ctx`` (:class:`harness.api.RunContext`): a method may use ``ctx.device``, ``ctx.spec``
  (``seed``, ``model``), ``ctx.cache_dir`` (what it builds once and reuses, keyed by what it
  depends on), ``ctx.load_tokenizer()``, and ``ctx.recorder.record(phase, metric, value,
  unit)`` for figures of its own (e.g. ``model``/``weight_sparsity``); it raises
  :class:`harness.api.Unsupported` for a run this machine can't do. The rest is the
  scenario's: phases and timing (``ctx.phase``, ``ctx.time``), parameter counts, validity
  (``recorder.mark_invalid``), the task and its held-out text (``ctx.task``), and the
  figures it records.

Text is scored in ``windows`` non-overlapping windows of ``seq_len`` tokens, drawn by the
run's seed; every token but a window's first is predicted from the tokens before it.
Perplexity depends on the tokenizer; bits per byte (total loss in bits over the UTF-8 bytes
of the scored text) does not, so it compares models with different tokenizers.
"""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import CostColumn, CostPlot, Params, QualityColumn, ResultColumns, RunContext

if TYPE_CHECKING:
    import torch

__all__ = [
    "PerplexityScenario",
    "StdlibText",
    "StdlibTextParams",
    "TextTaskParams",
    "token_windows",
    "total_nll",
]


class TextTaskParams(Params):
    """What every ``perplexity`` task's params have: window length, count and batch size."""

    seq_len: int = Field(128, ge=2)
    """Tokens per scored window."""
    windows: int = Field(16, gt=0)
    """Non-overlapping held-out windows scored, drawn by the run's seed."""
    batch_size: int = Field(8, gt=0)
    """Windows per forward pass, when scoring and in the timed forward."""


class StdlibTextParams(TextTaskParams):
    """``source`` is ``stdlib`` or a UTF-8 text file; at most ``max_bytes`` are tokenized."""

    source: str = "stdlib"
    """stdlib (held-out Python standard-library files) or a UTF-8 file's path (its last 10 %)."""
    max_bytes: int = Field(1 << 20, gt=0)
    """Most bytes of held-out text read and tokenized."""


class StdlibText:
    """Held-out Python stdlib source (or the last 10 % of a local text file), offline."""

    name = "stdlib-text"
    description = (
        "held-out Python standard-library source as text (source=PATH: a local UTF-8 file's "
        "last 10 %), scored in windows of seq_len tokens"
    )
    scenario = "perplexity"
    params = StdlibTextParams

    def data(self, params: StdlibTextParams, seed: int, **inputs: Any) -> str:
        from harness.data.text_corpus import load_text

        return load_text(params.source, "test", params.max_bytes).decode("utf-8")


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter at its dtype (a tied tensor counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def token_windows(ids: torch.Tensor, seq_len: int, windows: int, seed: int, what: str,
                  hint: str) -> torch.Tensor:  # fmt: skip
    """``windows`` non-overlapping windows of ``seq_len`` tokens of ``ids`` chosen by ``seed``;
    too few is an error naming ``what`` holds the tokens and, as ``hint``, what to change."""
    import torch

    available = len(ids) // seq_len
    if available < windows:
        raise ValueError(
            f"{what} has {len(ids)} tokens, only {available} windows of {seq_len}; {hint}"
        )
    chunks = ids[: available * seq_len].view(available, seq_len)
    order = torch.randperm(available, generator=torch.Generator().manual_seed(seed))
    return chunks[order[:windows]]


#: Token ids of recently scored texts, by tokenizer and text: a worker process runs many
#: configurations of one suite over the same held-out text, and tokenizing it again costs
#: most of a second each time. A few entries: a suite scores one or two texts.
_TOKEN_IDS: dict[tuple[str, int, str], torch.Tensor] = {}
_TOKEN_IDS_KEPT = 4


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """``text`` tokenized without special tokens, cached per process by the tokenizer's path,
    vocabulary size and the text's SHA-256."""
    import torch

    key = (str(getattr(tokenizer, "name_or_path", "")), len(tokenizer),
           hashlib.sha256(text.encode("utf-8")).hexdigest())  # fmt: skip
    if key not in _TOKEN_IDS:
        # Special-token strings in the text (e.g. a literal "</s>") are text, not control tokens.
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        while len(_TOKEN_IDS) >= _TOKEN_IDS_KEPT:
            _TOKEN_IDS.pop(next(iter(_TOKEN_IDS)))
        _TOKEN_IDS[key] = torch.tensor(ids)
    return _TOKEN_IDS[key]


def eval_windows(
    tokenizer: Any, text: str, seq_len: int, windows: int, seed: int
) -> tuple[torch.Tensor, int]:
    """``windows`` non-overlapping token windows of ``text`` chosen by ``seed``, and the
    UTF-8 bytes of their scored part (every token but each window's first)."""

    picked = token_windows(token_ids(tokenizer, text), seq_len, windows, seed,
                           "the eval text", "lower windows or seq_len")  # fmt: skip
    scored_bytes = sum(
        len(
            tokenizer.decode(
                w[1:].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
            ).encode("utf-8")
        )
        for w in picked
    )
    return picked, scored_bytes


def total_nll(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: str) -> float:
    """Summed next-token negative log-likelihood (nats) over every window's tokens but the first."""
    import torch
    import torch.nn.functional as F

    total = 0.0
    with torch.inference_mode():
        for batch in windows.split(batch_size):
            x = batch.to(device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1]
            loss = F.cross_entropy(
                logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"
            )
            total += float(loss)
    return total


class PerplexityScenario:
    """Apply a weight-storage method, then score held-out text and time a forward pass."""

    name = "perplexity"
    description = (
        "causal-LM perplexity and bits/byte on held-out text after a method transforms the "
        "weights, with storage bytes and forward latency of the same model"
    )
    method_protocol = ("apply", "storage_bytes")
    #: The method contract (``harness show scenario perplexity``): this module's docstring.
    contract = globals()["__doc__"]
    model_kinds = ("causal-lm",)
    columns = ResultColumns(
        # Bits per byte first: unlike perplexity it compares models with other tokenizers.
        quality=(QualityColumn("bits_per_byte", higher_is_better=False),
                 QualityColumn("perplexity", higher_is_better=False)),
        # The compression ratio is storage seen from the dense model: a cost, not a quality.
        costs=(CostColumn("storage", "storage", "storage_bytes", "bytes"),
               CostColumn("compression", "compression ratio", "compression_ratio", "x",
                          higher_is_better=True)),
        plots=(CostPlot("storage", "Quality vs storage", "bytes stored", "storage bytes"),),
        trains=False,
    )

    def run(self, ctx: RunContext) -> None:
        import torch

        task_params = ctx.task.params(**ctx.spec.task_params)
        method_params = dict(ctx.spec.params)
        recorder = ctx.recorder
        torch.manual_seed(ctx.spec.seed)

        model = ctx.load_model("causal-lm")
        tokenizer = ctx.load_tokenizer()
        ctx.count_parameters(model)
        dense = parameter_bytes(model)
        recorder.record("model", "dense_weight_bytes", dense, "bytes")

        with ctx.phase("apply"):
            model = ctx.method.apply(model, method_params, ctx)

        windows, scored_bytes = eval_windows(
            tokenizer,
            ctx.task.data(task_params, ctx.spec.seed),
            task_params.seq_len,
            task_params.windows,
            ctx.spec.seed,
        )
        with ctx.phase("eval"):
            nll = total_nll(model, windows, task_params.batch_size, ctx.device)
        scored_tokens = windows.shape[0] * (windows.shape[1] - 1)
        recorder.record(
            "eval", "perplexity", math.exp(nll / scored_tokens), "", higher_is_better=False
        )
        recorder.record(
            "eval",
            "bits_per_byte",
            nll / math.log(2) / scored_bytes,
            "bits/byte",
            higher_is_better=False,
        )
        recorder.record("eval", "scored_tokens", scored_tokens, "token")
        stored = ctx.method.storage_bytes(model, method_params)
        recorder.record("model", "storage_bytes", stored, "bytes")
        recorder.record("model", "compression_ratio", dense / stored, "x")

        batch = windows[: task_params.batch_size].to(ctx.device)

        def forward() -> None:
            with torch.inference_mode():
                model(input_ids=batch, use_cache=False)

        ctx.time("forward", forward, items=batch.numel(), item_unit="token")
