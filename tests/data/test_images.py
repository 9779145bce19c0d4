from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.data.images import (
    ImageSplits,
    digits_shift,
    hf_image_dataset,
    image_folder,
    shapes_count,
    shapes_orientation,
    shapes_position,
    stratified_split,
)

ndimage = pytest.importorskip("scipy.ndimage")
linear_model = pytest.importorskip("sklearn.linear_model")
threadpoolctl = pytest.importorskip("threadpoolctl")

BUILDERS: dict[str, Callable[..., ImageSplits]] = {
    "digits_shift": digits_shift,
    "count": shapes_count,
    "position": shapes_position,
    "orientation": shapes_orientation,
}
#: Raw-pixel logistic regression (C=0.01) test accuracy must fall in these bands: well above
#: chance, well below the 96 % plain upsampled digits get. Measured at seed 0: 14.2, 41.0,
#: 35.3 and 22.6 % (chance 10, 16.7, 11.1 and 12.5 %).
LOGREG_BANDS = {
    "digits_shift": (0.115, 0.35),
    "count": (0.3, 0.6),
    "position": (0.2, 0.6),
    "orientation": (0.16, 0.45),
}


def _small(name: str, seed: int, **kwargs: object) -> ImageSplits:
    return BUILDERS[name](seed, train=40, val=20, test=30, **kwargs)


def _splits(data: ImageSplits) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(data.train_x, data.train_y), (data.val_x, data.val_y), (data.test_x, data.test_y)]


@pytest.fixture(scope="module")
def full() -> dict[str, ImageSplits]:
    """Every task at its default VTAB-1k sizes, built once."""
    return {name: builder(0) for name, builder in BUILDERS.items()}


def _logreg_accuracy(data: ImageSplits) -> float:
    model = linear_model.LogisticRegression(C=0.01, max_iter=1000)
    # One BLAS thread: on a loaded 2-core machine, more make this fit 50x slower.
    with threadpoolctl.threadpool_limits(1):
        model.fit(data.train_x.flatten(1).numpy(), data.train_y.numpy())
    return float(model.score(data.test_x.flatten(1).numpy(), data.test_y.numpy()))


@pytest.mark.parametrize("name", BUILDERS)
def test_default_sizes_shapes_ranges_and_balance(name: str, full: dict[str, ImageSplits]) -> None:
    data = full[name]
    test_size = 797 if name == "digits_shift" else 1000
    for (x, y), n in zip(_splits(data), (800, 200, test_size), strict=True):
        assert x.shape == (n, 1, 32, 32) and x.dtype == torch.float32
        assert y.shape == (n,) and y.dtype == torch.int64
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(data.num_classes))
    counts = torch.bincount(data.train_y, minlength=data.num_classes)
    assert int(counts.max() - counts.min()) <= 1
    val_counts = torch.bincount(data.val_y, minlength=data.num_classes)
    assert int(val_counts.max() - val_counts.min()) <= 1


@pytest.mark.parametrize("name", BUILDERS)
def test_same_seed_same_data_other_seed_other_data(name: str) -> None:
    first, again, other = _small(name, 0), _small(name, 0), _small(name, 1)
    for (x, y), (x2, y2), (x3, _) in zip(
        _splits(first), _splits(again), _splits(other), strict=True
    ):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        assert not torch.equal(x, x3)
    # Splits come from separate streams: another test size leaves train and val untouched.
    bigger = BUILDERS[name](0, train=40, val=20, test=25)
    assert torch.equal(bigger.train_x, first.train_x) and torch.equal(bigger.val_x, first.val_x)


@pytest.mark.parametrize("name", BUILDERS)
def test_raw_pixel_logistic_regression_is_far_from_solving_the_task(
    name: str, full: dict[str, ImageSplits]
) -> None:
    low, high = LOGREG_BANDS[name]
    assert low < _logreg_accuracy(full[name]) < high


def test_plain_upsampled_digits_are_what_logistic_regression_solves() -> None:
    # The contrast that motivates digits_shift: no noise, no shift, full scale.
    data = digits_shift(0, train=800, val=200, scale=(32, 32), noise=0.0)
    assert _logreg_accuracy(data) > 0.9


def test_digits_shift_source_split_is_disjoint_and_balanced() -> None:
    from sklearn.datasets import load_digits

    target = load_digits().target
    train, val, test = stratified_split(target, 800, 200, None, 0)
    assert len(set(train) | set(val) | set(test)) == len(target) == 1797
    assert np.bincount(target[train]).tolist() == [80] * 10
    assert np.bincount(target[val]).tolist() == [20] * 10


def test_count_label_is_the_number_of_separate_objects() -> None:
    data = shapes_count(0, train=120, val=0, test=0, noise=0.0)
    for image, label in zip(data.train_x[:, 0].numpy(), data.train_y.tolist(), strict=True):
        _, found = ndimage.label(image > 0.1, structure=np.ones((3, 3)))
        assert found == label + 1


def test_position_label_is_the_cell_of_the_disk() -> None:
    data = shapes_position(0, train=90, val=0, test=0, distractors=0, noise=0.0)
    rows, cols = np.mgrid[0:32, 0:32] + 0.5
    for image, label in zip(data.train_x[:, 0].numpy(), data.train_y.tolist(), strict=True):
        mass = image.sum()
        row, col = divmod(label, 3)
        cy, cx = (rows * image).sum() / mass, (cols * image).sum() / mass
        assert row * 32 / 3 - 0.5 <= cy <= (row + 1) * 32 / 3 + 0.5
        assert col * 32 / 3 - 0.5 <= cx <= (col + 1) * 32 / 3 + 0.5
    # With distractors, every image has one disk plus that many other shapes.
    crowded = shapes_position(0, train=30, val=0, test=0, distractors=2, noise=0.0)
    for image in crowded.train_x[:, 0].numpy():
        assert ndimage.label(image > 0.1, structure=np.ones((3, 3)))[1] == 3


def test_orientation_label_is_where_the_apex_points() -> None:
    bins = 8
    data = shapes_orientation(0, train=160, val=0, test=0, bins=bins, noise=0.0)
    rows, cols = np.mgrid[0:32, 0:32] + 0.5
    misses = 0
    for image, label in zip(data.train_x[:, 0].numpy(), data.train_y.tolist(), strict=True):
        mass = image.sum()
        cy, cx = (rows * image).sum() / mass, (cols * image).sum() / mass
        lit = image > 0.5 * image.max()
        far = np.argmax(np.where(lit, np.hypot(rows - cy, cols - cx), -1.0))
        angle = math.atan2(-(rows.flat[far] - cy), cols.flat[far] - cx)  # y points down
        centre = label * 2 * math.pi / bins
        error = abs((angle - centre + math.pi) % (2 * math.pi) - math.pi)
        misses += error > math.pi / bins + math.radians(10)
    assert misses <= 3


def test_other_sizes_scale_the_canvas() -> None:
    for name in BUILDERS:
        data = BUILDERS[name](0, 48, train=10, val=5, test=5)
        assert data.train_x.shape == (10, 1, 48, 48)
    with pytest.raises(ValueError, match="do not fit"):
        digits_shift(0, 16, scale=(12, 40))
    with pytest.raises(ValueError, match="do not fit"):
        shapes_count(0, 16, train=40, val=0, test=0, max_count=40)
    with pytest.raises(ValueError, match="do not fit"):
        shapes_position(0, 16, train=10, val=0, test=0, distractors=40)


def test_stratified_split_rejects_too_many_and_takes_the_rest() -> None:
    labels = [0] * 5 + [1] * 3
    train, val, test = stratified_split(labels, 4, 2, None, 0)
    assert (len(train), len(val), len(test)) == (4, 2, 2)
    assert np.bincount(np.asarray(labels)[train]).tolist() == [2, 2]
    with pytest.raises(ValueError, match="cannot split 8"):
        stratified_split(labels, 6, 2, 1, 0)


def _write_folder(root: Path) -> dict[str, int]:
    """Three classes of five RGB PNGs of odd sizes, each class with its own gray level."""
    image_module = pytest.importorskip("PIL.Image")
    levels = {"cat": 30, "dog": 130, "emu": 230}
    for name, level in levels.items():
        (root / name).mkdir(parents=True)
        for i in range(5):
            pixels = np.full((20 + i, 30, 3), level, dtype=np.uint8)
            image_module.fromarray(pixels).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return levels


def _check_levels(data: ImageSplits, levels: dict[str, int]) -> None:
    for x, y in _splits(data):
        for image, label in zip(x, y.tolist(), strict=True):
            expected = levels[data.classes[label]] / 255
            assert torch.allclose(image, torch.full_like(image, expected), atol=0.01)


def test_image_folder_reads_resizes_and_splits_by_class(tmp_path: Path) -> None:
    levels = _write_folder(tmp_path)
    data = image_folder(tmp_path, 16, train=6, val=3, seed=0)
    assert data.classes == ("cat", "dog", "emu")
    assert data.train_x.shape == (6, 1, 16, 16) and data.test_x.shape == (6, 1, 16, 16)
    assert torch.bincount(data.train_y).tolist() == [2, 2, 2]
    assert torch.bincount(data.val_y).tolist() == [1, 1, 1]
    _check_levels(data, levels)
    rgb = image_folder(tmp_path, 8, grayscale=False, train=6, val=3, test=3)
    assert rgb.train_x.shape == (6, 3, 8, 8) and rgb.test_x.shape == (3, 3, 8, 8)
    again = image_folder(tmp_path, 16, train=6, val=3, seed=0)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folder(tmp_path / "cat", 16)


def test_hf_imagefolder_builder_matches_the_local_folder_loader(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    levels = _write_folder(tmp_path / "images")
    data = hf_image_dataset(
        "imagefolder", "train", size=16, train=6, val=3, data_dir=str(tmp_path / "images")
    )
    assert data.classes == ("cat", "dog", "emu")
    assert [len(y) for _, y in _splits(data)] == [6, 3, 6]
    assert torch.bincount(data.train_y).tolist() == [2, 2, 2]
    _check_levels(data, levels)


def test_hf_saved_dataset_with_its_own_test_split_and_string_labels(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    levels = _write_folder(tmp_path / "images")
    files = sorted((tmp_path / "images").glob("*/*.png"))

    def part(chosen: list[Path]) -> object:
        table = {"picture": [str(p) for p in chosen], "kind": [p.parent.name for p in chosen]}
        return datasets.Dataset.from_dict(table).cast_column("picture", datasets.Image())

    tune = [p for p in files if p.stem != "4"]
    held_out = [p for p in files if p.stem == "4"]
    datasets.DatasetDict(train=part(tune), test=part(held_out)).save_to_disk(tmp_path / "saved")
    data = hf_image_dataset(
        str(tmp_path / "saved"),
        image_column="picture",
        label_column="kind",
        size=8,
        train=6,
        val=3,
        test_split="test",
    )
    assert data.classes == ("cat", "dog", "emu")
    assert [len(y) for _, y in _splits(data)] == [6, 3, 3]
    assert sorted(data.test_y.tolist()) == [0, 1, 2]
    _check_levels(data, levels)
