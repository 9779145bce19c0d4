from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.api import ModelEntry
from harness.data.retrieval import HAYSTACKS, haystack_ids, make_episode, stratified_depths
from harness.data.text_corpus import load_text
from harness.models import tiny_llama_retrieval
from harness.models.recipes import recipe_hash
from harness.models.tiny_llama_retrieval import (
    RECIPE,
    SHIPPED_DIR,
    TinyLlamaRetrieval,
    build_tokenizer,
)

#: A recipe that trains in seconds: the plumbing, not the model.
SMALL: dict[str, Any] = copy.deepcopy(RECIPE)
SMALL.update(
    tokenizer={**RECIPE["tokenizer"], "vocab_size": 300},
    corpus={"source": "stdlib", "max_bytes": 1 << 16},
    curriculum=[
        {"steps": 2, "lengths": [32], "mix": {"needle": 1.0}},
        {"steps": 2, "lengths": [64, 48], "mix": {"passkey": 0.5, "kv-recall": 0.5}},
    ],
    tokens_per_step=256,
    schedule={"warmup_steps": 1, "decay_start": 2, "final_lr": 3e-4},
    eval={"lengths": [64], "episodes": 4, "pairs": 2, "seed": 1},
)
SMALL["architecture"].update(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2,
)  # fmt: skip


def test_entry_satisfies_the_protocol() -> None:
    entry = TinyLlamaRetrieval()
    assert isinstance(entry, ModelEntry)
    assert entry.name == "tiny-llama-retrieval"
    assert entry.kinds == ("causal-lm",)


def test_shipped_weights_are_this_recipes() -> None:
    """Fails when RECIPE changes without re-shipping (``train --ship``)."""
    info = json.loads((SHIPPED_DIR / "recipe.json").read_text())
    assert info["recipe"] == json.loads(json.dumps(RECIPE))
    assert info["recipe_hash"] == recipe_hash(RECIPE)
    size = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir())
    assert size < 4 << 20
    # The recipe's own held-out evaluation of the shipped weights.
    for kind in ("needle", "passkey"):
        for length in ("256", "1024"):
            assert info["heldout_exact_match"][kind][length] >= 0.9, (kind, length)


def test_prepare_uses_shipped_weights_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("prepare trained although the shipped weights match")

    monkeypatch.setattr(tiny_llama_retrieval, "train_model", refuse)
    assert TinyLlamaRetrieval().prepare(str(tmp_path)) == str(SHIPPED_DIR)
    assert list(tmp_path.iterdir()) == []


def test_prepare_trains_a_changed_recipe_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    train = tiny_llama_retrieval.train_model

    def counting(recipe: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        return train(recipe, out_dir)

    monkeypatch.setattr(tiny_llama_retrieval, "train_model", counting)
    entry = TinyLlamaRetrieval(SMALL)
    assert entry.shipped() is None
    first = entry.prepare(str(tmp_path))
    assert entry.prepare(str(tmp_path)) == first == str(entry.path(str(tmp_path)))
    assert len(calls) == 1
    info = json.loads((Path(first) / "recipe.json").read_text())
    assert info["recipe"] == SMALL and info["recipe_hash"] == recipe_hash(SMALL)
    assert set(info["heldout_exact_match"]) == {"needle", "passkey", "kv-recall"}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [Path(first).name, f".{Path(first).name}.lock"]
    )

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert model.config.vocab_size == len(tokenizer) == 300
    assert model.config.attention_bias


def test_training_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = tiny_llama_retrieval.train_model(SMALL, tmp_path / "a")
    b = tiny_llama_retrieval.train_model(SMALL, tmp_path / "b")
    assert a["final_train_loss"] == b["final_train_loss"]
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert all(w.dtype == torch.float16 for w in weights_a.values())
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_text()


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    text = load_text("stdlib", "train", 1 << 16).decode("utf-8")
    tokenizer = build_tokenizer({**RECIPE["tokenizer"], "vocab_size": 400}, text)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    sample = "def f(x=12345):\n    return x  # é <needle>40917</needle><query><k3>"
    ids = loaded(sample, add_special_tokens=False)["input_ids"]
    assert ids == tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == sample
    assert loaded(sample)["input_ids"] == [loaded.bos_token_id, *ids]
    tokens = loaded.convert_ids_to_tokens(ids)
    assert [t for t in tokens if t.isdigit()] == list("1234540917")
    for special in RECIPE["tokenizer"]["special_tokens"][3:]:
        assert len(loaded(special, add_special_tokens=False)["input_ids"]) == 1
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == ("<bos>", "<eos>", "<pad>")


def test_eval_command_reports_exact_match(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", str(SHIPPED_DIR), "--lengths", "64", "--episodes", "4"]
    assert tiny_llama_retrieval.main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype"] == "float32"
    assert set(report["exact_match"]) == {"needle", "passkey", "kv-recall"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shipped_model_retrieves_greedily(dtype: torch.dtype) -> None:
    """Greedy decoding after a separately prefilled context, as the generate scenario runs it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    for kind in ("needle", "passkey"):
        hay = haystack_ids(tokenizer, HAYSTACKS[kind], "test", 1 << 20)
        rng = random.Random(f"test-{kind}")
        episodes = [
            make_episode(kind, tokenizer, hay, 256, rng, depth=d)
            for d in stratified_depths(50, rng)
        ]
        context = torch.tensor([e.context_ids for e in episodes])
        prompt = torch.cat([context, torch.tensor([e.question_ids for e in episodes])], 1)
        cache = DynamicCache(config=model.config)
        with torch.inference_mode():
            model(input_ids=context, past_key_values=cache, use_cache=True)
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                past_key_values=cache,
                max_new_tokens=len(episodes[0].answer_ids),
                do_sample=False,
            )
        answers = tokenizer.batch_decode(out[:, prompt.shape[1] :])
        hits = sum(a == e.answer for a, e in zip(answers, episodes, strict=True))
        assert hits / len(episodes) >= 0.9, (kind, dtype, hits)
