from __future__ import annotations

from types import SimpleNamespace

import torch
from harness_plugins.weight_compression.dense import Dense


def layers() -> torch.nn.Sequential:
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def test_dense_stores_every_parameter_once() -> None:
    model = layers()
    dense = Dense()
    assert dense.apply(model, {}, SimpleNamespace()) is model
    assert dense.storage_bytes(model, {}) == (64 * 32 + 32 + 32 * 10 + 10) * 4
    tied = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    tied[1].weight = tied[0].weight
    assert dense.storage_bytes(tied, {}) == (64 + 8 + 8) * 4


def test_dense_counts_each_parameter_at_its_dtype() -> None:
    assert Dense().storage_bytes(layers().half(), {}) == (64 * 32 + 32 + 32 * 10 + 10) * 2
