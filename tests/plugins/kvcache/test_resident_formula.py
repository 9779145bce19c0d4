"""The resident bytes the ``generate`` scenario records for kivi and specache on the built-in
retrieval model in bfloat16 (as suites/kvcache-needle.yaml runs it) are their docstrings'
formulas — allocated capacity included — computed here from the model's shape, the episode's
lengths and the methods' params alone."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from harness_plugins.kvcache.kivi import KIVI
from harness_plugins.kvcache.specache import SpeCache
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from harness.api import MeasureSettings, PhaseResult, Recorder
from harness.models.tiny_llama_retrieval import SHIPPED_DIR
from harness.scenarios.generate import GenerateScenario, Needle

TASK = {"context_len": 256, "depth_bins": 1, "per_bin": 1}  # one episode
SUITE_KIVI = {"group_size": 32, "residual": 48}
SUITE_SPECACHE = {"group_size": 32, "residual": 16, "topk": 16}


class BuiltinContext:
    """What the generate scenario reads of a run context: the shipped model in bfloat16."""

    device = "cpu"

    def __init__(self, method: Any, params: Mapping[str, Any]) -> None:
        self.method, self.task, self.recorder = method, Needle(), Recorder()
        self.spec = SimpleNamespace(
            params=dict(params), task_params=TASK, seed=0, measure=MeasureSettings()
        )

    def load_model(self, kind: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(SHIPPED_DIR, dtype=torch.bfloat16).eval()

    def load_tokenizer(self) -> Any:
        return AutoTokenizer.from_pretrained(SHIPPED_DIR)

    def count_parameters(self, model: Any) -> None:
        pass

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseResult]:
        yield PhaseResult(name)


def kivi_bytes(seen: int, bits: int, group_size: int, residual: int, dim: int, s: int) -> int:
    """kivi's docstring formula, per layer and KV head."""
    g, codes = group_size, math.ceil(dim * bits / 8)
    tk = g * (max(seen - residual, 0) // g)
    tv = max(seen - residual, 0)
    keys = tk * codes + (tk // g) * dim * 4 + (seen - tk) * dim * s
    values = tv * (codes + math.ceil(dim / g) * 4) + (seen - tv) * dim * s
    return keys + values


def specache_bytes(
    flushes: list[int], bits: int, group_size: int, residual: int, topk: int, dim: int, s: int
) -> int:
    """specache's docstring formula, per layer and KV head, after persisting up to each of
    ``flushes`` tokens in turn (the last is ``T``), with ``topk`` rows fetched."""
    g = group_size
    capacity = 0
    for seen in flushes:
        length = g * (max(seen - residual, 0) // g)
        if length > capacity:
            capacity = g * math.ceil((length + max(4 * g, length // 8)) / g)
    quantized = g * (max(flushes[-1] - residual, 0) // g)
    if bits == 16:
        lowbit = 2 * capacity * dim * 2
    else:
        codes = math.ceil(dim * bits / 8)
        lowbit = 2 * capacity * codes + 4 * (capacity // g) * dim + 4 * capacity * math.ceil(
            dim / g
        )
    window = 2 * (flushes[-1] - quantized) * dim * s
    return lowbit + window + 2 * topk * dim * s + 8 * topk


@pytest.fixture(scope="module")
def episode() -> Any:
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    (only,) = Needle().data(Needle.params(**TASK), 0, tokenizer=tokenizer, config=None)
    return only


@pytest.fixture(scope="module")
def shape() -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of the built-in model."""
    config = AutoConfig.from_pretrained(SHIPPED_DIR)
    return config.num_hidden_layers, config.num_key_value_heads, config.head_dim


def recorded(method: Any, params: Mapping[str, Any]) -> Recorder:
    ctx = BuiltinContext(method, params)
    GenerateScenario().run(ctx)
    return ctx.recorder


@pytest.mark.parametrize("bits", [2, 1])
def test_kivi_records_its_formula(bits, episode, shape) -> None:
    layers, heads, dim = shape
    record = recorded(KIVI(), {"bits": bits, **SUITE_KIVI})
    seen = len(episode.context_ids) + len(episode.question_ids) + len(episode.answer_ids) - 1
    formula = layers * heads * kivi_bytes(seen, bits, dim=dim, s=2, **SUITE_KIVI)
    assert record.value("kv", "resident_bytes") == pytest.approx(formula, rel=0.01)
    full = 2 * layers * heads * dim * seen * 2
    assert record.value("kv", "full_cache_bytes") == full
    ratio = next(r for r in record.metrics if r.metric == "resident_ratio")
    assert ratio.value == pytest.approx(formula / full, rel=0.01)
    assert ratio.unit == "× bf16 full cache"


@pytest.mark.parametrize("bits", [2, 1, 16])
def test_specache_records_its_formula_capacity_included(bits, episode, shape) -> None:
    layers, heads, dim = shape
    record = recorded(SpeCache(), {"bits": bits, **SUITE_SPECACHE})
    context, question = len(episode.context_ids), len(episode.question_ids)
    # Persisted and flushed: the context, the question, then each fed-back token.
    flushes = [context, *range(context + question, context + question + len(episode.answer_ids))]
    assert context - SUITE_SPECACHE["residual"] > SUITE_SPECACHE["topk"]  # topk rows fetched
    formula = layers * heads * specache_bytes(flushes, bits, dim=dim, s=2, **SUITE_SPECACHE)
    assert record.value("kv", "resident_bytes") == pytest.approx(formula, rel=0.01)
    full = 2 * layers * heads * dim * flushes[-1] * 2
    assert record.value("kv", "resident_ratio") == pytest.approx(formula / full, rel=0.01)
