"""Low-bit weights for the binary adapters: Gaussian-quantile codebook, STE, packed storage.

The quantizer of Bi-AdaptFormer / Bi-LoRA (Jie et al., ICCV 2023), re-implemented from the
paper's description. A :class:`QLinear` normalises its weight matrix by its own mean and
standard deviation (with gradients through both), rounds the normalised weights to the nearest
level of a codebook fitted to a standard normal, and scales back::

    μ, σ = mean(W), std(W);  Wn = (W − μ) / (σ + 1e-5);  W_eff = Q_b(Wn) · σ + μ

``Q_b`` passes gradients straight through (STE). The codebook (:func:`gaussian_codebook`) is the
fixed point of "thresholds = midpoints of adjacent levels, level = Φ⁻¹ of its bin's middle
probability": the levels are the bins' conditional medians, the L1-optimal quantizer of N(0, 1)
(1 bit: ±0.6745, against ±0.798 for the L2-optimal one). A task stores the codes packed
``8 / bits`` per byte plus ``μ, σ`` in fp32 per matrix (:meth:`QLinear.packed`); loading them
(:meth:`QLinear.load_packed`) gives the very weights the trained layer used.

This module imports torch at import time: only the methods' ``attach`` and the tests import it.
"""

from __future__ import annotations

import functools

import torch

__all__ = [
    "BITS",
    "EPS",
    "QLinear",
    "gaussian_codebook",
    "pack_codes",
    "packed_size",
    "quantize",
    "unpack_codes",
]

#: Bit widths with a codebook; 32 means a plain fp32 weight.
BITS = (1, 2, 4, 8)
#: Added to σ before normalising, as in the paper, so a constant matrix does not divide by 0.
EPS = 1e-5


@functools.cache
def _codebook(bits: int, iterations: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    n = 2**bits
    # Start from the quantiles at the centres of n equal-probability bins.
    levels = normal.icdf((torch.arange(n, dtype=torch.float64) + 0.5) / n)
    for _ in range(iterations):
        thresholds = (levels[1:] + levels[:-1]) / 2
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), normal.cdf(thresholds),
                           torch.ones(1, dtype=torch.float64)])  # fmt: skip
        levels = normal.icdf((edges[1:] + edges[:-1]) / 2)
    thresholds = (levels[1:] + levels[:-1]) / 2
    return tuple(levels.tolist()), tuple(thresholds.tolist())


def gaussian_codebook(bits: int, iterations: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``2**bits`` levels and ``2**bits - 1`` thresholds (float32, ascending) for N(0, 1).

    A fixed-point iteration (500 steps, the paper's count): thresholds are the midpoints of
    adjacent levels, and each level is Φ⁻¹ of the middle probability of its bin, i.e. the
    bin's conditional median. 1 bit: ±0.6745, threshold 0; 2 bits: ±0.378, ±1.266,
    thresholds 0, ±0.822. 1, 2 and 4 bits have converged by then; at 8 bits the outer levels
    are still moving slowly (the innermost by ~1e-3), and we keep the paper's 500-step codebook.
    """
    if bits not in BITS:
        raise ValueError(f"no codebook for {bits} bits; choose one of {BITS}")
    levels, thresholds = _codebook(bits, iterations)
    return torch.tensor(levels), torch.tensor(thresholds)


def quantize(wn: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Codes (int64): for each entry of ``wn``, the index of its nearest level, given the
    codebook's ``thresholds`` (a tie goes to the lower level)."""
    return torch.bucketize(wn, thresholds)


class _STE(torch.autograd.Function):
    """``levels[code(wn)]`` forward, identity backward: the straight-through estimator.

    The same gradient as ``Q(wn).detach() + wn − wn.detach()``, but the forward value is the
    level itself, bit for bit, so a model rebuilt from the stored codes computes exactly what
    the trained one did.
    """

    @staticmethod
    def forward(
        ctx: object, wn: torch.Tensor, levels: torch.Tensor, thresholds: torch.Tensor
    ) -> torch.Tensor:
        return levels[quantize(wn, thresholds)]

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


def packed_size(count: int, bits: int) -> int:
    """Bytes that ``count`` codes of ``bits`` bits take packed."""
    per_byte = 8 // bits
    return -(-count // per_byte)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Flat uint8 array with ``8 // bits`` codes per byte (the first code in the low bits)."""
    if bits not in BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; choose one of {BITS}")
    per_byte = 8 // bits
    flat = codes.reshape(-1).to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes out of range for {bits} bits")
    pad = (-flat.numel()) % per_byte
    flat = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per_byte)
    shifts = torch.arange(per_byte, device=flat.device, dtype=torch.int32) * bits
    return (flat << shifts).sum(-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first ``count`` codes of :func:`pack_codes`'s output, as int64."""
    if bits not in BITS:
        raise ValueError(f"cannot unpack {bits}-bit codes; choose one of {BITS}")
    per_byte = 8 // bits
    shifts = torch.arange(per_byte, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.to(torch.int32).reshape(-1, 1) >> shifts) & (2**bits - 1)
    return codes.reshape(-1)[:count].to(torch.int64)


class QLinear(torch.nn.Module):
    """A bias-free linear layer whose weight is quantized to ``bits`` bits while it trains.

    ``bits=32`` is a plain fp32 ``x Wᵀ``. Otherwise the forward uses
    ``W_eff = Q_b((W − μ)/(σ + ε)) · σ + μ`` with μ, σ the matrix's mean and (unbiased)
    standard deviation, differentiated through, and ``Q_b`` straight-through. After
    :meth:`load_packed` the layer uses the dequantized stored weight instead of ``weight``.
    """

    def __init__(self, in_features: int, out_features: int, bits: int) -> None:
        super().__init__()
        if bits != 32 and bits not in BITS:
            raise ValueError(f"bits must be 32 or one of {BITS}, got {bits}")
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        self.weight = torch.nn.Parameter(torch.empty(out_features, in_features))
        if bits != 32:
            levels, thresholds = gaussian_codebook(bits)
            self.register_buffer("levels", levels, persistent=False)
            self.register_buffer("thresholds", thresholds, persistent=False)
        #: The dequantized weight a task state was loaded into (``None``: use ``weight``).
        self.register_buffer("loaded", None, persistent=False)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and σ of the weight (0-dim, with gradients)."""
        return self.weight.mean(), self.weight.std()

    def effective_weight(self) -> torch.Tensor:
        """The weight the forward multiplies by (quantized, STE for its gradient)."""
        if self.loaded is not None:
            return self.loaded
        if self.bits == 32:
            return self.weight
        mu, sigma = self.stats()
        wn = (self.weight - mu) / (sigma + EPS)
        return _STE.apply(wn, self.levels, self.thresholds) * sigma + mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.effective_weight())

    def packed(self) -> dict[str, torch.Tensor]:
        """What a task stores: packed ``codes`` (uint8) and ``stats`` = [μ, σ] (fp32).

        At 32 bits, the fp32 ``weight`` itself.
        """
        if self.loaded is not None:
            raise RuntimeError("this QLinear holds a loaded task state; pack the trained one")
        if self.bits == 32:
            return {"weight": self.weight.detach().float()}
        with torch.no_grad():
            mu, sigma = self.stats()
            codes = quantize((self.weight - mu) / (sigma + EPS), self.thresholds)
            return {
                "codes": pack_codes(codes, self.bits),
                "stats": torch.stack([mu, sigma]).float(),
            }

    def load_packed(self, state: dict[str, torch.Tensor]) -> None:
        """Use the weight stored by :meth:`packed` from now on (exactly the trained one)."""
        dtype, device = self.weight.dtype, self.weight.device
        if self.bits == 32:
            weight = state["weight"]
        else:
            count = self.weight.numel()
            codes = unpack_codes(state["codes"].to(device), self.bits, count)
            stats = state["stats"].to(device, dtype)
            weight = self.levels[codes].reshape(self.weight.shape) * stats[1] + stats[0]
        self.loaded = weight.to(device, dtype).detach()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"
