"""MoLE's lookup table: ``[V, W]`` expert outputs stored at a float dtype or quantized, whose
rows a step gathers by token id, copies to the device and decodes there.

A :class:`Codec` says how a row is stored: :class:`FloatCodec` as is (fp32/fp16/bf16);
:class:`Int8Codec` and :class:`NF4Codec` through bitsandbytes' blockwise quantizers (8-bit
dynamic map, and QLoRA's 4-bit NormalFloat), one fp32 absmax per ``block`` values. The block
divides the row, so a row's codes and scales are rows of their own tensors and gathering by
id is exact; only those bytes cross to the device, where they are dequantized.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from harness.api import Unsupported

__all__ = ["CODECS", "Codec", "FloatCodec", "Int8Codec", "LookupTable", "NF4Codec", "codec"]

#: The float storage dtypes, by the name a suite gives.
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Codec:
    """How one ``[n, width]`` block of fp32 rows is stored as row-aligned parts."""

    name: str

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parts (first dim ``n``) that store ``rows``."""
        raise NotImplementedError

    def decode(self, parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        """``[n, width]`` values (fp32 or the float dtype) from gathered parts."""
        raise NotImplementedError


class FloatCodec(Codec):
    """The table at a float dtype: one part, the rows themselves."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = FLOAT_DTYPES[name]

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (rows.to(self.dtype),)

    def decode(self, parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        return parts[0]


def _bnb() -> Any:
    # Its CPU backend warns at import, on AVX512-BF16 CPUs, that an optional 4-bit matmul
    # kernel package is missing; the table only quantizes and dequantizes.
    quiet = logging.getLogger("bitsandbytes.backends.cpu.ops")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import bitsandbytes.functional as bnb
    except ImportError as exc:
        raise Unsupported("a quantized lookup table (int8, nf4) needs bitsandbytes") from exc
    finally:
        quiet.setLevel(level)
    return bnb


class _BlockwiseCodec(Codec):
    """bitsandbytes blockwise quantization: codes plus one fp32 absmax per ``block`` values,
    decoded against the quantizer's code map (kept once per device, not per row)."""

    def __init__(self, block: int) -> None:
        self.block = block
        self._bnb = _bnb()
        self._code: dict[torch.device, torch.Tensor] = {}

    def code_on(self, device: torch.device) -> torch.Tensor:
        if device not in self._code:
            self._code[device] = next(iter(self._code.values())).to(device)
        return self._code[device]

    def _keep_code(self, code: torch.Tensor) -> None:
        self._code.setdefault(code.device, code)


class Int8Codec(_BlockwiseCodec):
    """bitsandbytes' 8-bit blockwise quantization (dynamic map): 1 byte a value."""

    name = "int8"

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        codes, state = self._bnb.quantize_blockwise(rows.float().contiguous(), blocksize=self.block)
        self._keep_code(state.code)
        return codes.view(rows.shape[0], -1), state.absmax.view(rows.shape[0], -1)

    def decode(self, parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        codes, absmax = parts
        state = self._bnb.QuantState(
            absmax=absmax.reshape(-1), code=self.code_on(codes.device), blocksize=self.block,
            dtype=torch.float32,
        )  # fmt: skip
        return self._bnb.dequantize_blockwise(codes.contiguous(), state).view(-1, width)


class NF4Codec(_BlockwiseCodec):
    """bitsandbytes' 4-bit NormalFloat (QLoRA): two values a byte."""

    name = "nf4"

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        codes, state = self._bnb.quantize_4bit(
            rows.float().contiguous(), blocksize=self.block, quant_type="nf4"
        )
        self._keep_code(state.code)
        return codes.view(rows.shape[0], -1), state.absmax.view(rows.shape[0], -1)

    def decode(self, parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
        codes, absmax = parts
        state = self._bnb.QuantState(
            absmax=absmax.reshape(-1), shape=torch.Size((codes.shape[0], width)),
            code=self.code_on(codes.device), blocksize=self.block, quant_type="nf4",
            dtype=torch.float32,
        )  # fmt: skip
        return self._bnb.dequantize_4bit(codes.reshape(-1, 1), state)


#: Storage names a suite gives (``lut_dtype``).
CODECS = (*FLOAT_DTYPES, "int8", "nf4")


def codec(name: str, block: int) -> Codec:
    """The codec for ``lut_dtype`` ``name``; ``block`` is the quantized ones' block size."""
    if name in FLOAT_DTYPES:
        return FloatCodec(name)
    if name == "int8":
        return Int8Codec(block)
    if name == "nf4":
        return NF4Codec(block)
    raise ValueError(f"unknown lookup table dtype {name!r} (one of {', '.join(CODECS)})")


@dataclass
class TableError:
    """How far the stored table is from the fp32 expert outputs it was built from."""

    rel_rms: float
    max_abs: float


class LookupTable:
    """A ``[vocab, width]`` table as the codec's parts (every part's first dim is the vocab)."""

    def __init__(self, codec: Codec, parts: tuple[torch.Tensor, ...], width: int) -> None:
        self.codec = codec
        self.parts = parts
        self.width = width

    @classmethod
    def build(
        cls,
        rows: Callable[[int, int], torch.Tensor],
        vocab: int,
        width: int,
        codec: Codec,
        chunk: int = 4096,
    ) -> tuple[LookupTable, TableError]:
        """Encode ``rows(start, stop)`` (fp32 ``[stop − start, width]``) chunk by chunk, on
        the CPU, and measure the stored table's error against them on the way."""
        block = getattr(codec, "block", None)
        if block is not None and width % block:
            raise ValueError(
                f"lut_block {block} does not divide the table's row of {width} values "
                f"(layers · experts · hidden size)"
            )
        chunks: list[tuple[torch.Tensor, ...]] = []
        err_sq = ref_sq = max_abs = 0.0
        for start in range(0, vocab, chunk):
            exact = rows(start, min(vocab, start + chunk)).float().cpu()
            parts = codec.encode(exact)
            diff = codec.decode(parts, width).float() - exact
            err_sq += float(diff.square().sum())
            ref_sq += float(exact.square().sum())
            max_abs = max(max_abs, float(diff.abs().max()))
            chunks.append(parts)
        parts = tuple(torch.cat(list(column)) for column in zip(*chunks, strict=True))
        error = TableError((err_sq / ref_sq) ** 0.5 if ref_sq else 0.0, max_abs)
        return cls(codec, parts, width), error

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def to(self, device: Any) -> LookupTable:
        return LookupTable(self.codec, tuple(p.to(device) for p in self.parts), self.width)

    def pin_memory(self) -> LookupTable:
        return LookupTable(self.codec, tuple(p.pin_memory() for p in self.parts), self.width)

    def row_bytes(self) -> int:
        """Bytes one token id's row takes (what a lookup moves per token)."""
        return sum(p[0].numel() * p.element_size() for p in self.parts)

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parts)

    def gather(self, ids: torch.Tensor, out: Sequence[torch.Tensor] | None = None) -> list:
        """Every part's rows for ``ids`` (on the table's device), into ``out`` if given."""
        if out is None:
            return [p.index_select(0, ids) for p in self.parts]
        for part, into in zip(self.parts, out, strict=True):
            torch.index_select(part, 0, ids, out=into)
        return list(out)

    def decode(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.codec.decode(parts, self.width)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Decoded ``[len(ids), width]`` rows (on the table's device)."""
        return self.decode(self.gather(ids.to(self.device)))
