"""``offload``: transformers' layer-wise CPU offloading of the full cache.

``DynamicCache(config=..., offloading=True)``: each layer's full-precision K/V go to host memory
after the layer's ``update`` and the next layer's are prefetched back on a side stream, so only
about two layers' K/V are resident at a time while every decode step moves the whole cache
over PCIe. It is the baseline SpeCache compares its traffic against (k rows per head and layer
instead of whole layers). It needs a CUDA device: on CPU there is nothing to offload to, so the
method raises ``Unsupported`` there.

Reported: ``resident_bytes`` — what the K/V tensors currently on the device allocate (the
layers prefetched or not yet offloaded: a full cache's ``2 · kv_heads · head_dim · T · s``
bytes per such layer); ``host_bytes`` — those in host memory; counter ``h2d_bytes`` — bytes
the prefetches copied host→device (about the whole cache per decode step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harness.api import NoParams, RunContext, Unsupported
from harness.scenarios.kv_protocol import allocated_bytes

from .common import transformers_class

__all__ = ["Offload", "OffloadedCache"]


class OffloadedCache:
    """A ``DynamicCache`` (base added on use) that tells device from host bytes and counts
    the host→device copies of its prefetches."""

    layers: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.h2d_bytes = 0

    def prefetch(self, layer_idx: int, only_non_sliding: bool = True) -> None:
        on_host = [layer for layer in self.layers if _on_host(layer)]
        super().prefetch(layer_idx, only_non_sliding)
        self.h2d_bytes += sum(_layer_bytes(layer) for layer in on_host if not _on_host(layer))

    def resident_bytes(self) -> int:
        return sum(_layer_bytes(layer) for layer in self.layers if not _on_host(layer))

    def host_bytes(self) -> int:
        return sum(_layer_bytes(layer) for layer in self.layers if _on_host(layer))

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"h2d_bytes": (float(self.h2d_bytes), "bytes")}


def _on_host(layer: Any) -> bool:
    return layer.is_initialized and layer.keys.device.type == "cpu"


def _layer_bytes(layer: Any) -> int:
    return allocated_bytes(layer.keys, layer.values) if layer.is_initialized else 0


class Offload:
    """Full-precision cache, offloaded layer by layer to host memory (CUDA only)."""

    name = "offload"
    version = "1"
    description = (
        "transformers' offloaded DynamicCache: full K/V in host memory, each layer prefetched "
        "to the GPU when used (CUDA only)"
    )
    scenarios = ("generate", "lm_eval")
    params = NoParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        import torch

        if torch.device(ctx.device).type != "cuda":
            raise Unsupported(f"offload needs a CUDA device to offload from, not {ctx.device!r}")
        cache = transformers_class(OffloadedCache, "DynamicCache")
        return cache(config=model.config, offloading=True)
