"""The fused low-bit kernels against their PyTorch reference.

The Triton kernels run here on CPU tensors in Triton's interpreter, which must be switched
on (``TRITON_INTERPRET=1``) before Triton is imported — hence a subprocess. The real CUDA
kernels are checked in ``tests/gpu/test_specache_gpu.py``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from harness_plugins.kvcache.lowbit_kernels import (
    aggregate_values,
    aggregate_values_reference,
    score_keys,
    score_keys_reference,
)
from harness_plugins.kvcache.quant import quantize_keys, quantize_values

# Shapes that exercise the masking: head dims that are not a power of two, token counts that
# are not a multiple of the tile, fewer query rows than a tile, several value splits, and
# prefix views of larger buffers (as the cache passes them).
INTERPRETED = textwrap.dedent(
    """
    import torch
    from harness_plugins.kvcache import lowbit_triton
    from harness_plugins.kvcache.lowbit_kernels import (
        aggregate_values_reference, score_keys_reference,
    )
    from harness_plugins.kvcache.quant import Packed, quantize_keys, quantize_values

    def prefix(p, tokens, stats):
        return Packed(p.codes[:, :tokens], p.scale[:, :stats], p.zero[:, :stats], p.bits,
                      p.group_size, p.axis, (p.shape[0], tokens, p.shape[2]), p.dtype)

    torch.manual_seed(0)
    cases = [(1, 24, 16, 96, 70, 3), (2, 16, 32, 256, 200, 8), (4, 32, 8, 72, 65, 17),
             (8, 16, 64, 4800, 4700, 4)]
    for dtype in (torch.float32, torch.float16):
        for bits, dim, group, stored, tokens, rows in cases:
            keys = quantize_keys(torch.randn(2, stored, dim), bits, group, "quartile")
            keys = prefix(keys, tokens // group * group, tokens // group)
            query = torch.randn(2, rows, dim).to(dtype)
            got = lowbit_triton.score_keys(query, keys)
            want = score_keys_reference(query, keys)
            assert got.dtype == torch.float32 and got.shape == want.shape, (got.shape, want.shape)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)

            values = quantize_values(torch.randn(2, stored, dim), bits, group)
            values = prefix(values, tokens, tokens)
            probs = torch.softmax(torch.randn(2, rows, tokens + 5), dim=-1)[..., :tokens]
            got = lowbit_triton.aggregate_values(probs, values, dtype)
            want = aggregate_values_reference(probs, values, dtype)
            assert got.dtype == torch.float32 and got.shape == want.shape, (got.shape, want.shape)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    print("ok")
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="triton is not installed (pip install triton): the kernels cannot be interpreted",
)
def test_kernels_match_the_reference_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "ok"


def test_cpu_dispatch_is_the_reference():
    torch.manual_seed(0)
    keys = quantize_keys(torch.randn(2, 64, 16), 1, 32, "quartile")
    values = quantize_values(torch.randn(2, 64, 16), 2, 8)
    query = torch.randn(2, 3, 16)
    probs = torch.softmax(torch.randn(2, 3, 64), dim=-1)
    assert torch.equal(score_keys(query, keys), score_keys_reference(query, keys))
    assert torch.equal(
        aggregate_values(probs, values, torch.float32),
        aggregate_values_reference(probs, values, torch.float32),
    )


def test_reference_is_attention_over_the_dequantized_tensors():
    """Scores and outputs equal eager math over the dequantized K/V (fp32: exactly)."""
    from harness_plugins.kvcache.quant import dequantize

    torch.manual_seed(1)
    keys = quantize_keys(torch.randn(2, 40, 16), 2, 8)
    values = quantize_values(torch.randn(2, 40, 16), 4, 16)
    query = torch.randn(2, 5, 16)
    probs = torch.softmax(torch.randn(2, 5, 40), dim=-1)
    torch.testing.assert_close(score_keys_reference(query, keys), query @ dequantize(keys).mT)
    torch.testing.assert_close(
        aggregate_values_reference(probs, values, torch.float32), probs @ dequantize(values)
    )
