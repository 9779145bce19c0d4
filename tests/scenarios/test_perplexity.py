from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from harness_plugins.weight_compression import RTN, Dense, Magnitude
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

from harness.api import (
    MeasureSettings,
    Method,
    PhaseResult,
    Recorder,
    RunContext,
    RunSpec,
    Scenario,
    Task,
)
from harness.models.sources import HFSource
from harness.scenarios.perplexity import PerplexityScenario, StdlibText, StdlibTextParams


class FakeContext:
    """Just enough of :class:`harness.api.RunContext` to run the scenario without the core:
    phases and timing only note what ran; loading uses the real ``hf`` source code."""

    def __init__(
        self,
        model_dir: str,
        method: Any,
        params: Mapping[str, Any] | None = None,
        task_params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.model_dir = model_dir
        self.recorder = Recorder()
        self.device = "cpu"
        self.method = method
        self.task = StdlibText()
        self.components = None
        self.cache_dir = ""
        self.phases: list[str] = []
        self.timed: dict[str, tuple[float | None, str, int]] = {}
        self.spec = RunSpec(
            run_key="test",
            suite="test",
            scenario="perplexity",
            model={"ref": f"hf:{model_dir}"},
            task="stdlib-text",
            task_params=StdlibTextParams(**(task_params or {})).model_dump(),
            method=method.name,
            method_version=method.version,
            method_plugin="weight-compression",
            params=method.params(**(params or {})).model_dump(),
            seed=seed,
            device="cpu",
            measure=MeasureSettings(),
            timeout_s=None,
            config={},
        )

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[PhaseResult]:
        self.phases.append(name)
        yield PhaseResult(name)

    def time(
        self,
        phase: str,
        fn: Callable[[], Any],
        *,
        items: float | None = None,
        item_unit: str = "item",
    ) -> None:
        calls = 3
        with self.phase(phase):
            for _ in range(calls):
                fn()
        self.timed[phase] = (items, item_unit, calls)

    def load_model(self, kind: str) -> Any:
        return HFSource().load(self.model_dir, kind, {}, self)

    def load_tokenizer(self) -> Any:
        return HFSource().load_tokenizer(self.model_dir, {}, self)

    def count_parameters(self, model: Any, phase: str = "model") -> tuple[int, int]:
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.recorder.record(phase, "total_params", total, "count")
        self.recorder.record(phase, "trainable_params", trainable, "count")
        return total, trainable


def run(model_dir: str, method: Any, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    ctx = FakeContext(model_dir, method, params, **kw)
    PerplexityScenario().run(ctx)
    return ctx


@pytest.fixture(scope="module")
def random_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("random-lm")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    ByT5Tokenizer(extra_ids=0).save_pretrained(path)
    return str(path)


def test_components_satisfy_the_protocols(random_lm_dir: str) -> None:
    scenario = PerplexityScenario()
    assert isinstance(scenario, Scenario)
    assert isinstance(StdlibText(), Task)
    assert isinstance(FakeContext(random_lm_dir, Dense()), RunContext)
    for method in (Dense(), RTN(), Magnitude()):
        assert isinstance(method, Method)
        assert all(callable(getattr(method, a)) for a in scenario.method_protocol)
    assert StdlibText().params().model_dump() == {
        "seq_len": 128, "windows": 16, "batch_size": 8, "source": "stdlib", "max_bytes": 1 << 20,
    }  # fmt: skip


def test_records_quality_storage_and_latency(random_lm_dir: str) -> None:
    ctx = run(random_lm_dir, Dense())
    value = ctx.recorder.value
    assert ctx.phases == ["apply", "eval", "forward"]
    assert ctx.timed["forward"] == (8 * 128, "token", 3)
    total = value("model", "total_params")
    assert value("model", "dense_weight_bytes") == total * 4
    assert value("model", "storage_bytes") == total * 4
    assert value("model", "compression_ratio") == 1.0
    assert value("eval", "scored_tokens") == 16 * 127
    perplexity = value("eval", "perplexity")
    assert 50 < perplexity < 600  # an untrained model: near uniform over 259 tokens
    # One token per byte: bits per byte is log2(perplexity) up to characters cut at a
    # window's edge, whose stray bytes decode to nothing.
    assert value("eval", "bits_per_byte") == pytest.approx(math.log2(perplexity), rel=0.02)
    rows = {(r.phase, r.metric): r for r in ctx.recorder.metrics}
    assert rows["eval", "perplexity"].higher_is_better is False
    assert rows["eval", "bits_per_byte"].higher_is_better is False
    assert rows["model", "storage_bytes"].unit == "bytes"


def test_windows_follow_the_seed(random_lm_dir: str) -> None:
    def perplexity(seed: int) -> float:
        ctx = run(random_lm_dir, Dense(), task_params={"windows": 4, "seq_len": 64}, seed=seed)
        return ctx.recorder.value("eval", "perplexity")

    assert perplexity(0) == perplexity(0)
    assert perplexity(0) != perplexity(1)


def test_too_little_text_is_a_clear_error(random_lm_dir: str, tmp_path: Path) -> None:
    corpus = tmp_path / "small.txt"
    corpus.write_text("x = 1\n" * 100)  # 60 test bytes: no window of 128
    with pytest.raises(ValueError, match="only 0 windows of 128"):
        run(random_lm_dir, Dense(), task_params={"source": str(corpus)})


def test_compression_trades_quality_for_bytes_on_the_trained_model(tiny_byte_lm_dir: str) -> None:
    results = {
        label: run(tiny_byte_lm_dir, method, params).recorder
        for label, method, params in [
            ("dense", Dense(), {}),
            ("rtn8", RTN(), {"bits": 8}),
            ("rtn4", RTN(), {"bits": 4}),
            ("rtn2", RTN(), {"bits": 2}),
            ("magnitude", Magnitude(), {"sparsity": 0.5}),
        ]
    }
    bpb = {k: r.value("eval", "bits_per_byte") for k, r in results.items()}
    stored = {k: r.value("model", "storage_bytes") for k, r in results.items()}
    assert bpb["dense"] < 3.2
    assert bpb["rtn8"] == pytest.approx(bpb["dense"], abs=0.01)
    assert bpb["dense"] - 0.01 <= bpb["rtn8"] < bpb["rtn4"] < bpb["rtn2"]
    assert bpb["rtn2"] > bpb["dense"] + 0.05
    assert bpb["magnitude"] > bpb["dense"]
    assert stored["rtn2"] < stored["rtn4"] < stored["rtn8"] < stored["magnitude"] < stored["dense"]
    assert results["rtn4"].value("model", "compression_ratio") > 3
