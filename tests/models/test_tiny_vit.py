from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from harness.api import ModelEntry
from harness.data.fractals import FractalDB
from harness.models import tiny_vit
from harness.models.recipes import recipe_hash
from harness.models.tiny_vit import (
    RECIPE,
    RECIPE_P4,
    SHIPPED_DIR,
    SHIPPED_DIR_P4,
    TinyViT,
    TinyViTP4,
    evaluate,
    image_processor,
    pixel_values,
)

#: A recipe that trains in about a second: the plumbing, not the model.
SMALL: dict[str, Any] = copy.deepcopy(RECIPE)
SMALL.update(
    steps=3,
    batch=8,
    schedule={"warmup_steps": 1, "final_lr_ratio": 0.0},
    eval={"per_class": 1, "seed": 1},
)
SMALL["data"]["classes"] = 10
SMALL["architecture"].update(
    hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
)


def test_entry_satisfies_the_protocol() -> None:
    entry = TinyViT()
    assert isinstance(entry, ModelEntry)
    assert entry.name == "tiny-vit"
    assert entry.kinds == ("image-classification", "base")
    assert entry.version == recipe_hash(RECIPE)


def test_shipped_weights_are_this_recipes(tmp_path: Path) -> None:
    """Fails when RECIPE changes without re-shipping (``train --ship``)."""
    info = json.loads((SHIPPED_DIR / "recipe.json").read_text())
    assert info["recipe"] == json.loads(json.dumps(RECIPE))
    assert info["recipe_hash"] == recipe_hash(RECIPE)
    assert info["heldout_accuracy"] >= 0.95
    size = sum(p.stat().st_size for p in SHIPPED_DIR.iterdir())
    assert size < 1 << 20
    image_processor(32).save_pretrained(tmp_path)
    config = "preprocessor_config.json"
    assert json.loads((SHIPPED_DIR / config).read_text()) == json.loads(
        (tmp_path / config).read_text()
    )


def test_p4_ships_its_own_recipes_weights_with_64_patch_tokens() -> None:
    """The token-merging backbone: tiny-vit's recipe but patch 4 (``train`` it by RECIPE_P4
    into SHIPPED_DIR_P4 when the recipe changes)."""
    info = json.loads((SHIPPED_DIR_P4 / "recipe.json").read_text())
    assert info["recipe"] == json.loads(json.dumps(RECIPE_P4))
    assert info["recipe_hash"] == recipe_hash(RECIPE_P4) == TinyViTP4().version
    # 2,500 steps leave the patch-4 model at 62 % on the 200 classes (patch 8: 99.8 %).
    assert info["heldout_accuracy"] >= 0.6
    assert TinyViTP4().shipped() == SHIPPED_DIR_P4
    config = json.loads((SHIPPED_DIR_P4 / "config.json").read_text())
    assert (config["image_size"] // config["patch_size"]) ** 2 == 64
    assert sum(p.stat().st_size for p in SHIPPED_DIR_P4.iterdir()) < 1 << 20


def test_prepare_uses_shipped_weights_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("prepare trained although the shipped weights match")

    monkeypatch.setattr(tiny_vit, "train_model", refuse)
    assert TinyViT().prepare(str(tmp_path)) == str(SHIPPED_DIR)
    assert list(tmp_path.iterdir()) == []


def test_prepare_trains_a_changed_recipe_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification, ViTModel

    calls: list[Path] = []
    train = tiny_vit.train_model

    def counting(recipe: dict[str, Any], out_dir: Path) -> dict[str, Any]:
        calls.append(out_dir)
        return train(recipe, out_dir)

    monkeypatch.setattr(tiny_vit, "train_model", counting)
    entry = TinyViT(SMALL)
    assert entry.shipped() is None
    first = entry.prepare(str(tmp_path))
    assert entry.prepare(str(tmp_path)) == first == str(entry.path(str(tmp_path)))
    assert len(calls) == 1
    info = json.loads((Path(first) / "recipe.json").read_text())
    assert info["recipe"] == SMALL and info["recipe_hash"] == recipe_hash(SMALL)
    assert 0 <= info["heldout_accuracy"] <= 1

    model = AutoModelForImageClassification.from_pretrained(first, dtype=torch.float32)
    processor = AutoImageProcessor.from_pretrained(first)
    assert model.config.num_labels == 10 and model.config.image_size == 32
    x = processor(np.zeros((32, 32, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert model(pixel_values=x).logits.shape == (1, 10)
    backbone = ViTModel.from_pretrained(first, dtype=torch.float32)
    assert backbone(pixel_values=x).last_hidden_state.shape == (1, 17, 32)


def test_training_is_deterministic(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = tiny_vit.train_model(SMALL, tmp_path / "a")
    b = tiny_vit.train_model(SMALL, tmp_path / "b")
    assert a["final_train_loss"] == b["final_train_loss"]
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert all(w.dtype == torch.float16 for w in weights_a.values())


def test_train_command_writes_a_loadable_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tiny_vit, "RECIPE", SMALL)
    out = tmp_path / "model"
    assert tiny_vit.main(["train", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipe_hash"] == recipe_hash(SMALL)
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "recipe.json"} <= {
        p.name for p in out.iterdir()
    }
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_processor_matches_pixel_values(tmp_path: Path) -> None:
    """The saved processor on 8-bit grayscale or RGB images gives what training fed the model."""
    from PIL import Image
    from transformers import AutoImageProcessor

    image_processor(32).save_pretrained(tmp_path)
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    images, _ = FractalDB(4).batch(3, np.random.default_rng(0))
    eight_bit = np.round(images * 255).astype(np.uint8)
    want = pixel_values(eight_bit / 255.0)
    for mode in ("L", "RGB"):
        pil = [Image.fromarray(img, mode="L").convert(mode) for img in eight_bit]
        got = processor(pil, return_tensors="pt")["pixel_values"]
        assert got.shape == want.shape == (3, 3, 32, 32)
        assert torch.allclose(got, want, atol=1e-5), mode


def test_shipped_model_classifies_heldout_fractals() -> None:
    """200 fresh renders (one per class, a seed training never saw), fp16 weights in fp32."""
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(SHIPPED_DIR, dtype=torch.float32)
    data = FractalDB(**RECIPE["data"])
    assert evaluate(model, data, per_class=1, seed=12345) >= 0.9
