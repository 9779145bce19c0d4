"""``kivi``: KIVI — asymmetric low-bit KV quantization with a full-precision residual window.

KIVI (Liu et al., ICML 2024) quantizes keys *per channel* (groups of ``group_size`` consecutive
tokens within one channel: keys have outlier channels) and values *per token* (groups of
``group_size`` consecutive channels), asymmetric min-max with an fp16 scale and zero per group,
and keeps the most recent tokens in full precision. The quantizer is :mod:`.quant`, with real
bit packing, so the resident bytes reported are the bytes actually held. transformers'
``QuantizedCache`` is not used: its backends need optimum-quanto or hqq (not installed), and it
groups values per channel as well.

The residual window: values of the ``residual`` most recent tokens stay in full precision and
each older one is quantized as soon as it leaves the window (KIVI's value rule). Keys can only
be quantized in whole token groups, so the key residual holds the ``residual`` most recent
tokens plus the ``(seen − residual) mod group_size`` before them; every time ``group_size``
more have left the window they are quantized as one group. Prefill attends in full precision
(everything is still in the residual then), as in KIVI. ``bits=1`` takes the level placement of
``levels``: ``"minmax"`` is plain KIVI, ``"quartile"`` is SpeCache's 1-bit fix (levels at 1/4
and 3/4 of each group's range).

Each step dequantizes the packed past and hands it to the model's own attention: what stays
resident is KIVI's, but the step holds a transient dequantized copy, and latency is not
KIVI's (KIVI fuses dequantization into its attention kernels).

Resident bytes — what the layer allocates on the device — per layer and KV head after ``T``
tokens, head dim ``D``, ``s`` bytes per element of the model's dtype (the residual is kept in
it), ``Tk = g·⌊max(T − residual, 0) / g⌋`` quantized keys and ``Tv = max(T − residual, 0)``
quantized values::

    keys   = Tk·⌈D·bits/8⌉ + (Tk/g)·D·4 + (T − Tk)·D·s
    values = Tv·(⌈D·bits/8⌉ + ⌈D/g⌉·4) + (T − Tv)·D·s

i.e. ``bits + 32/g`` bits per quantized element for both (KIVI-2bit g32: 3 bits, 5.3× less
than fp16; 1-bit g32: 2 bits, 8×; 1-bit g64: 1.5 bits, 10.7×), plus the residual at full
precision. Multiply by ``layers · kv_heads`` for the cache. Nothing is preallocated: every
flush concatenates the packed codes, scales and zeros, and clones what stays in the window,
into tensors of exactly these sizes (the dequantized copy a step attends over is freed after
it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from harness.api import Params, RunContext
from harness.scenarios.kv_protocol import allocated_bytes

from .common import EvictingLayer, measured_cache, num_layers, transformers_class
from .quant import Packed, concat, dequantize, quantize_keys, quantize_values

if TYPE_CHECKING:
    import torch

__all__ = ["KIVI", "KIVILayer", "KIVIParams"]


class KIVIParams(Params):
    """Bit width, quantization group size, full-precision residual window (tokens)."""

    bits: Literal[1, 2, 4, 8] = 2
    """Bits per quantized K/V element (packed; plus an fp16 scale and zero per group)."""
    group_size: int = Field(32, gt=0)
    """Tokens per key group (per channel) and channels per value group (per token)."""
    residual: int = Field(128, ge=0)
    """Most recent tokens kept in full precision; older ones are quantized."""
    levels: Literal["minmax", "quartile"] = "minmax"
    """Levels: ``minmax`` (KIVI) or ``quartile`` (1/4 and 3/4 of the range; bits=1 only)."""

    @model_validator(mode="after")
    def _quartile_is_one_bit(self) -> KIVIParams:
        if self.levels == "quartile" and self.bits != 1:
            raise ValueError("levels='quartile' is the 1-bit level placement; use bits=1")
        return self


class KIVILayer(EvictingLayer):
    """One layer (base ``CacheLayerMixin``): packed low-bit K/V, full-precision residual.

    ``keys``/``values`` hold the full-precision residuals (the key one may be up to
    ``group_size - 1`` tokens longer); ``quantized_keys``/``quantized_values`` the older tokens.
    Every token seen is returned to attention (dequantized), so none is evicted.
    """

    def __init__(self, layer_idx: int, p: KIVIParams) -> None:
        super().__init__(layer_idx)
        self.p = p
        self.quantized_keys: Packed | None = None
        self.quantized_values: Packed | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        keys, values = self.append(key_states, value_states)
        if self.quantized_keys is not None:
            keys = torch.cat([dequantize(self.quantized_keys, self.dtype), keys], dim=-2)
        if self.quantized_values is not None:
            values = torch.cat([dequantize(self.quantized_values, self.dtype), values], dim=-2)
        self._flush()
        return keys, values

    def _flush(self) -> None:
        """Quantize what has left the residual window: whole key groups, every value."""
        p = self.p
        key_excess = self.keys.shape[-2] - p.residual
        n = key_excess // p.group_size * p.group_size
        if n > 0:
            chunk = quantize_keys(self.keys[..., :n, :], p.bits, p.group_size, p.levels)
            self.quantized_keys = _append(self.quantized_keys, chunk)
            self.keys = self.keys[..., n:, :].clone()  # a view would keep the old storage alive
        n = self.values.shape[-2] - p.residual
        if n > 0:
            chunk = quantize_values(self.values[..., :n, :], p.bits, p.group_size, p.levels)
            self.quantized_values = _append(self.quantized_values, chunk)
            self.values = self.values[..., n:, :].clone()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.quantized_keys = self.quantized_values = None

    def resident_bytes(self) -> int:
        packed = (q for q in (self.quantized_keys, self.quantized_values) if q is not None)
        stored = [t for q in packed for t in (q.codes, q.scale, q.zero)]
        return allocated_bytes(self.keys, self.values, *stored)


def _append(stored: Packed | None, chunk: Packed) -> Packed:
    return chunk if stored is None else concat(stored, chunk)


class KIVI:
    """KIVI: per-channel keys, per-token values, low-bit packed, full-precision residual."""

    name = "kivi"
    version = "1"
    description = (
        "KIVI: asymmetric group quantization of the KV cache (keys per channel, values per "
        "token, real bit packing) with a full-precision window of recent tokens"
    )
    scenarios = ("generate", "lm_eval")
    params = KIVIParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        p = KIVIParams(**params)
        layer = transformers_class(KIVILayer, "CacheLayerMixin")
        return measured_cache([layer(i, p) for i in range(num_layers(model))])
