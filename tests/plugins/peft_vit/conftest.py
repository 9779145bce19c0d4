"""Fixtures for the ViT adaptation methods: the shipped tiny ViT, frozen, with a fresh head."""

from __future__ import annotations

import pytest
import torch
from transformers import ViTForImageClassification

from harness.models.tiny_vit import SHIPPED_DIR
from harness.scenarios.adapt import fresh_head, pixel_values

NUM_CLASSES = 10


def make_backbone(seed: int = 0) -> ViTForImageClassification:
    """The shipped ``builtin:tiny-vit`` in float32, frozen, with a seeded 10-class head."""
    model = ViTForImageClassification.from_pretrained(SHIPPED_DIR, dtype=torch.float32)
    torch.manual_seed(seed)
    fresh_head(model, NUM_CLASSES)
    return model.eval()


def train_steps(model: torch.nn.Module, pixels: torch.Tensor, steps: int = 3) -> torch.nn.Module:
    """A few AdamW steps on what ``model`` trains (labels cycle through the classes);
    returns it in eval mode."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.arange(len(pixels)) % NUM_CLASSES
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(pixel_values=pixels).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture
def backbone() -> ViTForImageClassification:
    return make_backbone()


@pytest.fixture
def pixels(backbone: ViTForImageClassification) -> torch.Tensor:
    """Eight random grayscale images as the tiny ViT's ``pixel_values``."""
    images = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    return pixel_values(images, backbone.config)
