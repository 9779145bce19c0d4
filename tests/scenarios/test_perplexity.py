from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from harness_plugins.weight_compression import RTN, Dense, Magnitude
from transformers import ByT5Tokenizer, LlamaConfig, LlamaForCausalLM

from harness.api import (
    Method,
    RunContext,
    Scenario,
    Task,
)
from harness.scenarios.perplexity import PerplexityScenario, StdlibText

sys.path.insert(0, str(Path(__file__).parent))
from fake_context import FakeContext


def run(model_dir: str, method: Any, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
    ctx = FakeContext(model_dir, method, StdlibText(), params, **kw)
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
    assert isinstance(FakeContext(random_lm_dir, Dense(), StdlibText()), RunContext)
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


def test_a_worker_tokenizes_the_same_text_once() -> None:
    from harness.scenarios import perplexity

    class Counting:
        """A tokenizer that counts its calls: one id per character."""

        name_or_path = "counting"
        calls = 0

        def __len__(self) -> int:
            return 256

        def __call__(self, text: str, **kwargs: object) -> dict[str, list[int]]:
            Counting.calls += 1
            return {"input_ids": [ord(c) % 256 for c in text]}

    text = "held-out text " * 50
    first = perplexity.token_ids(Counting(), text)
    again = perplexity.token_ids(Counting(), text)  # a new run's freshly loaded tokenizer
    other = perplexity.token_ids(Counting(), text + "!")
    assert Counting.calls == 2
    assert torch.equal(first, again) and len(other) == len(text) + 1
    for i in range(perplexity._TOKEN_IDS_KEPT + 1):
        perplexity.token_ids(Counting(), f"text {i}")
    assert len(perplexity._TOKEN_IDS) == perplexity._TOKEN_IDS_KEPT  # bounded
