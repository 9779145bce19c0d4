from __future__ import annotations

import math

import pytest
import torch

from harness.data.streams import Standardizer, class_order, split_by_class, vit_inputs


def dataset(per_class: int, classes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(classes).repeat(per_class)
    return labels[:, None].float(), labels  # the input remembers its original class


def test_split_by_class_relabels_in_a_seeded_class_order() -> None:
    train_x, train_y = dataset(5)
    eval_x, eval_y = dataset(2)
    stream = split_by_class(train_x, train_y, eval_x, eval_y, 6, 3, seed=7)
    order = class_order(6, 7).tolist()
    assert sorted(order) == list(range(6)) and order != class_order(6, 8).tolist()
    for t, task in enumerate(stream):
        assert task.classes == tuple(order[2 * t : 2 * t + 2])
        assert sorted(set(task.train_y.tolist())) == [2 * t, 2 * t + 1]
        assert len(task.train_y) == 10 and len(task.eval_y) == 4
        # Stream label i is original class order[i].
        for x, y in zip(task.train_x, task.train_y, strict=True):
            assert int(x) == order[int(y)]


def test_split_by_class_rejects_bad_streams() -> None:
    x, y = dataset(3)
    with pytest.raises(ValueError, match=r"6 classes cannot be split into 4 tasks.*\[2, 3, 6\]"):
        split_by_class(x, y, x, y, 6, 4, seed=0)
    keep = y != 5
    with pytest.raises(ValueError, match=r"classes \[5\] have no evaluation examples"):
        split_by_class(x, y, x[keep], y[keep], 6, 3, seed=0)


def test_standardizer_uses_training_statistics_and_unit_norm_rows() -> None:
    train = torch.randn(500, 16) * 3 + 5
    train[:, 0] = 2.0  # a constant pixel
    scale = Standardizer.fit(train)
    out = scale(train)
    assert torch.allclose(out.mean(0), torch.zeros(16), atol=1e-5)
    assert out[:, 0].abs().max() == 0
    assert out.norm(dim=1).pow(2).mean().item() == pytest.approx(15 / 16, rel=0.05)
    # Other inputs are scaled with the training statistics, not their own.
    shifted = scale(train + 3)[:, 1:]
    expected = 3 / train[:, 1:].std(0) / math.sqrt(16)
    assert torch.allclose(shifted.mean(0), expected, atol=1e-4)


def test_vit_inputs_resize_replicate_and_rescale() -> None:
    images = torch.rand(2, 1, 8, 8)
    x = vit_inputs(images, 32)
    assert x.shape == (2, 3, 32, 32) and bool((x[:, 0] == x[:, 2]).all())
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert torch.equal(vit_inputs(images, 8)[:, 1:2], images * 2 - 1)
