"""A tiny random ViT saved as a built-in one is (with a ``recipe.json`` naming its fractal
pretraining data), and a fake run context."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from harness.api import Recorder

DATA = {"classes": 6, "seed": 0, "size": 32}


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=64, num_labels=6,
    )  # fmt: skip
    return ViTForImageClassification(config).eval()


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-vit")
    tiny_vit().save_pretrained(path)
    body = {"recipe": {"data": DATA}, "recipe_hash": "test-backbone"}
    (path / "recipe.json").write_text(json.dumps(body))
    return path


@pytest.fixture
def ctx(vit_dir: Path, tmp_path: Path) -> SimpleNamespace:
    def load_model(kind: str) -> ViTForImageClassification:
        return ViTForImageClassification.from_pretrained(vit_dir).eval()

    return SimpleNamespace(device="cpu", recorder=Recorder(), cache_dir=str(tmp_path),
                           load_model=load_model)  # fmt: skip
