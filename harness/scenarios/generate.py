"""The ``generate`` scenario: LLM prefill and decode through a method's KV cache.

Every generate call gets a fresh cache from the method (``make_cache``, see
:mod:`harness.scenarios.kv_protocol`): the context is prefilled on its own, then the
question is fed and the answer decoded greedily, by the scenario's :class:`GreedyDecoder` or
the method's own decoder. Quality and cost come from the same calls:

* the ``eval`` phase runs every episode of the task: exact match (``eval``, overall and per
  depth bin as stats ``depth_NN``); ``latency`` samples and statistics and median
  ``throughput`` (tokens/s) of ``prefill`` (one sample per episode), ``first_token`` (the
  question and the first step) and ``decode`` (one sample per later token: ms/token);
  ``kv`` bytes resident on the device (what the cache allocates there), held in host memory,
  and those of a full cache of the same tokens at the model's dtype, and ``resident_ratio``,
  the first over the last, whose unit names that reference (``× bf16 full cache``); the
  method's own counters (``decode``), e.g. host→device bytes per token;
* then one more call on the first episode with every probe around its ``prefill`` and
  ``decode`` halves: peak VRAM (or host RSS) and energy per phase, energy per decoded token.

One untimed warm-up call runs first (lazy initialisation, kernel compilation); its wall time
is recorded as ``warmup/seconds``. Decode latency samples are checked against the suite's
``measure`` rules (``min_repeats``, ``min_seconds``, ``max_cv``).

Task protocol: ``data(params, seed, tokenizer=..., config=...) -> list[Episode]`` (an
:class:`harness.data.retrieval.Episode` per call; ``tokenizer`` is the model's, ``None`` for
cost-only tasks, and ``config`` the model's config) and ``scored`` (False for cost-only tasks,
whose episodes have no answer and generate ``new_tokens`` tokens).
"""

from __future__ import annotations

import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

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
from harness.probes.bandwidth import weight_bytes_per_token
from harness.probes.timing import TimingResult, record_latency
from harness.scenarios import kv_protocol
from harness.scenarios.kv_protocol import (
    Decoder,
    GreedyDecoder,
    cache_counters,
    kv_full_bytes,
    resident_kv_bytes,
)

if TYPE_CHECKING:
    import torch

    from harness.data.retrieval import Episode

__all__ = [
    "DecodeThroughput",
    "DecodeThroughputParams",
    "GenerateScenario",
    "KVRecall",
    "KVRecallParams",
    "Needle",
    "NeedleParams",
    "Passkey",
    "RetrievalParams",
]


class RetrievalParams(Params):
    """What every retrieval task's params have: one context length, depth-stratified episodes.

    ``depth_bins`` bins of equal width over the context, ``per_bin`` episodes in each, the
    queried needle placed uniformly inside its bin. ``template`` ``markers`` is the format
    ``builtin:tiny-llama-retrieval`` is trained on; ``natural`` is plain English for
    instruction-tuned LLMs loaded with ``hf``.
    """

    context_len: int = Field(1024, ge=32)
    """Context length in tokens (bos, haystack and needles; the question comes after it)."""
    depth_bins: int = Field(10, ge=1)
    """Equal-width depth bins over the context; exact match is also reported per bin."""
    per_bin: int = Field(5, ge=1)
    """Episodes per depth bin (``depth_bins × per_bin`` episodes in all)."""
    template: Literal["markers", "natural"] = "markers"
    """Prompt format: ``markers`` (tiny-llama-retrieval's tokens) or ``natural`` English."""
    digits: int = Field(5, ge=1, le=32)
    """Random digits in each hidden value (the answer to retrieve)."""


class NeedleParams(RetrievalParams):
    """``haystack`` is ``stdlib`` (held-out standard-library source), a UTF-8 text file, or
    ``hf:ID`` — a datasets dataset (hub id or local dir) whose ``haystack_field`` column of
    ``haystack_split`` is joined into one text. For stdlib and files, ``haystack_split``
    ``test`` is the part held out from training (``train`` the rest)."""

    haystack: str = "stdlib"
    """Haystack text: ``stdlib`` source, a UTF-8 text file path, or ``hf:ID`` (a dataset)."""
    haystack_split: str = "test"
    """Split: ``test`` (held out from training) or ``train``; any split name for ``hf:``."""
    haystack_field: str = "text"
    """Column of an ``hf:`` dataset whose rows are joined into the haystack; else unused."""
    max_bytes: int = Field(1 << 21, gt=0)
    """Most bytes of haystack text read and tokenized (shorter haystacks repeat)."""


class KVRecallParams(NeedleParams):
    """``pairs`` key→value needles at independent depths; the question asks for one."""

    pairs: int = Field(4, ge=1, le=8)
    """Key→value needles in the context, each at its own depth; the question asks for one."""


class DecodeThroughputParams(Params):
    """A random prompt of ``prompt_len`` tokens, then ``new_tokens`` greedy tokens, ``repeats``
    times (a fresh cache each)."""

    prompt_len: int = Field(1024, ge=2)
    """Random prompt length in tokens (the last one is fed as the question)."""
    new_tokens: int = Field(64, ge=2)
    """Greedy tokens decoded after the prompt, per episode (no early stop at EOS)."""
    repeats: int = Field(3, ge=1)
    """Episodes: seeded random prompts, each with a fresh cache."""


def _episode_rng(task: str, params: Params, seed: int) -> random.Random:
    """One stream per (task, params, seed): the same run always sees the same episodes."""
    return random.Random(f"{task}|{params.model_dump_json()}|{seed}")


def _haystack(params: NeedleParams, tokenizer: Any) -> torch.Tensor:
    """The token stream a needle-style task cuts its haystacks from."""
    from harness.data.retrieval import haystack_ids

    if not params.haystack.startswith("hf:"):
        return haystack_ids(tokenizer, params.haystack, params.haystack_split, params.max_bytes)
    import torch

    try:
        import datasets
    except ImportError as exc:
        raise Unsupported(
            "haystack 'hf:...' needs the datasets package (pip install datasets)"
        ) from exc
    name = params.haystack[3:]
    data = datasets.load_dataset(name, split=params.haystack_split)
    if params.haystack_field not in data.column_names:
        raise ValueError(
            f"haystack dataset {name} has no column '{params.haystack_field}' "
            f"(columns: {', '.join(data.column_names)})"
        )
    text = "\n".join(str(t) for t in data[params.haystack_field])
    text = text.encode("utf-8")[: params.max_bytes].decode("utf-8", errors="ignore")
    # Special-token text inside the haystack stays text, as for the other sources.
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


class _RetrievalTask:
    """Shared episode drawing of the retrieval tasks (``kind`` says which)."""

    scenario = "generate"
    scored = True
    kind: str
    name: str

    def _hay(self, params: Any, tokenizer: Any) -> torch.Tensor:
        return _haystack(params, tokenizer)

    def data(
        self, params: Any, seed: int, *, tokenizer: Any, config: Any, **inputs: Any
    ) -> list[Episode]:
        from harness.data.retrieval import make_episode, stratified_depths

        if tokenizer is None:
            raise Unsupported(f"task '{self.name}' needs the model's tokenizer")
        rng = _episode_rng(self.name, params, seed)
        hay = self._hay(params, tokenizer)
        extra = {"pairs": params.pairs} if hasattr(params, "pairs") else {}
        return [
            make_episode(
                self.kind,
                tokenizer,
                hay,
                params.context_len,
                rng,
                depth=depth,
                template=params.template,
                digits=params.digits,
                **extra,
            )
            for _ in range(params.per_bin)
            for depth in stratified_depths(params.depth_bins, rng)
        ]


class Needle(_RetrievalTask):
    """Needle in a haystack of real text (held-out stdlib source by default)."""

    name = "needle"
    kind = "needle"
    description = (
        "needle-in-a-haystack: a digit key hidden at stratified depths in real text "
        "(stdlib source, a text file or an HF dataset); exact match of the retrieved key"
    )
    params = NeedleParams


class Passkey(_RetrievalTask):
    """The passkey test: a key hidden in repeated filler sentences."""

    name = "passkey"
    kind = "passkey"
    description = (
        "passkey retrieval: a digit key hidden at stratified depths in repeated filler "
        "sentences; exact match"
    )
    params = RetrievalParams

    def _hay(self, params: Any, tokenizer: Any) -> torch.Tensor:
        from harness.data.retrieval import haystack_ids

        return haystack_ids(tokenizer, "filler")


class KVRecall(_RetrievalTask):
    """Several key→value pairs in the haystack; the question names one key."""

    name = "kv-recall"
    kind = "kv-recall"
    description = (
        "key-value recall: several key→digits pairs in real text, the question asks for "
        "one key's value; exact match"
    )
    params = KVRecallParams


class DecodeThroughput:
    """Cost only: a seeded random prompt, then a fixed number of greedy tokens."""

    name = "decode-throughput"
    description = (
        "cost only: random prompt of prompt_len tokens, new_tokens greedy tokens, repeated "
        "with a fresh cache (prefill time, decode ms/token, KV bytes)"
    )
    scenario = "generate"
    scored = False
    params = DecodeThroughputParams

    def data(
        self, params: Any, seed: int, *, tokenizer: Any, config: Any, **inputs: Any
    ) -> list[Episode]:
        import torch

        from harness.data.retrieval import Episode

        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        generator = torch.Generator().manual_seed(seed)
        episodes = []
        for _ in range(params.repeats):
            ids = torch.randint(0, text.vocab_size, (params.prompt_len,), generator=generator)
            episodes.append(
                Episode(
                    context_ids=ids[:-1].tolist(),
                    question_ids=ids[-1:].tolist(),
                    answer="",
                    answer_ids=[0] * params.new_tokens,
                    depth=0.0,
                )
            )
        return episodes


class _TokenClock:
    """Timestamps of generated tokens; synchronizes CUDA first so a stamp means "done"."""

    def __init__(self, device: str) -> None:
        self.stamps: list[float] = []
        self._sync: Callable[[], None] = lambda: None
        if device.startswith("cuda"):
            import torch

            self._sync = lambda: torch.cuda.synchronize(device)

    def start(self) -> None:
        self._sync()
        self.stamps = [time.perf_counter()]

    def __call__(self) -> None:
        self._sync()
        self.stamps.append(time.perf_counter())


class GenerateScenario:
    """Prefill a context and decode an answer through a method's KV cache, for every episode."""

    name = "generate"
    description = (
        "LLM prefill and greedy decode through a method's KV cache: task score by depth, "
        "prefill time, decode ms/token, KV bytes on device and host, per-phase memory and energy"
    )
    method_protocol = ("make_cache",)
    #: The method contract (``harness show scenario generate``): the protocol module's docstring.
    contract = kv_protocol.__doc__
    model_kinds = ("causal-lm",)
    columns = ResultColumns(
        quality=(QualityColumn("exact_match", higher_is_better=True, breakdown="depth_"),),
        # The memory KV-cache methods are about: what stays on the compute device, in bytes
        # and as a share of a full cache, whose recorded unit names the full cache's dtype.
        costs=(CostColumn("kv_resident", "KV resident", "resident_bytes", "bytes"),
               CostColumn("kv_share", "KV resident, share of full cache", "resident_ratio",
                          "× <dtype> full cache")),
        plots=(CostPlot("kv_resident", "Quality vs KV resident",
                        "KV bytes resident on the device", "KV bytes"),),
        trains=False,
    )

    def run(self, ctx: RunContext) -> None:
        import torch

        task = ctx.task
        task_params = task.params(**ctx.spec.task_params)
        params = dict(ctx.spec.params)
        recorder = ctx.recorder
        torch.manual_seed(ctx.spec.seed)

        model = ctx.load_model("causal-lm").requires_grad_(False)  # nothing trains here
        ctx.count_parameters(model)
        # Cost-only tasks need no tokenizer, so they run on config-only (hf-config) models.
        tokenizer = ctx.load_tokenizer() if task.scored else None
        episodes = task.data(
            task_params, ctx.spec.seed, tokenizer=tokenizer, config=model.config
        )
        element_size = model.dtype.itemsize
        reference = f"× {_dtype_name(model.dtype)} full cache"
        clock = _TokenClock(ctx.device)

        def new_decoder() -> tuple[Decoder, Any]:
            cache = ctx.method.make_cache(model, params, ctx)
            if hasattr(ctx.method, "make_decoder"):
                return ctx.method.make_decoder(model, cache, params, ctx), cache
            return GreedyDecoder(model, cache), cache

        def ids(tokens: Sequence[int]) -> torch.Tensor:
            return torch.tensor([list(tokens)], device=ctx.device)

        # Warm-up: lazy initialisation and compilation stay out of the samples.
        first = episodes[0]
        cold_start = time.perf_counter()
        decoder, _ = new_decoder()
        decoder.prefill(ids(first.context_ids))
        decoder.decode(ids(first.question_ids), len(first.answer_ids), clock)
        clock.start()
        recorder.record("warmup", "seconds", time.perf_counter() - cold_start, "s")

        prefill_ms: list[float] = []
        first_token_ms: list[float] = []
        token_ms: list[float] = []
        hits: dict[str, list[int]] = {}
        totals: dict[str, list[Any]] = {}
        resident = host = full = 0
        with ctx.phase("eval"):
            for episode in episodes:
                decoder, cache = new_decoder()
                context = ids(episode.context_ids)
                clock.start()
                decoder.prefill(context)
                clock()
                prefill_ms.append((clock.stamps[1] - clock.stamps[0]) * 1e3)
                clock.start()
                tokens = decoder.decode(ids(episode.question_ids), len(episode.answer_ids), clock)
                stamps = clock.stamps
                first_token_ms.append((stamps[1] - stamps[0]) * 1e3)
                token_ms.extend((b - a) * 1e3 for a, b in itertools.pairwise(stamps[1:]))
                if task.scored:
                    text = tokenizer.decode(tokens, skip_special_tokens=True)
                    correct = int(text.strip().startswith(episode.answer))
                    hits.setdefault(_depth_bin(episode.depth, task_params), []).append(correct)
                seen = len(episode.context_ids) + len(episode.question_ids) + len(tokens) - 1
                resident = max(resident, resident_kv_bytes(cache, ctx.device))
                host = max(host, int(cache.host_bytes()) if hasattr(cache, "host_bytes") else 0)
                full = max(full, kv_full_bytes(model.config, seen, element_size))
                for name, (value, unit) in cache_counters(cache).items():
                    totals.setdefault(name, [0.0, unit])[0] += value
                del decoder, cache

        if task.scored:
            _record_scores(recorder, hits)
        generated = len(token_ms) + len(first_token_ms)
        context_tokens = sum(len(e.context_ids) for e in episodes) / len(episodes)
        _record_latency(recorder, "prefill", prefill_ms, context_tokens)
        _record_latency(recorder, "first_token", first_token_ms, None)
        timing = _record_latency(recorder, "decode", token_ms, 1)
        for reason in timing.invalid_reasons(ctx.spec.measure):
            recorder.mark_invalid(f"decode: {reason}", timing=True)

        recorder.record("kv", "resident_bytes", resident, "bytes")
        recorder.record("kv", "host_bytes", host, "bytes")
        recorder.record("kv", "full_cache_bytes", full, "bytes")
        recorder.record("kv", "resident_ratio", resident / full if full else None, reference)
        for name, (value, unit) in totals.items():
            recorder.record("decode", name, value, unit)
            recorder.record("decode", f"{name}_per_token", value / generated, f"{unit}/token")
        # What one decode step reads, per timed token: the weights and the resident cache
        # (the core reads it against the memory's peak), and what it copies in from the host.
        recorder.record("decode", "bytes_moved", weight_bytes_per_token(model) + resident,
                        "bytes", stat="memory")
        if "h2d_bytes" in totals:
            recorder.record("decode", "bytes_moved", totals["h2d_bytes"][0] / generated, "bytes",
                            stat="h2d")
        if totals and hasattr(ctx.method, "derived_metrics"):
            derived = ctx.method.derived_metrics({k: v for k, (v, _) in totals.items()})
            for name, (value, unit) in derived.items():
                recorder.record("decode", name, value, unit)

        self._probed_call(ctx, new_decoder, ids, first, clock)

    @staticmethod
    def _probed_call(
        ctx: RunContext,
        new_decoder: Callable[[], tuple[Decoder, Any]],
        ids: Callable[[Sequence[int]], torch.Tensor],
        episode: Episode,
        clock: _TokenClock,
    ) -> None:
        """One call with every probe around prefill and decode: memory and energy per phase."""
        decoder, _ = new_decoder()
        with ctx.phase("prefill"):
            decoder.prefill(ids(episode.context_ids))
        clock.start()
        with ctx.phase("decode") as probed:
            decoder.decode(ids(episode.question_ids), len(episode.answer_ids), clock)
        energy = probed.metrics.get("energy")
        if energy is None:
            reason = "no energy reading for this phase (see 'energy')"
            ctx.recorder.unavailable("decode", "energy_per_item", "J/token", reason)
        else:
            per_token = energy / len(episode.answer_ids)
            ctx.recorder.record("decode", "energy_per_item", per_token, "J/token")


def _dtype_name(dtype: torch.dtype) -> str:
    """``bf16``, ``fp16``, ``fp32``…: the full cache's precision as a reader names it."""
    return str(dtype).removeprefix("torch.").replace("bfloat", "bf").replace("float", "fp")


def _depth_bin(depth: float, params: RetrievalParams) -> str:
    index = min(int(depth * params.depth_bins), params.depth_bins - 1)
    return f"depth_{index:02d}"


def _record_scores(recorder: Any, hits: dict[str, list[int]]) -> None:
    """Exact match overall (``value``) and per depth bin (stat ``depth_NN``)."""
    every = [h for bin_hits in hits.values() for h in bin_hits]
    recorder.record("eval", "exact_match", sum(every) / len(every), "", higher_is_better=True)
    recorder.record("eval", "episodes", len(every), "count")
    for key in sorted(hits):
        recorder.record("eval", "exact_match", sum(hits[key]) / len(hits[key]), "", stat=key)


def _record_latency(
    recorder: Any, phase: str, samples_ms: list[float], tokens_per_sample: float | None
) -> TimingResult:
    """``latency`` statistics and raw samples of ``phase``, and, given the tokens each sample
    processed, its median ``throughput`` in tokens/s — the names the core's timed loops use,
    so leaderboards show them."""
    stats = record_latency(recorder, phase, samples_ms)
    if tokens_per_sample and samples_ms and stats["median"] > 0:
        rate = tokens_per_sample / (stats["median"] / 1e3)
        recorder.record(phase, "throughput", rate, "token/s", stat="median")
    return TimingResult(tuple(samples_ms), math.nan, 1, stats, "perf_counter")
