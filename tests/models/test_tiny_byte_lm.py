from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.api import ModelEntry
from harness.models import tiny_byte_lm
from harness.models.recipes import recipe_hash
from harness.models.tiny_byte_lm import RECIPE, TinyByteLM

#: A recipe that trains in about a second: the caching and locking logic, not the model.
SMALL: dict[str, Any] = copy.deepcopy(RECIPE)
SMALL.update(steps=3, batch=2, seq_len=32, eval={"windows": 2, "seq_len": 32})
SMALL["architecture"].update(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=2,
)  # fmt: skip
SMALL["corpus"]["max_bytes"] = 1 << 16


def test_entry_satisfies_the_protocol() -> None:
    entry = TinyByteLM()
    assert isinstance(entry, ModelEntry)
    assert entry.kinds == ("causal-lm",)


def test_recipe_hash_is_stable_and_sensitive() -> None:
    assert recipe_hash(RECIPE) == recipe_hash(copy.deepcopy(RECIPE))
    assert len(recipe_hash(RECIPE)) == 12
    assert recipe_hash(RECIPE) != recipe_hash({**RECIPE, "seed": 1})
    path = TinyByteLM().path("/cache")
    assert path == Path("/cache/models") / f"tiny-byte-lm-{recipe_hash(RECIPE)}"


def test_prepare_trains_once_and_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    train = tiny_byte_lm.train_model

    def counting(recipe: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        return train(recipe, out_dir)

    monkeypatch.setattr(tiny_byte_lm, "train_model", counting)
    entry = TinyByteLM(SMALL)
    first = entry.prepare(str(tmp_path))
    started = time.perf_counter()
    second = entry.prepare(str(tmp_path))
    assert time.perf_counter() - started < 0.5
    assert first == second == str(entry.path(str(tmp_path)))
    assert len(calls) == 1
    info = json.loads((Path(first) / "recipe.json").read_text())
    assert info["recipe"] == SMALL
    assert {"final_train_loss", "heldout_bits_per_byte", "train_seconds"} <= set(info)
    # Only the model dir and its lock file: the temporary training dir was renamed away.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [Path(first).name, f".{Path(first).name}.lock"]
    )


def test_failed_training_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(recipe: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        (out_dir / "partial").write_text("half a model")
        raise RuntimeError("killed")

    monkeypatch.setattr(tiny_byte_lm, "train_model", failing)
    entry = TinyByteLM(SMALL)
    with pytest.raises(RuntimeError, match="killed"):
        entry.prepare(str(tmp_path))
    assert [p.name for p in (tmp_path / "models").iterdir()] == [
        f".{entry.path(str(tmp_path)).name}.lock"
    ]


def test_concurrent_prepare_trains_once(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    script = textwrap.dedent(
        """
        import json, os, sys
        from pathlib import Path
        from harness.models import tiny_byte_lm

        cache, markers, recipe = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
        train = tiny_byte_lm.train_model

        def counting(recipe, out_dir):
            (markers / str(os.getpid())).touch()
            return train(recipe, out_dir)

        tiny_byte_lm.train_model = counting
        print(tiny_byte_lm.TinyByteLM(recipe).prepare(cache))
        """
    )
    args = [sys.executable, "-c", script, str(tmp_path / "cache"), str(markers), json.dumps(SMALL)]
    workers = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    paths = [w.communicate(timeout=120)[0].strip() for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    assert paths[0] == paths[1]
    assert len(list(markers.iterdir())) == 1


def test_training_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    a = tiny_byte_lm.train_model(SMALL, tmp_path / "a")
    b = tiny_byte_lm.train_model(SMALL, tmp_path / "b")
    assert a["final_train_loss"] == b["final_train_loss"]
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


def test_trained_model_beats_uniform_bytes_by_far(tiny_byte_lm_dir: str) -> None:
    info = json.loads((Path(tiny_byte_lm_dir) / "recipe.json").read_text())
    assert info["recipe"] == RECIPE
    assert info["heldout_bits_per_byte"] < 4  # uniform over bytes is 8


def test_saved_model_and_tokenizer_load_with_auto_classes(tiny_byte_lm_dir: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_byte_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_byte_lm_dir)
    text = "def f(x):\n    return x  # é\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Training feeds raw bytes + offset; the saved tokenizer must agree exactly.
    assert ids == [b + 3 for b in text.encode("utf-8")]
    assert tokenizer.decode(ids) == text
    assert model.config.vocab_size == len(tokenizer)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))
