from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.api import ModelEntry
from harness.data.vqa import QUESTION_KINDS, ask, describe, prompt, random_scene, vocabulary
from harness.models import tiny_llama_vqa
from harness.models.recipes import recipe_hash
from harness.models.tiny_llama_vqa import RECIPE, SHIPPED_DIR, TinyLlamaVQA, build_tokenizer

#: A recipe that trains in a second: the plumbing, not the model.
SMALL: dict[str, Any] = copy.deepcopy(RECIPE)
SMALL.update(steps=4, batch_size=8, eval={"per_kind": 4, "seed": 1})
SMALL["architecture"].update(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2,
)  # fmt: skip


def test_entry_satisfies_the_protocol() -> None:
    entry = TinyLlamaVQA()
    assert isinstance(entry, ModelEntry)
    assert entry.name == "tiny-llama-vqa"
    assert entry.kinds == ("causal-lm",)


def test_shipped_weights_are_this_recipes() -> None:
    """Fails when RECIPE changes without re-shipping (``train --ship``)."""
    info = json.loads((SHIPPED_DIR / "recipe.json").read_text())
    assert info["recipe"] == json.loads(json.dumps(RECIPE))
    assert info["recipe_hash"] == recipe_hash(RECIPE)
    assert sum(p.stat().st_size for p in SHIPPED_DIR.iterdir()) < 4 << 20
    # The recipe's own held-out evaluation of the shipped weights: exact given the scene,
    # the prior without it.
    em = info["heldout_exact_match"]
    assert set(em["with_scene"]) == set(em["without_scene"]) == set(QUESTION_KINDS)
    assert all(em["with_scene"][kind] >= 0.95 for kind in QUESTION_KINDS), em
    assert em["without_scene"]["value"] < 0.3
    assert em["without_scene"]["count"] < 0.5


def test_prepare_uses_shipped_weights_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("prepare trained although the shipped weights match")

    monkeypatch.setattr(tiny_llama_vqa, "train_model", refuse)
    assert TinyLlamaVQA().prepare(str(tmp_path)) == str(SHIPPED_DIR)
    assert list(tmp_path.iterdir()) == []


def test_shipped_model_answers_given_the_scene() -> None:
    """Greedy answers to a left-padded batch of prompts, as a scenario would ask them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR).eval()
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    rng = np.random.default_rng(123)
    texts, answers = [], []
    for i in range(40):
        scene = random_scene(rng)
        question, answer = ask(scene, QUESTION_KINDS[i % len(QUESTION_KINDS)], rng)
        texts.append(prompt(question, describe(scene)))
        answers.append(answer)
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=2, do_sample=False)
    replies = tokenizer.batch_decode(out[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    assert [r.split()[0] for r in replies] == answers
    # The answer word is followed by the end of the sequence.
    assert (out[:, -1] == tokenizer.eos_token_id).all()


def test_prepare_trains_a_changed_recipe_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    train = tiny_llama_vqa.train_model

    def counting(recipe: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        return train(recipe, out_dir)

    monkeypatch.setattr(tiny_llama_vqa, "train_model", counting)
    entry = TinyLlamaVQA(SMALL)
    assert entry.shipped() is None
    first = entry.prepare(str(tmp_path))
    assert entry.prepare(str(tmp_path)) == first == str(entry.path(str(tmp_path)))
    assert Path(first).name == f"tiny-llama-vqa-{recipe_hash(SMALL)}"
    assert len(calls) == 1
    info = json.loads((Path(first) / "recipe.json").read_text())
    assert info["recipe"] == SMALL and info["recipe_hash"] == recipe_hash(SMALL)
    assert set(info["heldout_exact_match"]) == {"with_scene", "without_scene"}

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(first)
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert model.config.vocab_size == len(tokenizer) == len(vocabulary()) + 4
    assert not model.config.tie_word_embeddings


def test_training_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = tiny_llama_vqa.train_model(SMALL, tmp_path / "a")
    b = tiny_llama_vqa.train_model(SMALL, tmp_path / "b")
    assert a["final_train_loss"] == b["final_train_loss"]
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert all(w.dtype == torch.float16 for w in weights_a.values())


def test_tokenizer_maps_each_word_to_one_id_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer(RECIPE["tokenizer"])
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    words = vocabulary()
    ids = loaded(" ".join(words), add_special_tokens=False)["input_ids"]
    assert len(ids) == len(set(ids)) == len(words)
    assert loaded.unk_token_id not in ids
    text = prompt("is there a digit at top-right ?", "digit 3 at top-left top-right") + " yes"
    encoded = loaded(text)["input_ids"]
    assert encoded == tokenizer(text)["input_ids"]
    assert encoded[0] == loaded.bos_token_id and len(encoded) == len(text.split()) + 1
    assert loaded.decode(encoded, skip_special_tokens=True) == text
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<bos>", "<eos>", "<pad>", "<unk>",
    )  # fmt: skip
    assert loaded.padding_side == "left"
    batch = loaded([prompt("what digit is it ?"), text], padding=True)["input_ids"]
    assert batch[0][0] == loaded.pad_token_id and batch[0][-1] == loaded.convert_tokens_to_ids(":")
