"""KIVI-style asymmetric group quantization of K/V tensors, with real bit packing.

The layout every KV-cache method of this family shares (and a kernel can mirror):

* A tensor ``x`` of shape ``[..., T, D]`` (tokens, channels; e.g. ``[batch, heads, T, D]``).
* **Keys** are quantized *per channel* (``axis="channel"``): each channel is cut into groups
  of ``group_size`` consecutive tokens — keys have outlier channels, so a group must not mix
  channels (KIVI §3). ``scale``/``zero`` have shape ``[..., ceil(T / g), D]``.
* **Values** are quantized *per token* (``axis="token"``): each token is cut into groups of
  ``group_size`` consecutive channels. ``scale``/``zero`` have shape ``[..., T, ceil(D / g)]``.
* A last group shorter than ``group_size`` is a group of its own.
* Element ``x = code * scale + zero``, ``code`` in ``[0, 2**bits - 1]``. For ``bits >= 2``
  (and 1-bit ``"minmax"``) this is plain KIVI: ``zero = min``, ``scale = (max - min) /
  (2**bits - 1)``. 1-bit ``"quartile"`` is SpeCache's fix: ``zero = (3 min + max) / 4``,
  ``scale = (max - min) / 2``, i.e. the two levels sit at 1/4 and 3/4 of the range.
  Either way the error is at most ``scale / 2`` (up to the fp16 rounding of scale and zero).
* ``scale`` and ``zero`` are stored in fp16 (so K/V must lie within fp16's range); codes are
  computed against the stored values.
* **Packing**: codes are stored as ``uint8``, shape ``[..., T, ceil(D * bits / 8)]``, packed
  along the last dim: channel ``j`` lives in byte ``j // (8 // bits)`` at bit offset
  ``(j % (8 // bits)) * bits`` (lowest bits first); padding codes are 0.

Two packed key chunks concatenate along tokens (:func:`concat`) when the first holds whole
token groups, which is how a cache appends one quantized group at a time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = [
    "Packed",
    "concat",
    "dequantize",
    "pack_codes",
    "packed_bytes",
    "quantize_keys",
    "quantize_values",
    "unpack_codes",
]

Axis = Literal["channel", "token"]
LevelMode = Literal["minmax", "quartile"]
BITS = (1, 2, 4, 8)
#: Smallest stored scale: a constant group gets codes 0 and dequantizes to its zero exactly.
MIN_SCALE = 1e-5


@dataclass(frozen=True)
class Packed:
    """A quantized ``[..., T, D]`` tensor: packed codes plus fp16 scale and zero per group."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    group_size: int
    axis: Axis
    shape: tuple[int, ...]
    dtype: torch.dtype


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack codes ``[..., D]`` (each ``< 2**bits``) into ``uint8`` ``[..., ceil(D * bits / 8)]``."""
    import torch

    _check_bits(bits)
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    per = 8 // bits
    pad = -codes.shape[-1] % per
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    grouped = codes.reshape(*codes.shape[:-1], -1, per).to(torch.int32)
    shifts = torch.arange(per, device=codes.device, dtype=torch.int32) * bits
    return (grouped << shifts).sum(dim=-1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: ``uint8`` codes ``[..., length]`` from packed bytes."""
    import torch

    _check_bits(bits)
    if bits == 8:
        return packed[..., :length]
    per = 8 // bits
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :length]


def quantize_keys(
    x: torch.Tensor, bits: int, group_size: int, level_mode: LevelMode = "minmax"
) -> Packed:
    """Quantize keys ``[..., T, D]`` per channel, in groups of ``group_size`` tokens."""
    return _quantize(x, bits, group_size, "channel", level_mode)


def quantize_values(
    x: torch.Tensor, bits: int, group_size: int, level_mode: LevelMode = "minmax"
) -> Packed:
    """Quantize values ``[..., T, D]`` per token, in groups of ``group_size`` channels."""
    return _quantize(x, bits, group_size, "token", level_mode)


def dequantize(p: Packed, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The ``[..., T, D]`` tensor ``p`` stands for, in ``dtype`` (default: the original's)."""
    tokens, channels = p.shape[-2], p.shape[-1]
    codes = unpack_codes(p.codes, p.bits, channels).float()
    dim = -2 if p.axis == "channel" else -1
    length = tokens if p.axis == "channel" else channels
    scale = p.scale.float().repeat_interleave(p.group_size, dim=dim).narrow(dim, 0, length)
    zero = p.zero.float().repeat_interleave(p.group_size, dim=dim).narrow(dim, 0, length)
    return (codes * scale + zero).to(dtype or p.dtype)


def packed_bytes(p: Packed) -> int:
    """Bytes ``p`` holds: packed codes plus its fp16 scales and zeros."""
    return sum(t.numel() * t.element_size() for t in (p.codes, p.scale, p.zero))


def concat(first: Packed, second: Packed) -> Packed:
    """``first`` followed by ``second`` along tokens (same bits, group size, axis, lead dims).

    Per-channel (key) chunks need ``first`` to hold whole token groups, else a group would
    straddle the seam.
    """
    import torch

    if (first.bits, first.group_size, first.axis) != (second.bits, second.group_size, second.axis):
        raise ValueError("can only concatenate chunks quantized the same way")
    if first.shape[:-2] != second.shape[:-2] or first.shape[-1] != second.shape[-1]:
        raise ValueError(f"shapes {first.shape} and {second.shape} do not concatenate on tokens")
    if first.axis == "channel" and first.shape[-2] % first.group_size:
        raise ValueError("per-channel chunks concatenate only after whole token groups")
    return Packed(
        codes=torch.cat([first.codes, second.codes], dim=-2),
        scale=torch.cat([first.scale, second.scale], dim=-2),
        zero=torch.cat([first.zero, second.zero], dim=-2),
        bits=first.bits,
        group_size=first.group_size,
        axis=first.axis,
        shape=(*first.shape[:-2], first.shape[-2] + second.shape[-2], first.shape[-1]),
        dtype=first.dtype,
    )


def _check_bits(bits: int) -> None:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")


def _quantize(x: torch.Tensor, bits: int, group_size: int, axis: Axis, mode: LevelMode) -> Packed:
    import torch

    _check_bits(bits)
    if group_size <= 0:
        raise ValueError(f"group_size must be positive, got {group_size}")
    if mode not in ("minmax", "quartile"):
        raise ValueError(f"level_mode must be 'minmax' or 'quartile', got {mode!r}")
    if x.dim() < 2:
        raise ValueError(f"need a [..., T, D] tensor, got shape {tuple(x.shape)}")
    shape = tuple(x.shape)
    # Group dim: tokens (-2) for per-channel keys, channels (-1) for per-token values.
    dim = x.dim() - 2 if axis == "channel" else x.dim() - 1
    length = shape[dim]
    groups = math.ceil(length / group_size)
    xf = x.detach().float()
    pad = groups * group_size - length
    if pad:  # repeat the last element: a group's min and max stay those of its real elements
        xf = torch.cat([xf, xf.narrow(dim, length - 1, 1).expand(*_with(shape, dim, pad))], dim)
    grouped = xf.reshape(*shape[:dim], groups, group_size, *shape[dim + 1 :])
    low = grouped.amin(dim=dim + 1)
    high = grouped.amax(dim=dim + 1)
    qmax = 2**bits - 1
    if bits == 1 and mode == "quartile":
        zero, scale = (3 * low + high) / 4, (high - low) / 2
    else:
        zero, scale = low, (high - low) / qmax
    scale16 = scale.clamp(min=MIN_SCALE).half()
    zero16 = zero.half()
    codes = (grouped - zero16.float().unsqueeze(dim + 1)) / scale16.float().unsqueeze(dim + 1)
    codes = torch.round(codes).clamp(0, qmax).reshape(xf.shape).narrow(dim, 0, length)
    return Packed(
        codes=pack_codes(codes, bits),
        scale=scale16,
        zero=zero16,
        bits=bits,
        group_size=group_size,
        axis=axis,
        shape=shape,
        dtype=x.dtype,
    )


def _with(shape: tuple[int, ...], dim: int, size: int) -> tuple[int, ...]:
    return (*shape[:dim], size, *shape[dim + 1 :])
