from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from harness_plugins.weight_compression.magnitude import Magnitude, MagnitudeParams, sparse_bytes
from pydantic import ValidationError

from harness.api import Recorder


def layers() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9])
def test_reaches_the_exact_sparsity_keeping_the_largest(sparsity: float) -> None:
    model = layers()
    before = [m.weight.detach().clone() for m in model if isinstance(m, torch.nn.Linear)]
    ctx = SimpleNamespace(recorder=Recorder())
    Magnitude().apply(model, {"sparsity": sparsity}, ctx)
    after = [m.weight.detach() for m in model if isinstance(m, torch.nn.Linear)]
    for original, pruned in zip(before, after, strict=True):
        zeros = pruned == 0
        assert int(zeros.sum()) == round(sparsity * original.numel())
        assert original[~zeros].abs().min() >= original[zeros].abs().max()
        assert torch.equal(pruned[~zeros], original[~zeros])
    assert ctx.recorder.value("model", "weight_sparsity") == pytest.approx(sparsity, abs=0.01)


def test_pruning_is_baked_in() -> None:
    model = layers()
    Magnitude().apply(model, {"sparsity": 0.5}, SimpleNamespace(recorder=Recorder()))
    names = {name for name, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    assert names == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not model[0]._forward_pre_hooks


def test_storage_bytes_is_mask_plus_nonzeros() -> None:
    model = layers()
    params = {"sparsity": 0.5}
    Magnitude().apply(model, params, SimpleNamespace(recorder=Recorder()))
    first = 2048 // 8 + 1024 * 4  # 64x32 weight: 1-bit mask + half the values in fp32
    second = 320 // 8 + 160 * 4
    biases = (32 + 10) * 4
    assert Magnitude().storage_bytes(model, params) == first + second + biases


def test_storage_never_exceeds_dense() -> None:
    weight = torch.randn(16, 16, dtype=torch.float16)
    assert sparse_bytes(weight) == 16 * 16 * 2  # no zeros: the mask would only add bytes
    weight[:, :8] = 0
    assert sparse_bytes(weight) == 256 // 8 + 128 * 2


def test_params_are_validated() -> None:
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValidationError):
            MagnitudeParams(sparsity=bad)
