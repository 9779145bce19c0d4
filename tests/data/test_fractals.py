from __future__ import annotations

import numpy as np
import pytest

from harness.data.fractals import FractalDB, sample_ifs


def test_sample_ifs_follows_the_sigma_factor_rule() -> None:
    rng = np.random.default_rng(0)
    for n in (2, 3, 4):
        matrices, offsets = sample_ifs(rng, n)
        assert matrices.shape == (n, 2, 2) and offsets.shape == (n, 2)
        sigma = np.linalg.svd(matrices, compute_uv=False)
        assert (sigma < 1).all()
        factor = (sigma[:, 0] + 2 * sigma[:, 1]).sum()
        assert (5 + n) / 2 - 1e-9 <= factor <= (6 + n) / 2 + 1e-9
        assert (np.abs(offsets) <= 1).all()


def test_classes_are_deterministic_and_seeded() -> None:
    a, b, c = FractalDB(12, seed=3), FractalDB(12, seed=3), FractalDB(12, seed=4)
    assert np.array_equal(a.matrices, b.matrices) and np.array_equal(a.offsets, b.offsets)
    assert not np.array_equal(a.matrices, c.matrices)
    assert a.classes == 12 and set(a.n_maps) <= {2, 3, 4}
    x1, y1 = a.batch(16, np.random.default_rng(5))
    x2, y2 = b.batch(16, np.random.default_rng(5))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    h1, l1 = a.heldout(2, seed=1)
    h2, _ = a.heldout(2, seed=1)
    h3, _ = a.heldout(2, seed=2)
    assert np.array_equal(h1, h2) and not np.array_equal(h1, h3)
    assert list(l1) == [i // 2 for i in range(24)]


def test_images_have_the_documented_shape_and_range() -> None:
    db = FractalDB(8, size=24)
    images, labels = db.batch(32, np.random.default_rng(0))
    assert images.shape == (32, 24, 24) and images.dtype == np.float32
    assert labels.shape == (32,) and labels.min() >= 0 and labels.max() < 8
    assert images.min() >= 0 and images.max() <= 1
    # Black background, and every image shows a fractal.
    assert ((images > 0).mean((1, 2)) > 0.03).all()
    assert ((images == 0).mean((1, 2)) > 0.2).all()


def test_degenerate_systems_are_filtered_out() -> None:
    db = FractalDB(30, seed=0, fill=(0.2, 0.5))
    canonical = db.render(np.arange(30), np.random.default_rng(0), augment=False)
    fill = (canonical > 0).mean((1, 2))
    # Canonical renders are random too, so a fresh one may stray a little from the bounds.
    assert (fill > 0.15).all() and (fill < 0.55).all()
    assert len({img.tobytes() for img in canonical}) == 30


def test_augmentation_keeps_maps_contractive() -> None:
    db = FractalDB(10, jitter=0.3)
    images = db.render(np.arange(10).repeat(4), np.random.default_rng(1))
    assert np.isfinite(images).all() and (images.max((1, 2)) > 0).all()


def test_classes_are_separable_from_raw_pixels() -> None:
    """Nearest class mean over raw pixels: well above chance (5 %), the ViT does far better."""
    db = FractalDB(20, seed=0)
    labels = np.repeat(np.arange(20), 20)
    train = db.render(labels, np.random.default_rng(0)).reshape(len(labels), -1)
    means = np.stack([train[labels == c].mean(0) for c in range(20)])
    test, truth = db.heldout(5, seed=1)
    test = test.reshape(len(truth), -1)
    predicted = ((test[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == truth).mean() > 0.4


def test_rejects_impossible_specs() -> None:
    with pytest.raises(ValueError, match="maps"):
        FractalDB(2, maps=(2, 5))
    # 8 chains x 4 kept steps hit at most 32 of 1024 pixels: no class can fill 12 %.
    with pytest.raises(ValueError, match="fill"):
        FractalDB(2, chains=8, steps=8, burn_in=4)
