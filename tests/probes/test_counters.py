"""Parameter counts and tensor bytes: frozen parts and tied weights counted right."""

from __future__ import annotations

import pytest

from harness.probes.counters import count_parameters, tensor_bytes

torch = pytest.importorskip("torch")
nn = torch.nn


class TinyLM(nn.Module):
    """Embedding tied to the output head, plus a frozen body layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)  # 40
        self.body = nn.Linear(4, 4)  # 16 + 4, frozen
        self.norm = nn.LayerNorm(4)  # 4 + 4
        self.head = nn.Linear(4, 10, bias=False)  # tied to embed: 0 extra
        self.head.weight = self.embed.weight
        for p in self.body.parameters():
            p.requires_grad_(False)


def test_count_parameters_frozen_and_tied() -> None:
    model = TinyLM()
    assert count_parameters(model) == (40 + 20 + 8, 40 + 8)


def test_count_parameters_plain_module() -> None:
    assert count_parameters(nn.Linear(3, 2)) == (8, 8)
    assert count_parameters(nn.Sequential()) == (0, 0)


def test_tensor_bytes_state_dict_counts_tied_storage_once() -> None:
    sd = TinyLM().state_dict()
    assert "head.weight" in sd and "embed.weight" in sd
    assert tensor_bytes(sd) == (40 + 20 + 8) * 4


def test_tensor_bytes_iterables_dtypes_and_nesting() -> None:
    a = torch.zeros(10, dtype=torch.bfloat16)
    b = torch.zeros(3, 3, dtype=torch.float64)
    assert tensor_bytes(a) == 20
    assert tensor_bytes([a, b]) == 20 + 72
    assert tensor_bytes(t for t in (a, b)) == 20 + 72
    nested = {"state": {0: {"exp_avg": b, "step": 3}}, "param_groups": [{"lr": 0.1}], "x": "s"}
    assert tensor_bytes(nested) == 72
    # distinct tensors with equal values are distinct bytes; views of one tensor are not
    assert tensor_bytes([b, b.clone()]) == 144
    assert tensor_bytes([b, b.detach()]) == 72
    assert tensor_bytes([]) == 0
    assert tensor_bytes(torch.empty(4, 4, device="meta")) == 64
