"""KV-cache methods: what a decoder keeps of its past keys and values, for ``generate``.

Each method gives the ``generate`` scenario a fresh transformers ``Cache`` per generate call
(``make_cache``; see :mod:`harness.scenarios.kv_protocol`) and reports the KV bytes it
allocates on the device (``resident_bytes``: buffers at their capacity, not the rows in use),
so quality, speed and memory are measured together:

* ``full`` — transformers' ``DynamicCache``: the reference;
* ``offload`` — transformers' layer-wise CPU offloading of the full cache (CUDA only);
* ``kivi`` — KIVI: 1/2/4/8-bit keys per channel and values per token, real bit packing,
  a full-precision window of recent tokens;
* ``streaming`` — StreamingLLM: attention sinks plus a recent window;
* ``h2o`` — Heavy-Hitter Oracle: accumulated-attention eviction plus a recent window;
* ``specache`` — SpeCache: a low-bit resident copy plus the top-k full-precision K/V
  fetched from host memory, chosen ahead by a speculative next token.

Shared pieces: :mod:`.quant` (the packed KIVI quantizer), :mod:`.attention` (custom attention
that can reach its cache layer), :mod:`.common` (seen-token counting for evicting layers,
transformers bases added on first use, so registering this plugin imports neither torch nor
transformers). Each method's docstring gives its resident-bytes formula, to match budgets.
"""

from __future__ import annotations

from harness import hookimpl
from harness.api import Method

from .full import Full
from .h2o import H2O
from .kivi import KIVI
from .offload import Offload
from .specache import SpeCache
from .streaming import Streaming

__all__ = ["H2O", "KIVI", "Full", "Offload", "SpeCache", "Streaming", "harness_add_methods"]


@hookimpl
def harness_add_methods() -> list[Method]:
    return [Full(), Offload(), KIVI(), Streaming(), H2O(), SpeCache()]
