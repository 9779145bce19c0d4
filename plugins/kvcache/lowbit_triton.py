"""Triton kernels of :mod:`.lowbit_kernels`: low-bit K/V read packed, dequantized in registers.

Imported only when a CUDA tensor needs them (or by the tests, which run them on CPU tensors
under ``TRITON_INTERPRET=1``). Each program loads a tile of packed codes plus the fp16 scales
and zeros that cover it, unpacks and dequantizes the tile in registers, rounds it to the
model's dtype and multiplies it with every query row of its KV head at once (``tl.dot``,
float32 accumulation) — the dequantized tensor never exists in memory. HBM traffic is the
packed codes plus the group statistics: about 1.5 bits per key element at 1 bit and g = 64,
against 16 for a bf16 cache.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quant import Packed

__all__ = ["aggregate_values", "score_keys"]

#: Tokens per tile. ``tl.dot`` needs every dimension of a tile to be at least 16.
BLOCK_T = 64
#: Programs per KV head of the value kernel aim at this many tokens each (split-K).
TOKENS_PER_PROGRAM = 2048

_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _unpack(codes_ptr, row_offsets, offs_d, mask, BITS: tl.constexpr):
    """Codes ``[rows, BLOCK_D]`` (as float32) of the packed bytes at ``row_offsets``."""
    per: tl.constexpr = 8 // BITS
    byte = tl.load(codes_ptr + row_offsets[:, None] + (offs_d // per)[None, :], mask=mask, other=0)
    shift = (offs_d % per) * BITS
    return ((byte.to(tl.int32) >> shift[None, :]) & ((1 << BITS) - 1)).to(tl.float32)


@triton.jit
def _score_kernel(
    q_ptr, codes_ptr, scale_ptr, zero_ptr, out_ptr,
    n_tokens, rows,
    sq_h, sq_m, sc_h, sc_t, ss_h, ss_g, so_h, so_m,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    t_ok = offs_t < n_tokens
    d_ok = offs_d < D
    m_ok = offs_m < rows
    tile_ok = t_ok[:, None] & d_ok[None, :]

    code = _unpack(codes_ptr + head * sc_h, offs_t * sc_t, offs_d, tile_ok, BITS)
    # Keys: one scale/zero per channel and group of GROUP tokens.
    stat = head * ss_h + (offs_t // GROUP)[:, None] * ss_g + offs_d[None, :]
    scale = tl.load(scale_ptr + stat, mask=tile_ok, other=0).to(tl.float32)
    zero = tl.load(zero_ptr + stat, mask=tile_ok, other=0).to(tl.float32)
    keys = (code * scale + zero).to(q_ptr.dtype.element_ty)

    q = tl.load(
        q_ptr + head * sq_h + offs_m[:, None] * sq_m + offs_d[None, :],
        mask=m_ok[:, None] & d_ok[None, :],
        other=0,
    )
    if IEEE:
        scores = tl.dot(q, tl.trans(keys), input_precision="ieee")
    else:
        scores = tl.dot(q, tl.trans(keys))
    tl.store(
        out_ptr + head * so_h + offs_m[:, None] * so_m + offs_t[None, :],
        scores,
        mask=m_ok[:, None] & t_ok[None, :],
    )


@triton.jit
def _values_kernel(
    p_ptr, codes_ptr, scale_ptr, zero_ptr, out_ptr,
    n_tokens, rows, tokens_per_program,
    sp_h, sp_m, sc_h, sc_t, ss_h, ss_t, so_h, so_s, so_m,
    D: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr, DTYPE: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    split = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D
    m_ok = offs_m < rows
    start = split * tokens_per_program
    end = tl.minimum(start + tokens_per_program, n_tokens)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for first in range(start, end, BLOCK_T):
        offs_t = first + tl.arange(0, BLOCK_T)
        t_ok = offs_t < end
        tile_ok = t_ok[:, None] & d_ok[None, :]
        code = _unpack(codes_ptr + head * sc_h, offs_t * sc_t, offs_d, tile_ok, BITS)
        # Values: one scale/zero per token and group of GROUP channels.
        stat = head * ss_h + offs_t[:, None] * ss_t + (offs_d // GROUP)[None, :]
        scale = tl.load(scale_ptr + stat, mask=tile_ok, other=0).to(tl.float32)
        zero = tl.load(zero_ptr + stat, mask=tile_ok, other=0).to(tl.float32)
        values = (code * scale + zero).to(DTYPE)
        p = tl.load(
            p_ptr + head * sp_h + offs_m[:, None] * sp_m + offs_t[None, :],
            mask=m_ok[:, None] & t_ok[None, :],
            other=0,
        ).to(DTYPE)
        if IEEE:
            acc += tl.dot(p, values, input_precision="ieee")
        else:
            acc += tl.dot(p, values)
    tl.store(
        out_ptr + head * so_h + split * so_s + offs_m[:, None] * so_m + offs_d[None, :],
        acc,
        mask=m_ok[:, None] & d_ok[None, :],
    )


def _block(n: int) -> int:
    """A tile side ``tl.dot`` accepts: a power of two, at least 16."""
    return max(16, triton.next_power_of_2(n))


def _check(packed: Packed, axis: str, heads: int) -> None:
    if packed.axis != axis:
        raise ValueError(f"expected {axis}-quantized data, got {packed.axis}")
    if packed.shape[0] != heads or len(packed.shape) != 3:
        raise ValueError(f"expected [{heads}, N, D] packed data, got shape {packed.shape}")
    for t in (packed.codes, packed.scale, packed.zero):
        if t.stride(-1) != 1:
            raise ValueError("packed tensors must be contiguous along their last dim")


def score_keys(query: torch.Tensor, keys: Packed) -> torch.Tensor:
    """Fused :func:`.lowbit_kernels.score_keys_reference` (same arguments and result)."""
    heads, rows, dim = query.shape
    _check(keys, "channel", heads)
    n_tokens = keys.shape[1]
    query = query.contiguous()
    out = torch.empty(heads, rows, n_tokens, device=query.device, dtype=torch.float32)
    if n_tokens == 0:
        return out
    grid = (heads, triton.cdiv(n_tokens, BLOCK_T))
    _score_kernel[grid](
        query, keys.codes, keys.scale, keys.zero, out,
        n_tokens, rows,
        query.stride(0), query.stride(1), keys.codes.stride(0), keys.codes.stride(1),
        keys.scale.stride(0), keys.scale.stride(1), out.stride(0), out.stride(1),
        D=dim, BITS=keys.bits, GROUP=keys.group_size, IEEE=query.dtype == torch.float32,
        BLOCK_M=_block(rows), BLOCK_T=BLOCK_T, BLOCK_D=_block(dim),
    )  # fmt: skip
    return out


def aggregate_values(probs: torch.Tensor, values: Packed, dtype: torch.dtype) -> torch.Tensor:
    """Fused :func:`.lowbit_kernels.aggregate_values_reference` (same arguments and result)."""
    heads, rows, n_tokens = probs.shape
    _check(values, "token", heads)
    dim = values.shape[2]
    if n_tokens == 0:
        return torch.zeros(heads, rows, dim, device=probs.device, dtype=torch.float32)
    if probs.stride(-1) != 1:
        probs = probs.contiguous()
    splits = triton.cdiv(n_tokens, TOKENS_PER_PROGRAM)
    per_program = triton.cdiv(triton.cdiv(n_tokens, splits), BLOCK_T) * BLOCK_T
    out = torch.empty(heads, splits, rows, dim, device=probs.device, dtype=torch.float32)
    _values_kernel[(heads, splits)](
        probs, values.codes, values.scale, values.zero, out,
        n_tokens, rows, per_program,
        probs.stride(0), probs.stride(1), values.codes.stride(0), values.codes.stride(1),
        values.scale.stride(0), values.scale.stride(1), out.stride(0), out.stride(1),
        out.stride(2),
        D=dim, BITS=values.bits, GROUP=values.group_size, DTYPE=_DTYPES[dtype],
        IEEE=dtype == torch.float32, BLOCK_M=_block(rows), BLOCK_T=BLOCK_T,
        BLOCK_D=_block(dim),
    )  # fmt: skip
    return out.sum(dim=1)
