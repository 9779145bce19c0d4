from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ByT5Tokenizer, DynamicCache, LlamaConfig, LlamaForCausalLM

from harness.api import MeasureSettings, NoParams, Scenario, Task
from harness.scenarios.generate import (
    DecodeThroughput,
    GenerateScenario,
    KVRecall,
    Needle,
    NeedleParams,
    Passkey,
    _haystack,
)
from harness.scenarios.kv_protocol import Decoder, GreedyDecoder, kv_full_bytes

sys.path.insert(0, str(Path(__file__).parent))
from fake_context import FakeContext

SMALL = {"context_len": 64, "depth_bins": 2, "per_bin": 2}


class FullCache:
    """The plain DynamicCache, as a test-local method."""

    name = "test-full"
    version = "1"
    description = "DynamicCache"
    scenarios = ("generate",)
    params = NoParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: Any) -> Any:
        return DynamicCache(config=model.config)


class CountingCache(DynamicCache):
    """A DynamicCache that counts its updates and claims a host tier."""

    def __init__(self, config: Any) -> None:
        super().__init__(config=config)
        self.updates = 0

    def update(self, *args: Any, **kwargs: Any) -> Any:
        self.updates += 1
        return super().update(*args, **kwargs)

    def resident_bytes(self) -> int:
        return 1000

    def host_bytes(self) -> int:
        return 7

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"updates": (float(self.updates), "call"), "hits": (1.0, "row")}


class OwnLoop(FullCache):
    """A method with its own decoder and cache counters."""

    name = "test-own-loop"

    def __init__(self) -> None:
        self.decoders: list[Decoder] = []

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: Any) -> Any:
        return CountingCache(model.config)

    def make_decoder(self, model: Any, cache: Any, params: Mapping[str, Any], ctx: Any) -> Any:
        self.decoders.append(GreedyDecoder(model, cache))
        return self.decoders[-1]

    def derived_metrics(self, totals: Mapping[str, float]) -> dict[str, tuple[float, str]]:
        return {"hits_per_update": (totals["hits"] / totals["updates"], "")}


@pytest.fixture(scope="module")
def random_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("random-gqa-lm")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    ByT5Tokenizer(extra_ids=0).save_pretrained(path)
    return str(path)


def run(model_dir: str, method: Any, task: Any, **kw: Any) -> FakeContext:
    ctx = FakeContext(model_dir, method, task, **kw)
    GenerateScenario().run(ctx)
    return ctx


def test_components_satisfy_the_protocols() -> None:
    assert isinstance(GenerateScenario(), Scenario)
    for task in (Needle(), Passkey(), KVRecall(), DecodeThroughput()):
        assert isinstance(task, Task)
        assert task.scenario == "generate"
    assert isinstance(GreedyDecoder(None, None), Decoder)


def test_needle_records_quality_latency_and_kv_bytes(random_lm_dir: str) -> None:
    lenient = MeasureSettings(min_repeats=1, min_seconds=0.0, rel_precision=None)
    ctx = run(random_lm_dir, FullCache(), Needle(), task_params=SMALL, measure=lenient)
    value = ctx.recorder.value
    assert ctx.phases == ["eval", "prefill", "decode"]
    assert value("eval", "episodes") == 4
    assert 0.0 <= value("eval", "exact_match") <= 1.0
    assert {r.stat for r in ctx.recorder.metrics if r.metric == "exact_match"} == {
        "value", "depth_00", "depth_01",
    }  # fmt: skip
    # Five answer digits: one first-token sample and four decode-step samples per episode.
    assert value("first_token", "latency", "n") == 4
    assert value("decode", "latency", "n") == 16
    assert value("decode", "throughput", "median") == pytest.approx(
        1e3 / value("decode", "latency", "median")
    )
    assert value("prefill", "throughput", "median") == pytest.approx(
        64 / (value("prefill", "latency", "median") / 1e3)
    )
    samples = {s.phase: s.values for s in ctx.recorder.samples}
    assert len(samples["decode"]) == 16 and min(samples["decode"]) > 0
    assert value("warmup", "seconds") > 0
    energy = [r for r in ctx.recorder.metrics if r.metric == "energy_per_item"]
    assert [(r.phase, r.value, r.unit) for r in energy] == [("decode", None, "J/token")]
    # A DynamicCache holds exactly the full cache: context + question + 4 fed-back tokens.
    model = LlamaForCausalLM.from_pretrained(random_lm_dir)
    episodes = ctx.task.data(
        Needle.params(**SMALL), 0, tokenizer=ByT5Tokenizer(extra_ids=0), config=None
    )
    question = len(episodes[0].question_ids)
    full = kv_full_bytes(model.config, 64 + question + 4, 4)
    assert full == 2 * 2 * 2 * 16 * (68 + question) * 4
    assert value("kv", "full_cache_bytes") == full
    assert value("kv", "resident_bytes") == full
    assert value("kv", "resident_ratio") == 1.0
    assert value("kv", "host_bytes") == 0
    assert not ctx.recorder.invalid_reasons


def test_the_default_decoder_is_greedy_generate(random_lm_dir: str) -> None:
    model = LlamaForCausalLM.from_pretrained(random_lm_dir).eval()
    context = torch.randint(3, 259, (1, 40), generator=torch.Generator().manual_seed(1))
    question = torch.tensor([[77, 78]])
    decoder = GreedyDecoder(model, DynamicCache(config=model.config))
    decoder.prefill(context)
    ticks: list[int] = []
    tokens = decoder.decode(question, 6, lambda: ticks.append(1))
    expected = model.generate(
        torch.cat([context, question], dim=1), max_new_tokens=6, do_sample=False,
        attention_mask=torch.ones(1, 42, dtype=torch.long),
    )[0, 42:].tolist()  # fmt: skip
    assert tokens == expected
    assert len(ticks) == 6


def test_method_decoder_counters_and_derived_metrics(random_lm_dir: str) -> None:
    method = OwnLoop()
    ctx = run(random_lm_dir, method, Passkey(), task_params=SMALL)
    value = ctx.recorder.value
    # warm-up, 4 episodes, the probed call: each its own decoder over a fresh cache.
    assert len(method.decoders) == 6
    assert len({id(d.cache) for d in method.decoders}) == 6
    # Per episode: prefill + question/first step + 4 steps, over 2 layers.
    assert value("decode", "updates") == 4 * 6 * 2
    assert value("decode", "updates_per_token") == pytest.approx(48 / 20)
    assert value("decode", "hits") == 4
    assert value("decode", "hits_per_update") == pytest.approx(4 / 48)
    assert value("kv", "resident_bytes") == 1000
    assert value("kv", "host_bytes") == 7


def test_decode_throughput_needs_no_tokenizer(random_lm_dir: str, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    LlamaForCausalLM.from_pretrained(random_lm_dir).save_pretrained(bare)
    params = {"prompt_len": 32, "new_tokens": 8, "repeats": 2}
    ctx = run(str(bare), FullCache(), DecodeThroughput(), task_params=params)
    value = ctx.recorder.value
    assert value("eval", "exact_match") is None
    assert value("prefill", "latency", "n") == 2
    assert value("decode", "latency", "n") == 2 * 7
    assert value("kv", "full_cache_bytes") == kv_full_bytes(
        LlamaConfig.from_pretrained(bare), 32 + 7, 4
    )
    config = LlamaConfig.from_pretrained(bare)
    episodes = DecodeThroughput().data(
        DecodeThroughput.params(**params), 0, tokenizer=None, config=config
    )
    again = DecodeThroughput().data(
        DecodeThroughput.params(**params), 0, tokenizer=None, config=config
    )
    assert episodes == again
    assert [len(e.context_ids) + len(e.question_ids) for e in episodes] == [32, 32]
    assert episodes[0].context_ids != episodes[1].context_ids


def test_too_few_decode_samples_make_the_run_invalid(random_lm_dir: str) -> None:
    ctx = run(
        random_lm_dir, FullCache(), Needle(), task_params={**SMALL, "per_bin": 1},
        measure=MeasureSettings(min_repeats=50, min_seconds=0.0),
    )  # fmt: skip
    assert any("decode: n=8 < min_repeats=50" in r for r in ctx.recorder.invalid_reasons)
    assert ctx.recorder.only_timing_invalid  # its answers still count as quality


def test_episodes_follow_the_seed_and_the_depth_bins(random_lm_dir: str) -> None:
    tokenizer = ByT5Tokenizer(extra_ids=0)
    params = Needle.params(context_len=128, depth_bins=4, per_bin=3)

    def draw(seed: int) -> list[Any]:
        return Needle().data(params, seed, tokenizer=tokenizer, config=None)

    first, again, other = draw(0), draw(0), draw(1)
    assert first == again and first != other
    assert len(first) == 12
    assert all(len(e.context_ids) == 128 for e in first)
    bins = sorted(int(e.depth * 4) for e in first)
    assert bins == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_haystack_from_a_local_hf_dataset(tmp_path: Path) -> None:
    pytest.importorskip("datasets", reason="the hf: haystack needs the datasets package")
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = [{"text": f"line {i}: the quick brown fox jumps over the lazy dog."} for i in range(50)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    tokenizer = ByT5Tokenizer(extra_ids=0)
    params = NeedleParams(haystack=f"hf:{folder}", haystack_split="train")
    hay = _haystack(params, tokenizer)
    text = tokenizer.decode(hay.tolist())
    assert text.startswith("line 0: the quick brown fox") and "line 49" in text
    with pytest.raises(ValueError, match="no column 'body'"):
        _haystack(params.model_copy(update={"haystack_field": "body"}), tokenizer)


def test_kv_full_bytes_counts_gqa_heads() -> None:
    config = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32
    )
    # Llama-3-8B: 128 KiB per token at 16 bits.
    assert kv_full_bytes(config, 1, 2) == 128 * 1024
    assert kv_full_bytes(config, 131072, 2) == 16 * 1024**3


@pytest.mark.slow
def test_a_suite_runs_end_to_end_on_the_built_in_model(tmp_path: Path) -> None:
    """Entry points, the built-in model's shipped weights, worker processes and the store."""
    import duckdb

    from harness.cli import main

    suite = tmp_path / "needle.yaml"
    suite.write_text("""\
name: needle-e2e
scenario: generate
models: [builtin:tiny-llama-retrieval]
tasks: [{name: needle, params: {context_len: 256, depth_bins: 5, per_bin: 2}}]
methods:
  - full
  - {name: specache, params: {bits: 1, group_size: 32, residual: 16, topk: 16}}
  - {name: streaming, params: {sinks: 4, window: 12}}
measure: {warmup: 0, min_repeats: 5, min_seconds: 0.0, rel_precision: null}
""")
    db = tmp_path / "db.duckdb"
    assert main(["run", str(suite), "--db", str(db)]) == 0
    with duckdb.connect(str(db), read_only=True) as con:
        rows = dict(con.execute(
            "SELECT method, value FROM runs JOIN metrics USING (run_key) "
            "WHERE metric = 'exact_match' AND stat = 'value'"
        ).fetchall())  # fmt: skip
        ratios = dict(con.execute(
            "SELECT method, value FROM runs JOIN metrics USING (run_key) "
            "WHERE metric = 'resident_ratio'"
        ).fetchall())  # fmt: skip
    assert rows["full"] >= 0.9 and rows["specache"] >= 0.8
    assert rows["streaming"] <= 0.5  # a 16-token cache keeps few needles
    assert ratios["full"] == 1.0 and ratios["streaming"] < ratios["specache"] < 0.5
