"""The ``lm_train`` scenario: pretrain a causal LM on a fixed token budget, then measure it.

Methods that change an LM's architecture (routed experts, lookup experts) are compared with
a dense model at equal training tokens: the same data, the same steps of the same batch
shape, the same optimizer. The method side is :mod:`harness.scenarios.lm_train_protocol`.

Protocol:

* model — kind ``config``: a transformers ``PretrainedConfig`` (``hf-config:PATH`` with
  ``overrides``); the scenario sets its ``vocab_size`` (and bos/eos/pad ids) to the task's
  tokenizer;
* method — ``build(config, params, ctx)``, optionally ``inference(model, params, ctx)`` and
  ``active_params(model, params)``;
* task — ``data(params, seed) -> LMData`` (tokenizer, train ids, held-out ids); its params
  derive from :class:`LMTaskParams`.

What a run records:

* ``model``: ``total_params``, ``trainable_params``, ``params_active`` (count);
* ``train_step``: ``latency`` statistics of every step but the first (ms; stat ``first`` is
  the first step) with the raw samples, ``throughput`` (token/s, median);
  ``train``: ``steps``, ``tokens`` (count, token), ``initial_loss`` and ``final_loss`` (mean
  of the first / last tenth of steps, nats), ``seconds`` (s; the train phase's, or from the
  cache), ``cached`` (1 when the trained model came from the cache, 0 when this run trained
  it; the train figures then are those of the run that trained it, stored beside the
  weights), and the loss curve as samples;
* ``eval``: ``loss`` (nats/token), ``bits_per_token``, ``perplexity`` of the model as it is
  measured at inference (the method's inference form: a quantized lookup table's loss
  counts) over ``eval_windows`` non-overlapping held-out windows of ``seq_len`` tokens
  chosen by the seed, and ``scored_tokens``; ``trained_form_bits_per_token`` (the trained
  model's) and ``inference_form_delta_bits`` (inference form − trained form: 0 without an
  inference form, the cost of re-parameterisation or quantization with one);
* ``inference``: ``inference_device_bytes`` and ``inference_host_bytes`` (bytes; the
  inference model's ``device_bytes()``/``host_bytes()``, else its parameter bytes / 0) and
  the inference model's ``figures()`` (a quantized table's error); phases
  ``derive_inference`` (building the inference form: re-parameterising, quantizing) and
  ``eval_inference`` (its held-out loss) carry their seconds and memory peaks;
* for each B in ``batch_sizes``: ``prefill_b{B}`` (a ``prompt_len`` prompt, fresh cache) and
  ``decode_b{B}`` (one call = ``new_tokens`` greedy steps after the prefilled prompt, on a
  copy of its cache) timed loops with their latency and throughput (token/s), plus
  ``decode_b{B}/ms_per_token`` (median call / new_tokens, ms) and
  ``decode_b{B}/h2d_bytes_per_token`` (the method's ``h2d_bytes`` counter over one decode
  call / (new_tokens × B), bytes; null with a reason when the method has no counter) and its
  other counters over that call.

Trained models are cached under ``<cache_dir>/lm_train/<recipe hash>/`` (``model.pt``, the
state dict, and ``recipe.json`` with the training figures): the recipe is the config, the
method (name, version, params — or the method's ``trained_as(params)``, so runs that differ
only in the inference form share one trained model), the task's training params, the seed,
the device type and :data:`TRAINER_VERSION`, so a suite rerun, or another task that only
changes how the model is measured, trains nothing twice.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from harness.api import (
    CostColumn,
    CostPlot,
    Params,
    QualityColumn,
    ResultColumns,
    RunContext,
    Unsupported,
)
from harness.models.recipes import adamw, build_once, recipe_hash, warmup_cosine
from harness.probes.timing import LoopTimer, record_latency, summarize
from harness.scenarios import lm_train_protocol
from harness.scenarios.lm_train_protocol import parameter_bytes
from harness.scenarios.perplexity import token_windows, total_nll

if TYPE_CHECKING:
    import torch

__all__ = ["LMData", "LMTaskParams", "LMTrainScenario", "StdlibLM", "StdlibLMParams"]

#: Bumped whenever the training loop changes what it trains, so cached models are retrained.
TRAINER_VERSION = 1
#: Task params that only change how a trained model is measured (left out of the recipe).
MEASURE_ONLY = frozenset({"eval_windows", "prompt_len", "new_tokens", "batch_sizes"})
#: Optimizer and schedule (the peak lr is the method's ``lr``).
BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
GRAD_CLIP = 1.0
WARMUP_FRACTION = 0.1
FINAL_LR_RATIO = 0.1


@dataclass
class LMData:
    """What an ``lm_train`` task gives: its tokenizer and 1-D token id tensors."""

    tokenizer: Any
    train_ids: torch.Tensor
    eval_ids: torch.Tensor


class LMTaskParams(Params):
    """What every ``lm_train`` task's params have: the training budget (``steps`` of
    ``batch_size`` × ``seq_len`` tokens) and how the trained model is measured."""

    seq_len: int = Field(128, ge=2)
    """Tokens per training sequence and per held-out evaluation window."""
    batch_size: int = Field(16, gt=0)
    """Sequences per training step (and windows per evaluation forward)."""
    steps: int = Field(300, gt=0)
    """Training steps: the token budget is steps x batch_size x seq_len."""
    eval_windows: int = Field(64, gt=0)
    """Non-overlapping held-out windows of seq_len tokens scored, drawn by the seed."""
    prompt_len: int = Field(32, gt=0)
    """Prompt tokens of the timed prefill."""
    new_tokens: int = Field(16, gt=0)
    """Greedy tokens per timed decode call."""
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32], min_length=1)
    """Batch sizes at which prefill and decode are timed."""


class StdlibLMParams(LMTaskParams):
    """``source``: ``stdlib``, a UTF-8 text file (first 90 % train, last 10 % held out), or
    ``hf:DATASET`` (a hub id or a local dir saved with ``save_to_disk``) whose ``hf_field``
    column of ``hf_split`` is joined into one text, split 90/10 the same way. At most
    ``max_bytes`` of each split; a byte-level BPE of ``vocab_size`` tokens (at least the 256
    bytes and 3 specials) is trained on the train split."""

    source: str = "stdlib"
    """stdlib (Python standard-library source), a UTF-8 file's path, or hf:DATASET."""
    max_bytes: int = Field(1 << 21, gt=0)
    """Most bytes of text read for each of the train and held-out splits."""
    vocab_size: int = Field(2048, ge=259)
    """Vocabulary of the byte-level BPE trained on the train split (at least 256 bytes + 3)."""
    hf_split: str = "train"
    """hf: the dataset split whose text is joined and split 90/10."""
    hf_field: str = "text"
    """hf: the column holding the text."""


def _hf_text(name: str, split: str, field: str) -> str:
    """The ``field`` column of a datasets dataset's ``split``, joined by newlines."""
    try:
        import datasets
    except ImportError as exc:
        raise Unsupported("source 'hf:...' needs the datasets package") from exc
    path = Path(name)
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = datasets.load_from_disk(name)
        data = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        data = datasets.load_dataset(name, split=split)
    if field not in data.column_names:
        raise ValueError(
            f"dataset {name} has no column '{field}' (columns: {', '.join(data.column_names)})"
        )
    return "\n".join(str(t) for t in data[field])


def corpus_text(source: str, split: str, max_bytes: int, hf_split: str, hf_field: str) -> str:
    """At most ``max_bytes`` of ``source``'s ``split`` (``train`` or ``test``) as text."""
    from harness.data.text_corpus import load_text

    if not source.startswith("hf:"):
        return load_text(source, split, max_bytes).decode("utf-8")
    data = _hf_text(source[3:], hf_split, hf_field).encode("utf-8")
    cut = len(data) * 9 // 10
    part = data[:cut] if split == "train" else data[cut:]
    return part[:max_bytes].decode("utf-8", errors="ignore")


@functools.lru_cache(maxsize=4)
def _stdlib_lm_data(
    source: str, max_bytes: int, vocab_size: int, hf_split: str, hf_field: str
) -> LMData:
    """Tokenizer and ids, once per worker process for the same corpus and vocabulary."""
    import torch

    from harness.models.tiny_llama_retrieval import build_tokenizer

    train = corpus_text(source, "train", max_bytes, hf_split, hf_field)
    test = corpus_text(source, "test", max_bytes, hf_split, hf_field)
    spec = {"vocab_size": vocab_size, "special_tokens": ["<bos>", "<eos>", "<pad>"]}
    tokenizer = build_tokenizer(spec, train)

    def ids(text: str) -> torch.Tensor:
        # Special-token strings in the text are text, not control tokens.
        out = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return torch.tensor(out, dtype=torch.long)

    return LMData(tokenizer, ids(train), ids(test))


class StdlibLM:
    """Python's standard-library source (or a text file, or an HF dataset) with a BPE
    vocabulary trained on its train split."""

    name = "stdlib-lm"
    description = (
        "pretraining text: Python stdlib source (source=PATH: a UTF-8 file, hf:DATASET: a "
        "datasets column), split 90/10, byte-level BPE of vocab_size trained on the train part"
    )
    scenario = "lm_train"
    params = StdlibLMParams

    def data(self, params: StdlibLMParams, seed: int, **inputs: Any) -> LMData:
        return _stdlib_lm_data(
            params.source, params.max_bytes, params.vocab_size, params.hf_split, params.hf_field
        )


def _lm_loss(out: Any, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of every position but the last."""
    import torch.nn.functional as F

    logits = out.logits[:, :-1]
    return F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())


def _tail_mean(values: list[float], head: bool = False) -> float:
    n = max(1, len(values) // 10)
    part = values[:n] if head else values[-n:]
    return sum(part) / len(part)


class LMTrainScenario:
    """Pretrain a method's LM on a token budget, then measure quality and inference cost."""

    name = "lm_train"
    description = (
        "train a causal LM from scratch on a fixed token budget, then held-out loss, bits "
        "per token and perplexity beside training throughput, active params, inference "
        "memory, host→device bytes per token and prefill/decode latency"
    )
    method_protocol = ("build",)
    #: The method contract (``harness show scenario lm_train``): the protocol module's
    #: docstring.
    contract = lm_train_protocol.__doc__
    model_kinds = ("config",)
    columns = ResultColumns(
        quality=(
            QualityColumn("bits_per_token", higher_is_better=False),
            QualityColumn("perplexity", higher_is_better=False),
        ),
        costs=(
            CostColumn("h2d_per_token", "host→device per token", "h2d_bytes_per_token", "bytes"),
            CostColumn("host_bytes", "host memory at inference", "inference_host_bytes", "bytes"),
            CostColumn("active_params", "active params / token", "params_active", "count"),
        ),
        plots=(
            CostPlot("h2d_per_token", "Quality vs host→device traffic",
                     "host→device bytes per generated token", "host→device bytes per token"),
            CostPlot("active_params", "Quality vs active parameters",
                     "parameters active per token", "active parameters"),
        ),
        trains=True,
    )  # fmt: skip

    def run(self, ctx: RunContext) -> None:
        p = ctx.task.params(**ctx.spec.task_params)
        method_params = dict(ctx.spec.params)
        seed = ctx.spec.seed
        model, data = self.pretrain(ctx, ctx.task, p)
        total = sum(t.numel() for t in model.parameters())
        windows = token_windows(data.eval_ids, p.seq_len, p.eval_windows, seed,
                                "the held-out split",
                                "lower eval_windows or seq_len, or raise max_bytes")  # fmt: skip
        with ctx.phase("eval"):
            trained_loss = self.eval_loss(model, windows, p.batch_size, ctx.device)
        active = (
            ctx.method.active_params(model, method_params)
            if hasattr(ctx.method, "active_params")
            else total
        )
        inf, loss = model, trained_loss
        if hasattr(ctx.method, "inference"):
            with ctx.phase("derive_inference"):
                inf = ctx.method.inference(model, method_params, ctx).eval()
            with ctx.phase("eval_inference"):
                loss = self.eval_loss(inf, windows, p.batch_size, ctx.device)
        record = ctx.recorder.record
        # The headline first: the CLI's summary shows a run's first eval quality metric.
        record("eval", "bits_per_token", loss / math.log(2), "bits/token", higher_is_better=False)
        record("eval", "loss", loss, "nats/token", higher_is_better=False)
        record("eval", "perplexity", math.exp(loss), "", higher_is_better=False)
        record("eval", "scored_tokens", windows.numel() - windows.shape[0], "token")
        record("eval", "trained_form_bits_per_token", trained_loss / math.log(2), "bits/token",
               higher_is_better=False)  # fmt: skip
        record("eval", "inference_form_delta_bits", (loss - trained_loss) / math.log(2),
               "bits/token", higher_is_better=False)  # fmt: skip
        record("model", "params_active", active, "count")
        for name, (value, unit) in sorted(getattr(inf, "figures", dict)().items()):
            record("inference", name, value, unit)
        self.measure_inference(ctx, inf, data.eval_ids, p)

    def pretrain(self, ctx: RunContext, task: Any, p: LMTaskParams) -> tuple[Any, LMData]:
        """The run's method's model trained on ``task``'s data within ``p``'s budget (or the
        cached one an equal recipe trained), in eval mode, with its training figures and
        parameter counts recorded; and the task's data (tokenizer, token ids)."""
        import torch

        method_params = dict(ctx.spec.params)
        data = task.data(p, ctx.spec.seed)
        config = ctx.load_model("config")
        tokenizer = data.tokenizer
        config.vocab_size = len(tokenizer)
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, attr, None)
            if value is not None:
                setattr(config, attr, value)

        torch.manual_seed(ctx.spec.seed)
        model = ctx.method.build(config, method_params, ctx)
        ctx.count_parameters(model)

        recipe = self.recipe(ctx, task.name, config, p)
        final = Path(ctx.cache_dir) / "lm_train" / recipe_hash(recipe)
        trained: dict[str, Any] = {}

        def train_into(tmp: Path) -> None:
            info = self.train(ctx, model, data.train_ids, p, float(method_params["lr"]))
            torch.save(model.state_dict(), tmp / "model.pt")
            body = {"recipe": recipe, "recipe_hash": recipe_hash(recipe), **info}
            (tmp / "recipe.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
            trained.update(info)

        build_once(final, train_into)
        cached = not trained
        if cached:
            state = torch.load(final / "model.pt", map_location=ctx.device, weights_only=True)
            model.load_state_dict(state)
            trained = json.loads((final / "recipe.json").read_text())
        self.record_training(ctx, trained, p, cached)
        return model.eval(), data

    def recipe(
        self, ctx: RunContext, task: str, config: Any, p: LMTaskParams
    ) -> dict[str, Any]:
        """What the trained weights depend on (see the module docstring)."""
        config_dict = {k: v for k, v in config.to_dict().items() if k != "transformers_version"}
        params = dict(ctx.spec.params)
        method = (
            dict(ctx.method.trained_as(params))
            if hasattr(ctx.method, "trained_as")
            else {"name": ctx.spec.method, "version": ctx.spec.method_version, "params": params}
        )
        return {
            "trainer": TRAINER_VERSION,
            "config": config_dict,
            "method": method,
            "task": {
                "name": task,
                "params": {k: v for k, v in p.model_dump().items() if k not in MEASURE_ONLY},
            },
            "seed": ctx.spec.seed,
            "device": str(ctx.device).split(":")[0],
        }

    def train(
        self,
        ctx: RunContext,
        model: torch.nn.Module,
        ids: torch.Tensor,
        p: LMTaskParams,
        lr: float,
    ) -> dict[str, Any]:
        """``p.steps`` AdamW steps on random windows of ``ids``; returns the training figures."""
        import torch

        if len(ids) <= p.seq_len:
            raise ValueError(f"the train split has {len(ids)} tokens, fewer than seq_len + 1")
        schedule = {
            "lr": lr,
            "steps": p.steps,
            "optimizer": {"betas": list(BETAS), "weight_decay": WEIGHT_DECAY},
            "schedule": {
                "warmup_steps": max(1, round(p.steps * WARMUP_FRACTION)),
                "final_lr_ratio": FINAL_LR_RATIO,
            },
        }
        optimizer, scheduler = adamw(model, schedule, lambda s: warmup_cosine(s, schedule))
        order = torch.Generator().manual_seed(ctx.spec.seed)
        positions = torch.arange(p.seq_len)
        timer = LoopTimer(ctx.device)
        losses: list[torch.Tensor] = []
        model.train()
        with ctx.phase("train"):
            started = time.perf_counter()
            for _ in range(p.steps):
                starts = torch.randint(0, len(ids) - p.seq_len, (p.batch_size, 1), generator=order)
                x = ids[starts + positions].to(ctx.device)
                with timer.step():
                    out = model(input_ids=x)
                    loss = _lm_loss(out, x)
                    aux = getattr(out, "aux_loss", None)
                    total = loss if aux is None else loss + aux
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                    optimizer.step()
                    scheduler.step()
                losses.append(loss.detach())
            samples = timer.samples_ms()
            seconds = time.perf_counter() - started
        curve = [float(v) for v in losses]
        return {"losses": curve, "step_ms": samples, "train_seconds": seconds}

    def record_training(
        self, ctx: RunContext, info: dict[str, Any], p: LMTaskParams, cached: bool
    ) -> None:
        """Record the training figures, whether this run trained or the cache held them."""
        record = ctx.recorder.record
        samples, losses = info["step_ms"], info["losses"]
        steady = samples[1:] or samples
        stats = record_latency(ctx.recorder, "train_step", samples, summarize(steady))
        record("train_step", "latency", samples[0], "ms", stat="first")
        tokens_per_step = p.batch_size * p.seq_len
        record("train_step", "throughput", tokens_per_step / (stats["median"] / 1e3), "token/s",
               stat="median")  # fmt: skip
        record("train", "steps", len(losses), "count")
        record("train", "tokens", len(losses) * tokens_per_step, "token")
        record("train", "initial_loss", _tail_mean(losses, head=True), "nats")
        record("train", "final_loss", _tail_mean(losses), "nats")
        if cached:  # the train phase did not run here: its seconds come from the cache
            record("train", "seconds", info["train_seconds"], "s")
        record("train", "cached", 1 if cached else 0, "flag")
        ctx.recorder.record_samples("train", "loss", "nats", losses)

    @staticmethod
    def eval_loss(
        model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: str
    ) -> float:
        """Mean next-token loss (nats) over every window's tokens but the first."""
        return total_nll(model, windows, batch_size, device) / (windows.numel() - len(windows))

    def measure_inference(
        self, ctx: RunContext, inf: Any, ids: torch.Tensor, p: LMTaskParams
    ) -> None:
        """Memory, host→device traffic and prefill/decode latency of the inference form."""
        import torch
        from transformers import DynamicCache

        record = ctx.recorder.record
        device_bytes = inf.device_bytes() if hasattr(inf, "device_bytes") else None
        if device_bytes is None:
            device_bytes = parameter_bytes(inf)
        host_bytes = inf.host_bytes() if hasattr(inf, "host_bytes") else 0
        record("inference", "inference_device_bytes", device_bytes, "bytes")
        record("inference", "inference_host_bytes", host_bytes, "bytes")

        generator = torch.Generator().manual_seed(ctx.spec.seed + 1)
        n = p.new_tokens
        for b in p.batch_sizes:
            if len(ids) <= p.prompt_len:
                raise ValueError(f"the held-out split has fewer than {p.prompt_len + 1} tokens")
            starts = torch.randint(0, len(ids) - p.prompt_len, (b, 1), generator=generator)
            prompt = ids[starts + torch.arange(p.prompt_len)].to(ctx.device)

            def prefill(prompt: torch.Tensor = prompt) -> Any:
                with torch.inference_mode():
                    cache = DynamicCache()
                    out = inf(input_ids=prompt, past_key_values=cache, use_cache=True)
                return out, cache

            ctx.time(f"prefill_b{b}", prefill, items=b * p.prompt_len, item_unit="token")
            out, prefilled = prefill()
            first = out.logits[:, -1].argmax(-1, keepdim=True)

            def decode(prefilled: Any = prefilled, first: torch.Tensor = first) -> None:
                with torch.inference_mode():
                    cache = copy.deepcopy(prefilled)
                    token = first
                    for _ in range(n):
                        step = inf(input_ids=token, past_key_values=cache, use_cache=True)
                        token = step.logits[:, -1].argmax(-1, keepdim=True)

            phase = f"decode_b{b}"
            timing = ctx.time(phase, decode, items=b * n, item_unit="token")
            record(phase, "ms_per_token", timing.stats["median"] / n, "ms", stat="median")
            self.record_counters(ctx, inf, decode, phase, b * n)

    @staticmethod
    def record_counters(ctx: RunContext, inf: Any, decode: Any, phase: str, tokens: int) -> None:
        """The method's counters over one decode call; ``h2d_bytes`` per generated token."""
        record = ctx.recorder.record
        if not (hasattr(inf, "counters") and hasattr(inf, "reset_counters")):
            ctx.recorder.unavailable(phase, "h2d_bytes_per_token", "bytes",
                                     "method reports no host→device counter")  # fmt: skip
            return
        inf.reset_counters()
        decode()
        counters = inf.counters()
        for name, (value, unit) in sorted(counters.items()):
            record(phase, name, value, unit)
        if "h2d_bytes" in counters:
            record(phase, "h2d_bytes_per_token", counters["h2d_bytes"][0] / tokens, "bytes")
            # per timed call: the core reads it against the host-to-device peak
            record(phase, "bytes_moved", counters["h2d_bytes"][0], "bytes", stat="h2d")
        else:
            ctx.recorder.unavailable(phase, "h2d_bytes_per_token", "bytes",
                                     "the method's counters have no h2d_bytes")  # fmt: skip
