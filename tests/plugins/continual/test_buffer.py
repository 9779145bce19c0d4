from __future__ import annotations

import pytest
import torch
from harness_plugins.continual.buffer import ReservoirBuffer
from scipy.stats import chisquare

STREAM, CAPACITY, TRIALS = 40, 8, 4000


def inclusion_counts(offer: str) -> torch.Tensor:
    """How often each position of a stream of STREAM examples ends in the buffer, over TRIALS
    streams offered in batches of ``offer``: ``one`` example or ``mixed`` sizes."""
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(STREAM)
    sizes = [1] * STREAM if offer == "one" else [3, 7, 1, 12, 5, 2, 10]
    for _ in range(TRIALS):
        buffer = ReservoirBuffer(CAPACITY, logits=False, generator=generator)
        start = 0
        for size in sizes:
            ids = torch.arange(start, start + size)
            buffer.add(ids[:, None].float(), ids)
            start += size
        counts[buffer.y] += 1
    return counts


@pytest.mark.parametrize("offer", ["one", "mixed"])
def test_reservoir_keeps_every_example_with_equal_probability(offer: str) -> None:
    counts = inclusion_counts(offer)
    assert counts.sum() == TRIALS * CAPACITY  # the buffer is always full at the end
    expected = TRIALS * CAPACITY / STREAM
    # Chi-square goodness of fit to the uniform inclusion probability CAPACITY / STREAM.
    assert chisquare(counts.numpy(), [expected] * STREAM).pvalue > 1e-3


def test_the_uniformity_test_rejects_a_biased_buffer() -> None:
    """The statistic has power: keeping the most recent examples fails it by far."""
    counts = torch.zeros(STREAM)
    counts[STREAM - CAPACITY :] = TRIALS
    expected = TRIALS * CAPACITY / STREAM
    assert chisquare(counts.numpy(), [expected] * STREAM).pvalue < 1e-6


def test_the_buffer_never_exceeds_its_budget() -> None:
    generator = torch.Generator().manual_seed(1)
    buffer = ReservoirBuffer(5, logits=True, generator=generator)
    assert buffer.nbytes() == 0 and len(buffer.sample(3)) == 0
    offered = 0
    for size in [1, 2, 9, 1, 30, 4]:
        x = torch.randn(size, 3)
        buffer.add(x, torch.arange(size) % 4, logits=torch.randn(size, 6))
        offered += size
        assert buffer.seen == offered and buffer.size == min(offered, 5)
        assert len(buffer.x) == len(buffer.y) == len(buffer.logits) == 5
        # 5 x (3 float32 inputs + an int64 label + 6 float32 logits)
        assert buffer.nbytes() == 5 * (3 * 4 + 8 + 6 * 4)
        slots = buffer.sample(4)
        assert len(slots) == min(4, buffer.size) and len(set(slots.tolist())) == len(slots)
        assert bool((slots < buffer.size).all())


def test_sampling_from_old_classes_and_class_balanced() -> None:
    generator = torch.Generator().manual_seed(2)
    buffer = ReservoirBuffer(20, logits=False, generator=generator)
    labels = torch.tensor([0] * 16 + [1] * 2 + [2] * 2)
    buffer.add(torch.randn(20, 2), labels)
    old = buffer.sample(10, below=2)
    assert len(old) == 10 and bool((buffer.y[old] < 2).all())
    assert len(buffer.sample(10, below=0)) == 0
    balanced = torch.cat([buffer.sample(10, below=2, balanced=True) for _ in range(200)])
    share_of_1 = float((buffer.y[balanced] == 1).float().mean())
    assert 0.45 < share_of_1 < 0.55  # 2 of 18 stored, half of the replay


def test_a_buffer_needs_room() -> None:
    with pytest.raises(ValueError, match="at least one example"):
        ReservoirBuffer(0, logits=False, generator=torch.Generator())
