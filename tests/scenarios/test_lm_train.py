"""The ``lm_train`` scenario: training on a token budget, the cache, eval and inference costs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.api import Recorder
from harness.scenarios.lm_train import LMTrainScenario, StdlibLM, corpus_text
from harness.scenarios.lm_train_protocol import LMTrainParams
from tests.scenarios.fake_context import FakeContext

CONFIG = {
    "vocab_size": 8, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}  # fmt: skip
TASK = {
    "max_bytes": 60_000, "vocab_size": 320, "steps": 20, "seq_len": 32, "batch_size": 8,
    "eval_windows": 8, "prompt_len": 8, "new_tokens": 4, "batch_sizes": [1, 2],
}  # fmt: skip


class DenseParams(LMTrainParams):
    pass


class Dense:
    """A plain Llama of the config's shape."""

    name = "dense-test"
    version = "1"
    description = "test dense LM"
    scenarios = ("lm_train",)
    params = DenseParams

    def build(self, config: Any, params: Any, ctx: Any) -> torch.nn.Module:
        return LlamaForCausalLM(config).to(ctx.device)


class Counting(torch.nn.Module):
    """An inference form that 'copies' 7 bytes host→device per input token."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.h2d = 0

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        self.h2d += 7 * input_ids.numel()
        return self.inner(input_ids=input_ids, **kwargs)

    def device_bytes(self) -> int:
        return 1234

    def host_bytes(self) -> int:
        return 5678

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"h2d_bytes": (float(self.h2d), "bytes"), "lookups": (1.0, "count")}

    def reset_counters(self) -> None:
        self.h2d = 0

    def figures(self) -> dict[str, tuple[float, str]]:
        return {"table_error": (0.25, "ratio")}


class WithCounters(Dense):
    name = "counting-test"

    def inference(self, model: torch.nn.Module, params: Any, ctx: Any) -> torch.nn.Module:
        return Counting(model)

    def active_params(self, model: torch.nn.Module, params: Any) -> int:
        return 42


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("lm-config")
    LlamaConfig(**CONFIG).save_pretrained(path)
    return str(path)


def run(config_dir: str, cache: Path, method: Any, **task: Any) -> FakeContext:
    ctx = FakeContext(config_dir, method, StdlibLM(), task_params={**TASK, **task},
                      cache_dir=str(cache))  # fmt: skip
    LMTrainScenario().run(ctx)
    return ctx


def metric(recorder: Recorder, phase: str, name: str, stat: str = "value") -> Any:
    rows = [m for m in recorder.metrics if (m.phase, m.metric, m.stat) == (phase, name, stat)]
    assert len(rows) == 1, (phase, name, stat, rows)
    return rows[0]


def test_trains_evaluates_measures_and_caches(config_dir: str, tmp_path: Path) -> None:
    ctx = run(config_dir, tmp_path, Dense())
    rec = ctx.recorder
    value = rec.value
    assert value("train", "cached") == 0
    assert "train" in ctx.phases and "eval" in ctx.phases
    assert value("train", "steps") == 20
    # The train phase records its seconds (this fake context's phases record nothing).
    assert not [m for m in rec.metrics if (m.phase, m.metric) == ("train", "seconds")]
    assert value("train", "tokens") == 20 * 8 * 32
    assert value("train", "final_loss") < value("train", "initial_loss") - 0.3
    loss = value("eval", "loss")
    assert 0 < loss < math.log(320) + 1
    assert value("eval", "bits_per_token") == pytest.approx(loss / math.log(2))
    assert value("eval", "perplexity") == pytest.approx(math.exp(loss))
    assert value("eval", "scored_tokens") == 8 * 31
    # No inference form: the measured model is the trained one.
    assert value("eval", "trained_form_bits_per_token") == value("eval", "bits_per_token")
    assert value("eval", "inference_form_delta_bits") == 0
    assert "derive_inference" not in ctx.phases and "eval_inference" not in ctx.phases
    tokenizer_len = len(StdlibLM().data(StdlibLM.params(**TASK), 0).tokenizer)
    total = value("model", "total_params")
    assert total == sum(p.numel() for p in LlamaForCausalLM(
        LlamaConfig(**{**CONFIG, "vocab_size": tokenizer_len})).parameters())  # fmt: skip
    assert value("model", "params_active") == total
    # Parameters and buffers (rotary frequencies) at float32.
    assert total * 4 < value("inference", "inference_device_bytes") < total * 4 + 1024
    assert value("inference", "inference_host_bytes") == 0
    units = {
        ("eval", "loss"): "nats/token", ("eval", "bits_per_token"): "bits/token",
        ("eval", "perplexity"): "", ("train_step", "throughput"): "token/s",
        ("train", "final_loss"): "nats", ("model", "params_active"): "count",
        ("inference", "inference_host_bytes"): "bytes", ("train", "cached"): "flag",
        ("decode_b1", "ms_per_token"): "ms", ("decode_b2", "ms_per_token"): "ms",
    }  # fmt: skip
    for (phase, name), unit in units.items():
        stat = "median" if name in ("throughput", "ms_per_token") else "value"
        assert metric(rec, phase, name, stat).unit == unit
    assert metric(rec, "eval", "bits_per_token").higher_is_better is False
    assert value("train_step", "latency", "median") > 0
    assert value("train_step", "latency", "n") == 19  # every step but the first
    assert [s.values for s in rec.samples if s.metric == "latency" and s.phase == "train_step"]
    for b in (1, 2):
        assert ctx.timed[f"prefill_b{b}"][:2] == (b * 8, "token")
        assert ctx.timed[f"decode_b{b}"][:2] == (b * 4, "token")
        assert value(f"decode_b{b}", "ms_per_token", "median") > 0
        row = metric(rec, f"decode_b{b}", "h2d_bytes_per_token")
        assert row.value is None and row.reason == "method reports no host→device counter"

    # A second run trains nothing: the cache holds the weights and the training figures.
    again = run(config_dir, tmp_path, Dense(), batch_sizes=[1])
    assert again.recorder.value("train", "cached") == 1
    assert "train" not in again.phases
    assert again.recorder.value("eval", "loss") == pytest.approx(loss, abs=1e-6)
    for name in ("final_loss", "steps"):
        assert again.recorder.value("train", name) == value("train", name)
    (model_dir,) = (d for d in tmp_path.joinpath("lm_train").iterdir() if d.is_dir())
    trained = json.loads((model_dir / "recipe.json").read_text())
    assert again.recorder.value("train", "seconds") == trained["train_seconds"] > 0
    assert again.recorder.value("train_step", "latency", "median") == value(
        "train_step", "latency", "median")  # fmt: skip
    assert len(list(tmp_path.joinpath("lm_train").iterdir())) == 1 + 1  # model dir + lock
    # Another seed, or another training budget, is another model.
    other = run(config_dir, tmp_path, Dense(), steps=10)
    assert other.recorder.value("train", "cached") == 0


def test_method_counters_inference_form_and_active_params(config_dir: str, tmp_path: Path) -> None:
    ctx = run(config_dir, tmp_path, WithCounters(), steps=5)
    value = ctx.recorder.value
    assert value("model", "params_active") == 42
    assert value("inference", "inference_device_bytes") == 1234
    assert value("inference", "inference_host_bytes") == 5678
    for b in (1, 2):
        # One decode call feeds new_tokens tokens per sequence, 7 bytes each.
        assert value(f"decode_b{b}", "h2d_bytes_per_token") == pytest.approx(7.0)
        assert metric(ctx.recorder, f"decode_b{b}", "h2d_bytes_per_token").unit == "bytes"
        assert value(f"decode_b{b}", "h2d_bytes") == 7 * 4 * b
        assert value(f"decode_b{b}", "lookups") == 1
    assert value("inference", "table_error") == 0.25
    # The inference form is scored too: here it computes what the trained model does.
    assert {"derive_inference", "eval_inference"} <= set(ctx.phases)
    assert value("eval", "inference_form_delta_bits") == pytest.approx(0, abs=1e-6)


class Noisy(torch.nn.Module):
    """An inference form whose logits are the trained model's plus seeded noise."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        out = self.inner(input_ids=input_ids, **kwargs)
        noise = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(0))
        out.logits = out.logits + 2.0 * noise
        return out


class NoisyForm(Dense):
    """Trains the dense model (``trained_as`` says so); measures a worse form of it."""

    name = "noisy-test"

    def inference(self, model: torch.nn.Module, params: Any, ctx: Any) -> torch.nn.Module:
        return Noisy(model)

    def trained_as(self, params: Any) -> dict[str, Any]:
        return {"name": Dense.name, "version": Dense.version, "params": dict(params)}


def test_the_headline_is_the_inference_form_and_trained_as_shares_the_model(
    config_dir: str, tmp_path: Path
) -> None:
    dense = run(config_dir, tmp_path, Dense(), steps=5).recorder.value
    noisy = run(config_dir, tmp_path, NoisyForm(), steps=5).recorder.value
    assert noisy("train", "cached") == 1  # dense-test's trained model, from the cache
    assert noisy("eval", "trained_form_bits_per_token") == pytest.approx(
        dense("eval", "bits_per_token"), abs=1e-6)  # fmt: skip
    delta = noisy("eval", "inference_form_delta_bits")
    assert delta > 0.1
    assert noisy("eval", "bits_per_token") == pytest.approx(
        dense("eval", "bits_per_token") + delta, abs=1e-6)  # fmt: skip


def test_aux_loss_is_added_to_the_training_loss(config_dir: str, tmp_path: Path) -> None:
    backward: list[float] = []

    class Aux(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
            out = self.inner(input_ids=input_ids, **kwargs)
            if self.training:
                aux = self.inner.lm_head.weight.pow(2).mean() + 100.0
                aux.register_hook(lambda grad: backward.append(float(grad)))
                out.aux_loss = aux
            return out

    class WithAux(Dense):
        name = "aux-test"

        def build(self, config: Any, params: Any, ctx: Any) -> torch.nn.Module:
            return Aux(super().build(config, params, ctx))

    ctx = run(config_dir, tmp_path, WithAux(), steps=3)
    assert backward == [1.0, 1.0, 1.0]  # in the loss that is minimised, as is
    # The recorded loss is the LM loss alone.
    assert ctx.recorder.value("train", "final_loss") < math.log(320) + 1


def test_stdlib_lm_data_is_cached_and_split(tmp_path: Path) -> None:
    params = StdlibLM.params(**TASK)
    data = StdlibLM().data(params, 0)
    assert StdlibLM().data(params, 1) is data  # one tokenizer per worker and corpus
    assert len(data.tokenizer) == 320
    assert data.train_ids.dtype == torch.long and len(data.train_ids) > 0 < len(data.eval_ids)
    assert int(data.train_ids.max()) < 320


def test_hf_source_reads_a_saved_dataset(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    rows = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" for i in range(400)]
    path = tmp_path / "ds"
    datasets.Dataset.from_dict({"body": rows, "n": list(range(400))}).save_to_disk(str(path))
    text = "\n".join(rows).encode()
    source = f"hf:{path}"
    assert corpus_text(source, "train", 1 << 20, "train", "body").encode() == text[
        : len(text) * 9 // 10]  # fmt: skip
    held_out = corpus_text(source, "test", 1 << 20, "train", "body")
    assert held_out.encode() == text[len(text) * 9 // 10 :]
    params = StdlibLM.params(source=source, hf_field="body", vocab_size=300, max_bytes=1 << 20)
    data = StdlibLM().data(params, 0)
    assert data.tokenizer.decode(data.eval_ids.tolist()) == held_out
    with pytest.raises(ValueError, match="no column 'text'"):
        corpus_text(source, "train", 1 << 20, "train", "text")


def test_too_little_held_out_text_is_an_error(config_dir: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lower eval_windows"):
        run(config_dir, tmp_path, Dense(), steps=2, eval_windows=100_000)


def test_scenario_declares_its_columns() -> None:
    scenario = LMTrainScenario()
    assert scenario.method_protocol == ("build",)
    assert scenario.model_kinds == ("config",)
    assert scenario.columns.quality[0].metric == "bits_per_token"
    assert {c.metric for c in scenario.columns.costs} == {
        "h2d_bytes_per_token", "inference_host_bytes", "params_active"}  # fmt: skip
    assert {p.cost for p in scenario.columns.plots} == {"h2d_per_token", "active_params"}
