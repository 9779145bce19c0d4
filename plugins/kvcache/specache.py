"""``specache``: SpeCache — a low-bit resident KV copy plus top-k 16-bit rows fetched ahead.

SpeCache (Jie et al., ICML 2025) keeps the full-precision K/V of every token in host memory
and only a KIVI-style low-bit copy on the device. Each decode step attends over the low-bit
past with the ``topk`` most relevant rows replaced by their full-precision originals, which
were fetched from the host *during the previous step*: the step also feeds a speculative
next token, whose attention picks the rows the next step will need, so the fetch overlaps
compute instead of waiting on it.

Per layer (batch size 1, as in all public SpeCache code):

* host: full-precision K/V of every persisted token, token-major ``[T, kv_heads, D]``, in
  pinned memory when the device is CUDA (on CPU a separate host tensor: the algorithm and the
  accounting are the same);
* device: the low-bit copy (:mod:`.quant`: keys per channel over token groups, values per
  token over channel groups, fp16 scale and zero; 1-bit levels at 1/4 and 3/4 of each
  group's range, SpeCache's fix of KIVI) of the tokens older than a full-precision residual
  window, the window itself, and a ``topk``-row buffer per KV head for the fetched originals.
  K and V are flushed from the window together, in whole groups of ``group_size`` tokens, so
  the window holds ``residual`` to ``residual + group_size - 1`` tokens and a position is
  quantized in both or in neither.

The decoder (:class:`SpeCacheDecoder`, batch 1, greedy):

1. ``prefill(context)`` — full-precision attention; K/V quantized and offloaded as they are
   stored.
2. ``decode(question)`` — *pre-decoding*: the question (or last prompt token) runs on the
   low-bit cache alone and is not stored; its attention (query heads of a KV group and its
   rows averaged) picks the first top-k and its last row's output is the speculative guess.
   (The paper pre-decodes the first generated token after prefilling the whole prompt; the
   scenario feeds the question after the context, so the question takes that token's role
   and is itself answered from the low-bit cache with fetched rows, never from the
   full-precision context.)
3. Each step feeds ``[real rows…, speculative]`` at explicit positions (the speculative
   token sits at the real next token's position; plain causal masking keeps it hidden from
   the real rows). The first step's real rows are the question, later ones the last
   generated token. Both use the low-bit past with the fetched rows substituted. Only the
   real rows are stored. The real row's output is the next token; the speculative row's is
   the next guess and its attention picks the next top-k, gathered from the host and copied
   to the device while the step's remaining layers run. The last step feeds no guess.

Top-k candidates are the positions that will be quantized when the fetched rows are used
(the residual is exact already), so with ``topk`` ≥ the context every quantized row is
replaced and the result equals a full-precision cache. ``speculative=False`` is the serial
ablation: no guess; each step scores its own query on the low-bit past, fetches those rows
and only then attends (exact top-k choice, fetch on the critical path).

On CUDA the fetch runs off the launch thread: the step copies the chosen indices to pinned
memory and records an event; a worker thread waits for it, gathers the rows from the host
store into pinned staging buffers and issues their copy to the device buffers on a side
stream, recording an event the layer's next attention waits on. Offloading to the host runs
on another side stream. Scoring the low-bit keys and aggregating the low-bit values use the
fused Triton kernels of :mod:`.lowbit_kernels` there (the PyTorch reference elsewhere).

Counters (summed over episodes by the scenario): ``h2d_bytes`` (fetched rows),
``offload_bytes`` (rows stored to the host while decoding; the context's are ``host_bytes``)
and, with ``measure_hit_rate``, ``topk_hits`` / ``topk_lookups``: per step, layer and KV
head, how many of the real token's own top-k on the same cache (same candidates, computed
after the fact) the speculative choice had; :meth:`SpeCache.derived_metrics` turns them into
``topk_hit_rate``. It costs one extra top-k and a ``k × k`` comparison per layer and step,
accumulated on the device (turn it off for latency runs).

Resident bytes — what a layer allocates on the device — after ``T`` persisted tokens,
``Tq = g·⌊max(T − residual, 0) / g⌋`` of them quantized, KV heads ``H``, head dim ``D``, ``s``
bytes per element of the model's dtype (the window and the fetched rows are kept in it),
``b`` bits:

    H · [2·C·⌈D·b/8⌉ + 4·(C/g)·D + 4·C·⌈D/g⌉      low-bit store: codes, fp16 scales and zeros
         + 2·(T − Tq)·D·s                          full-precision residual window
         + 2·topk·D·s + 8·k]                       fetched K/V buffers and their positions

``C`` is the low-bit store's capacity (``Tq`` ≤ ``C``), grown in place with headroom: when a
flush brings it to ``L`` tokens that do not fit, ``C = g·⌈(L + max(4·g, ⌊L/8⌋)) / g⌉`` (0
before anything is quantized). After a prefill of ``P`` tokens ``L = g·⌊max(P − residual, 0)
/ g⌋``; decoding grows it again only once that headroom (at least four groups) is used up.
The fetched buffers, allocated at the first fetch, hold ``topk`` rows per head; ``k``
positions per head are fetched: ``topk``, or every candidate when fewer tokens are quantized
(no fetch yet: neither term). ``b = 16``: ``2·C·D·2`` for the 16-bit copy, no stats.

Host bytes, what the layer allocates in host memory: ``2·H·C_h·D·s`` for the host store,
whose capacity ``C_h`` grows as the low-bit store's does (to ``L + max(64, ⌊L/8⌋)`` tokens
when ``L`` do not fit; on CUDA rounded up to the pinned allocator's power-of-two block), plus
on CUDA the pinned staging buffers of the fetch, ``H·topk·(2·D·s + 8)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from harness.api import Params, RunContext
from harness.scenarios.kv_protocol import allocated_bytes

from .attention import bind_layer, use_kv_attention
from .common import MeasuredCache, num_layers, tensor_bytes, transformers_class
from .lowbit_kernels import aggregate_values, score_keys
from .quant import Packed, quantize_keys, quantize_values

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    import torch

__all__ = [
    "SpeCache",
    "SpeCacheDecoder",
    "SpeCacheLayer",
    "SpeCacheParams",
    "SpeculativeCache",
    "select_topk",
]

#: Tokens quantized per call when a long prefill is flushed (bounds the float32 temporaries).
FLUSH_CHUNK = 16384


class SpeCacheParams(Params):
    """SpeCache's knobs; the defaults are the paper's 1-bit setting (g = 64, R = 64, k = 64).

    * ``bits`` — width of the resident copy: 1, 2, 4 or 8 (packed KIVI quantization), or 16
      (a 16-bit float copy — the model's dtype when that is 16-bit, else float16 — for the
      lossless check);
    * ``group_size`` — tokens per key group and channels per value group, and the number of
      tokens flushed from the residual window at a time;
    * ``topk`` — full-precision rows fetched per layer and KV head for each step (0: the
      low-bit cache alone, i.e. KIVI with SpeCache's levels);
    * ``residual`` — most recent tokens kept in full precision on the device;
    * ``levels`` — 1-bit level placement: ``quartile`` (SpeCache's 1/4 and 3/4 of the
      range) or ``minmax`` (plain KIVI, the ablation); more bits always use min/max;
    * ``prefetch`` — fetch the next step's rows while the current step runs (side stream,
      worker thread) instead of at the start of the step that needs them (the serial
      ablation always fetches on the critical path);
    * ``speculative`` — choose rows with the speculative token (the method); False chooses
      them with each step's own query on the low-bit cache, serially (the ablation);
    * ``measure_hit_rate`` — count how many of the real token's own top-k rows the
      speculative choice fetched.
    """

    bits: Literal[1, 2, 4, 8, 16] = 1
    """Bits of the resident copy: 1-8 packed KIVI codes, 16 a 16-bit float copy (lossless)."""
    group_size: int = Field(64, gt=0)
    """Tokens per key group, channels per value group; tokens flushed from the window at once."""
    topk: int = Field(64, ge=0)
    """Full-precision rows fetched per layer, KV head and step; 0: the low-bit copy alone."""
    residual: int = Field(64, ge=0)
    """Most recent tokens kept in full precision on the device (plus < group_size more)."""
    levels: Literal["quartile", "minmax"] = "quartile"
    """1-bit levels: ``quartile`` (1/4, 3/4 of range) or ``minmax`` (KIVI); more bits: minmax."""
    prefetch: bool = True
    """Fetch the next step's rows during this step; False: when needed (no-op if serial)."""
    speculative: bool = True
    """Pick rows with a speculative next token; False: each step's own query, serially."""
    measure_hit_rate: bool = True
    """Count the real top-k rows the speculative pick fetched (``topk_hit_rate``); costs time."""


def select_topk(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Top-``k`` positions per KV head from attention probabilities ``[H, G, rows, N]``.

    The probabilities of the ``G`` query heads that share a KV head, and of the selecting
    query rows, are averaged first (SpeCache fetches one set per KV head). Returns ``[H,
    min(k, N)]`` positions in ascending order (the host gather reads them in order).
    """
    import torch

    scores = probs.mean(dim=(1, 2))
    picked = torch.topk(scores, min(k, scores.shape[-1]), dim=-1, sorted=False).indices
    return picked.sort(dim=-1).values


@dataclass(frozen=True)
class _Plan:
    """What the decoder's current forward is, as every layer's ``update``/``attend`` see it.

    ``mode``: ``prefill`` (store everything, full-precision attention), ``lookahead``
    (pre-decoding: store nothing), ``step`` (store the first ``real`` rows) or ``serial``
    (store every row; fetch the step's own top-k before attending). ``select``: the rows after
    the ``real`` ones choose the next step's top-k.
    """

    mode: Literal["prefill", "lookahead", "step", "serial"]
    real: int = 0
    select: bool = False


@functools.cache
def _prefetch_worker() -> ThreadPoolExecutor:
    """The thread that gathers fetched rows on the host, off the kernel-launch thread."""
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="specache-prefetch")


class _Shared:
    """State every layer of one cache shares: the current plan, counters, CUDA streams."""

    def __init__(self, p: SpeCacheParams) -> None:
        self.p = p
        self.plan: _Plan | None = None
        self.h2d_bytes = 0
        self.offload_bytes = 0
        self.lookups = 0
        self.hits: torch.Tensor | None = None
        self._streams: tuple[Any, Any] | None = None
        self._masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def streams(self, device: torch.device) -> tuple[Any, Any]:
        """``(offload, prefetch)`` side streams on ``device``, made on first use."""
        import torch

        if self._streams is None:
            self._streams = (torch.cuda.Stream(device), torch.cuda.Stream(device))
        return self._streams

    def future(self, rows: int, query_rows: int, device: torch.device) -> torch.Tensor:
        """``[query_rows, rows]``: True where query row ``m`` (new row ``m % rows``) must not
        see new row ``j`` (``j > m % rows``). Made once per shape, not per layer and step."""
        import torch

        key = (rows, query_rows, device)
        if key not in self._masks:
            future = torch.ones(rows, rows, dtype=torch.bool, device=device).triu(1)
            self._masks[key] = future.repeat(query_rows // rows, 1)
        return self._masks[key]

    def count_hits(self, hits: torch.Tensor, lookups: int) -> None:
        self.hits = hits if self.hits is None else self.hits + hits
        self.lookups += lookups


class _HostStore:
    """Full-precision K/V of every persisted token, ``[capacity, heads, D]`` in host memory.

    Token-major, so storing a token is one contiguous copy per tensor. Pinned when the
    compute device is CUDA; copies to it then run on a side stream and :attr:`stored` is the
    event after the latest one (read it only after waiting on that).
    """

    def __init__(self, heads: int, dim: int, dtype: torch.dtype, device: torch.device) -> None:
        self.heads, self.dim, self.dtype, self.device = heads, dim, dtype, device
        self.length = 0
        self.keys = self._empty(0)
        self.values = self._empty(0)
        self.stored: Any = None

    def _empty(self, capacity: int) -> torch.Tensor:
        import torch

        pinned = self.device.type == "cuda"
        shape = (capacity, self.heads, self.dim)
        return torch.empty(shape, dtype=self.dtype, pin_memory=pinned)

    def _reserve(self, length: int) -> None:
        capacity = self.keys.shape[0]
        if length <= capacity:
            return
        if self.stored is not None:
            self.stored.synchronize()  # pending copies into the old store must land first
        capacity = length + max(64, length // 8)
        if self.device.type == "cuda":
            # torch's pinned allocator rounds every block up to a power of two: use all of it.
            row = self.heads * self.dim * self.keys.element_size()
            capacity = (1 << (capacity * row - 1).bit_length()) // row
        for name in ("keys", "values"):
            grown = self._empty(capacity)
            grown[: self.length].copy_(getattr(self, name)[: self.length])
            setattr(self, name, grown)

    def append(self, keys: torch.Tensor, values: torch.Tensor, streams: Any) -> None:
        """Store ``keys``/``values`` ``[heads, T, D]`` (on the compute device) after the others."""
        import torch

        tokens = keys.shape[1]
        self._reserve(self.length + tokens)
        span = slice(self.length, self.length + tokens)
        if streams is None:
            self.keys[span].copy_(keys.transpose(0, 1))
            self.values[span].copy_(values.transpose(0, 1))
        else:
            offload = streams[0]
            offload.wait_stream(torch.cuda.current_stream(keys.device))
            with torch.cuda.stream(offload):
                self.keys[span].copy_(keys.transpose(0, 1).contiguous(), non_blocking=True)
                self.values[span].copy_(values.transpose(0, 1).contiguous(), non_blocking=True)
                self.stored = offload.record_event()
            keys.record_stream(offload)
            values.record_stream(offload)
        self.length += tokens

    def wait(self) -> None:
        """Block until every copy into the store has landed."""
        if self.stored is not None:
            self.stored.synchronize()

    def gather(self, index: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Rows ``index[h, j]`` of head ``h`` (``index`` on the host) into ``keys``/``values``
        ``[heads * k, D]``, head-major."""
        import torch

        heads = torch.arange(self.heads, dtype=index.dtype).unsqueeze(1)
        flat = (index * self.heads + heads).reshape(-1)
        torch.index_select(self.keys.view(-1, self.dim), 0, flat, out=keys)
        torch.index_select(self.values.view(-1, self.dim), 0, flat, out=values)

    def nbytes(self) -> int:
        """Bytes allocated: the K/V buffers at their capacity, not the tokens stored."""
        return allocated_bytes(self.keys, self.values)


class _LowBitStore:
    """The device copy of the quantized tokens, ``[heads, capacity, ·]`` buffers grown in place.

    ``bits`` < 16: :mod:`.quant`'s packed layout (keys per channel over token groups, values
    per token); 16: a 16-bit float copy. :meth:`reserve` grows them with headroom, so that
    decoding appends a group at a time without reallocating each time.
    """

    def __init__(
        self, p: SpeCacheParams, heads: int, dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        import torch

        self.p, self.heads, self.dim, self.dtype, self.device = p, heads, dim, dtype, device
        self.length = 0
        self.copy_dtype = dtype if dtype.itemsize == 2 else torch.float16
        self.buffers: dict[str, torch.Tensor] = {}

    def _shapes(self, capacity: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        import torch

        h, d, g, bits = self.heads, self.dim, self.p.group_size, self.p.bits
        if bits == 16:
            copy = ((h, capacity, d), self.copy_dtype)
            return {"keys": copy, "values": copy}
        width = -(-d * bits // 8)
        return {
            "key_codes": ((h, capacity, width), torch.uint8),
            "key_scale": ((h, capacity // g, d), torch.float16),
            "key_zero": ((h, capacity // g, d), torch.float16),
            "value_codes": ((h, capacity, width), torch.uint8),
            "value_scale": ((h, capacity, -(-d // g)), torch.float16),
            "value_zero": ((h, capacity, -(-d // g)), torch.float16),
        }

    def reserve(self, length: int) -> None:
        """Room for ``length`` tokens: when they do not fit, capacity grows to ``length`` plus
        an eighth of it (at least four groups), rounded up to whole groups."""
        import torch

        capacity = next(iter(self.buffers.values())).shape[1] if self.buffers else 0
        if length <= capacity:
            return
        g = self.p.group_size
        capacity = -(-(length + max(4 * g, length // 8)) // g) * g
        grown = {}
        for name, (shape, dtype) in self._shapes(capacity).items():
            grown[name] = torch.empty(shape, dtype=dtype, device=self.device)
            if name in self.buffers:
                used = self._used(name, self.length)
                grown[name][:, :used].copy_(self.buffers[name][:, :used])
        self.buffers = grown

    def _used(self, name: str, length: int) -> int:
        """Rows of buffer ``name`` that ``length`` tokens fill."""
        return length // self.p.group_size if name in ("key_scale", "key_zero") else length

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Quantize and store ``[heads, T, D]`` keys/values (``T`` a multiple of the group)."""
        tokens = keys.shape[1]
        self.reserve(self.length + tokens)
        p, n, b = self.p, self.length, self.buffers
        if p.bits == 16:
            b["keys"][:, n : n + tokens] = keys
            b["values"][:, n : n + tokens] = values
        else:
            qk = quantize_keys(keys, p.bits, p.group_size, p.levels)
            qv = quantize_values(values, p.bits, p.group_size, p.levels)
            groups = slice(n // p.group_size, (n + tokens) // p.group_size)
            b["key_codes"][:, n : n + tokens] = qk.codes
            b["key_scale"][:, groups] = qk.scale
            b["key_zero"][:, groups] = qk.zero
            b["value_codes"][:, n : n + tokens] = qv.codes
            b["value_scale"][:, n : n + tokens] = qv.scale
            b["value_zero"][:, n : n + tokens] = qv.zero
        self.length += tokens

    def keys(self) -> Packed | torch.Tensor:
        """The stored keys: a :class:`Packed` view (or the 16-bit tensor) of ``length`` tokens."""
        return self._view("key", "channel")

    def values(self) -> Packed | torch.Tensor:
        """The stored values, like :meth:`keys`."""
        return self._view("value", "token")

    def _view(self, kind: str, axis: Literal["channel", "token"]) -> Packed | torch.Tensor:
        n, b, p = self.length, self.buffers, self.p
        if p.bits == 16:
            return b[f"{kind}s"][:, :n]
        stats = n // p.group_size if axis == "channel" else n
        return Packed(
            codes=b[f"{kind}_codes"][:, :n],
            scale=b[f"{kind}_scale"][:, :stats],
            zero=b[f"{kind}_zero"][:, :stats],
            bits=p.bits,
            group_size=p.group_size,
            axis=axis,
            shape=(self.heads, n, self.dim),
            dtype=self.dtype,
        )


class SpeCacheLayer:
    """One decoder layer's SpeCache state (base ``CacheLayerMixin``, added on construction).

    ``keys``/``values`` are the full-precision residual window ``[1, heads, r, D]``; the
    older tokens are in :attr:`lowbit` (device) and every token in :attr:`host`.
    """

    is_sliding = False

    def __init__(self, layer_idx: int, shared: _Shared) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.shared = shared
        self.p = shared.p
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.is_initialized = False
        self.seen = 0
        self.host: _HostStore | None = None
        self.lowbit: _LowBitStore | None = None
        # Fetched full-precision rows: positions [heads, k], their K/V in flat device storage.
        self.fetched_index: torch.Tensor | None = None
        self._rows_k: torch.Tensor | None = None
        self._rows_v: torch.Tensor | None = None
        self._buffers: tuple[torch.Tensor, ...] | None = None
        self._staging: tuple[torch.Tensor, ...] | None = None
        self._pending: torch.Tensor | tuple[torch.Tensor, Future[Any]] | None = None

    # -- transformers' CacheLayerMixin ------------------------------------------------------

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.heads, self.dim = key_states.shape[1], key_states.shape[-1]
        self.keys = key_states[..., :0, :]
        self.values = value_states[..., :0, :]
        self.host = _HostStore(self.heads, self.dim, self.dtype, self.device)
        self.lowbit = _LowBitStore(self.p, self.heads, self.dim, self.dtype, self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the rows the plan persists; attention (:meth:`attend`) reads the rest."""
        plan = self.shared.plan
        if plan is None:
            raise RuntimeError("SpeCache's cache runs only under its own decoder (make_decoder)")
        if key_states.shape[0] != 1:
            raise ValueError(f"SpeCache decodes batch size 1, got {key_states.shape[0]}")
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        bind_layer(self.layer_idx, self)
        if plan.mode == "prefill":
            if self.seen:
                raise ValueError("SpeCache prefills an empty cache (one context per cache)")
            self._persist(key_states, value_states)
            self._flush()
        elif plan.mode != "lookahead":
            self._persist(key_states[:, :, : plan.real], value_states[:, :, : plan.real])
        return key_states, value_states

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__(self.layer_idx, self.shared)

    # -- storage ------------------------------------------------------------------------------

    @property
    def quantized(self) -> int:
        """Tokens held only in low-bit form on the device (positions ``0 .. quantized - 1``)."""
        return self.lowbit.length if self.lowbit is not None else 0

    def _persist(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store rows ``[1, heads, T, D]``: full precision to the host, and the window."""
        import torch

        self.host.append(keys[0], values[0], self._streams())
        self.keys = torch.cat([self.keys, keys], dim=-2)
        self.values = torch.cat([self.values, values], dim=-2)
        self.seen += keys.shape[-2]
        if self.shared.plan.mode != "prefill":
            self.shared.offload_bytes += tensor_bytes(keys) + tensor_bytes(values)

    def _flushable(self) -> int:
        """Tokens that leave the window at the next flush (whole groups beyond ``residual``)."""
        g = self.p.group_size
        return max(self.keys.shape[-2] - self.p.residual, 0) // g * g

    def _flush(self) -> None:
        """Quantize the whole groups beyond the residual window into the low-bit store."""
        n = self._flushable()
        if not n:
            return
        # One reservation for the whole flush: its capacity does not depend on the chunking.
        self.lowbit.reserve(self.lowbit.length + n)
        chunk = max(FLUSH_CHUNK // self.p.group_size, 1) * self.p.group_size
        for start in range(0, n, chunk):
            span = slice(start, min(start + chunk, n))
            self.lowbit.append(self.keys[0, :, span], self.values[0, :, span])
        # Clones, so that the flushed tokens' storage is freed.
        self.keys = self.keys[..., n:, :].clone()
        self.values = self.values[..., n:, :].clone()

    def _streams(self) -> tuple[Any, Any] | None:
        return self.shared.streams(self.device) if self.device.type == "cuda" else None

    def resident_bytes(self) -> int:
        """What the layer allocates on the device: the low-bit store's whole capacity, the
        window, the fetched rows' buffers and their positions."""
        lowbit = self.lowbit.buffers.values() if self.lowbit is not None else ()
        fetched = (*(self._buffers or ()), self.fetched_index)
        return allocated_bytes(*lowbit, self.keys, self.values, *fetched)

    def host_bytes(self) -> int:
        """What the layer allocates in host memory: the host store at its capacity and the
        fetch's pinned staging buffers."""
        store = self.host.nbytes() if self.host is not None else 0
        return store + allocated_bytes(*(self._staging or ()))

    # -- attention ----------------------------------------------------------------------------

    def attend(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        """Attention of this layer's query rows under the current plan (``[1, q, Hq, D]``)."""
        import torch

        plan = self.shared.plan
        if plan.mode == "prefill":
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            return sdpa_attention_forward(
                module, query, key, value, attention_mask, scaling=scaling, **kwargs
            )
        self._await_fetch()
        heads, dim, rows = self.heads, self.dim, query.shape[2]
        groups = query.shape[1] // heads
        q = query[0].reshape(heads, groups * rows, dim)
        # Full-precision keys after the quantized ones: the window (holding this step's stored
        # rows at its end) and the rows not stored; every key's position is its column.
        recent_k = torch.cat([self.keys[0], key[0, :, plan.real :]], dim=1)
        recent_v = torch.cat([self.values[0], value[0, :, plan.real :]], dim=1)
        quantized = self.quantized

        low = self._score_lowbit(q)
        if plan.mode == "serial":
            probs = self._softmax(low, q, recent_k, scaling, rows)
            own = self._select(probs.view(heads, groups, rows, -1), slice(None), quantized)
            if own is not None:
                self._fetch_now(own)
        probs = self._softmax(self._substitute(low, q), q, recent_k, scaling, rows)
        grouped = probs.view(heads, groups, rows, -1)
        if plan.mode == "step" and self.p.measure_hit_rate and self.fetched_index is not None:
            self._count_hits(grouped[:, :, : plan.real], quantized)
        chosen = None
        if plan.select:
            # Candidates: the positions quantized when the next step uses the rows.
            candidates = quantized + self._flushable()
            chosen = self._select(grouped, slice(plan.real, None), candidates)
        out = self._aggregate(probs, recent_v)
        if chosen is not None:
            self._schedule_fetch(chosen)
        if plan.mode != "lookahead":
            self._flush()
        out = out.view(heads, groups, rows, dim).reshape(heads * groups, rows, dim)
        return out.transpose(0, 1).unsqueeze(0).to(query.dtype), None

    def _score_lowbit(self, q: torch.Tensor) -> torch.Tensor:
        """Float32 scores ``[H, M, quantized]`` of ``q`` against the low-bit keys."""
        import torch

        if not self.quantized:
            return q.new_empty(*q.shape[:2], 0, dtype=torch.float32)
        keys = self.lowbit.keys()
        if isinstance(keys, Packed):
            return score_keys(q, keys)
        return torch.matmul(q, keys.to(q.dtype).transpose(-1, -2)).float()

    def _substitute(self, low: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """``low`` with the fetched positions' scores taken against their originals."""
        import torch

        if self.fetched_index is None:
            return low
        exact = torch.matmul(q, self._rows_k.transpose(-1, -2)).float()
        index = self.fetched_index.unsqueeze(1).expand(-1, q.shape[1], -1)
        return low.scatter(2, index, exact)

    def _softmax(
        self, low: torch.Tensor, q: torch.Tensor, recent_k: torch.Tensor, scaling: float, rows: int
    ) -> torch.Tensor:
        """Probabilities ``[H, M, N]`` over ``[quantized | recent]`` keys, causal on the last
        ``rows`` columns (query row ``r`` sees the new rows up to its own)."""
        import torch

        recent = torch.matmul(q, recent_k.transpose(-1, -2)).float()
        scores = torch.cat([low, recent], dim=-1) * scaling
        if rows > 1:
            future = self.shared.future(rows, q.shape[1], q.device)
            scores[..., -rows:].masked_fill_(future, float("-inf"))
        return torch.softmax(scores, dim=-1)

    def _select(self, grouped: torch.Tensor, rows: slice, candidates: int) -> torch.Tensor | None:
        """Top-k of query rows ``rows`` of ``grouped`` probabilities ``[H, G, q, N]`` over
        positions ``0 .. candidates - 1`` (None when there is nothing to fetch)."""
        if not candidates or not self.p.topk:
            return None
        return select_topk(grouped[:, :, rows, :candidates], self.p.topk)

    def _count_hits(self, real: torch.Tensor, quantized: int) -> None:
        """Overlap of the fetched rows with the ``real`` rows' own top-k (probabilities
        ``[H, G, rows, N]``) over the same candidates."""
        own = self._select(real, slice(None), quantized)
        fetched = self.fetched_index
        hits = (own.unsqueeze(-1) == fetched.unsqueeze(1)).any(-1).sum()
        self.shared.count_hits(hits, own.numel())

    def _aggregate(self, probs: torch.Tensor, recent_v: torch.Tensor) -> torch.Tensor:
        """Float32 ``probs · V`` over the low-bit values with the fetched rows substituted."""
        import torch

        quantized = self.quantized
        low_p = probs[..., :quantized]
        out = torch.matmul(probs[..., quantized:].to(self.dtype), recent_v).float()
        if self.fetched_index is not None:
            index = self.fetched_index.unsqueeze(1).expand(-1, probs.shape[1], -1)
            out += torch.matmul(low_p.gather(2, index).to(self.dtype), self._rows_v).float()
            low_p.scatter_(2, index, 0.0)  # those positions are counted with their originals
        if quantized:
            values = self.lowbit.values()
            if isinstance(values, Packed):
                out += aggregate_values(low_p, values, self.dtype)
            else:
                out += torch.matmul(low_p.to(self.dtype), values.to(self.dtype)).float()
        return out

    # -- fetching full-precision rows ---------------------------------------------------------

    def _fetch_views(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Device K/V buffers ``[heads, k, D]`` for ``k`` fetched rows per head (allocated
        once, for ``topk``)."""
        import torch

        if self._buffers is None:
            size = self.heads * self.p.topk * self.dim
            self._buffers = tuple(
                torch.empty(size, dtype=self.dtype, device=self.device) for _ in range(2)
            )
        n = self.heads * k * self.dim
        keys, values = (t[:n].view(self.heads, k, self.dim) for t in self._buffers)
        return keys, values

    def _staging_views(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pinned host buffers for ``k`` rows per head: K and V ``[heads * k, D]``, index
        ``[heads, k]``."""
        import torch

        if self._staging is None:
            size = self.heads * self.p.topk
            self._staging = (
                torch.empty(size * self.dim, dtype=self.dtype, pin_memory=True),
                torch.empty(size * self.dim, dtype=self.dtype, pin_memory=True),
                torch.empty(size, dtype=torch.long, pin_memory=True),
            )
        n = self.heads * k
        keys, values, index = self._staging
        return (
            keys[: n * self.dim].view(n, self.dim),
            values[: n * self.dim].view(n, self.dim),
            index[:n].view(self.heads, k),
        )

    def _install(self, index: torch.Tensor, fetched: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Make ``fetched`` (rows ``index`` per head) the rows substituted from now on."""
        self.fetched_index = index
        self._rows_k, self._rows_v = fetched
        self.shared.h2d_bytes += tensor_bytes(fetched[0]) + tensor_bytes(fetched[1])

    def _fetch_now(self, index: torch.Tensor) -> None:
        """Fetch rows ``index`` ``[heads, k]`` synchronously, on the compute stream."""
        fetched = self._fetch_views(index.shape[1])
        if self.device.type == "cuda":
            keys, values, host_index = self._staging_views(index.shape[1])
            host_index.copy_(index)  # waits for the stream, including earlier fetches
            self.host.wait()
            self.host.gather(host_index, keys, values)
            fetched[0].view_as(keys).copy_(keys, non_blocking=True)
            fetched[1].view_as(values).copy_(values, non_blocking=True)
        else:
            self.host.gather(index, fetched[0].view(-1, self.dim), fetched[1].view(-1, self.dim))
        self._install(index, fetched)

    def _schedule_fetch(self, index: torch.Tensor) -> None:
        """Fetch rows ``index`` for this layer's next attention: now (CPU), on a worker
        thread and side stream (CUDA), or at the next attention (``prefetch=False``)."""
        import torch

        if not self.p.prefetch:
            self._pending = index
        elif self.device.type != "cuda":
            self._fetch_now(index)
        else:
            keys, values, host_index = self._staging_views(index.shape[1])
            host_index.copy_(index, non_blocking=True)
            # After this attention's reads of the device buffers and the index copy.
            picked = torch.cuda.current_stream(self.device).record_event()
            fetched = self._fetch_views(index.shape[1])
            job = _prefetch_worker().submit(
                self._prefetch_job, host_index, keys, values, fetched, picked, self.host.stored
            )
            self._pending = (index, job)

    def _prefetch_job(
        self,
        host_index: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        fetched: tuple[torch.Tensor, torch.Tensor],
        picked: Any,
        stored: Any,
    ) -> Any:
        """Worker thread: gather the rows on the host once the index and the rows are there,
        then copy them to the device on the prefetch stream; returns the copy's event."""
        import torch

        with torch.inference_mode(), torch.cuda.device(self.device):
            if stored is not None:
                stored.synchronize()
            picked.synchronize()
            # The main thread may grow the host store meanwhile; a grown store holds the same
            # rows, so reading either is right.
            self.host.gather(host_index, keys, values)
            stream = self.shared.streams(self.device)[1]
            with torch.cuda.stream(stream):
                fetched[0].view_as(keys).copy_(keys, non_blocking=True)
                fetched[1].view_as(values).copy_(values, non_blocking=True)
                return stream.record_event()

    def _await_fetch(self) -> None:
        """Make the rows fetched for this attention usable (waiting on them if needed)."""
        import torch

        pending, self._pending = self._pending, None
        if pending is None:
            return
        if isinstance(pending, tuple):
            index, job = pending
            torch.cuda.current_stream(self.device).wait_event(job.result())
            self._install(index, self._fetch_views(index.shape[1]))
        else:
            self._fetch_now(pending)


class SpeculativeCache(MeasuredCache):
    """SpeCache's ``Cache`` (base added on construction) over :class:`SpeCacheLayer` s."""

    def __init__(self, layers: list[Any], shared: _Shared) -> None:
        super().__init__(layers=layers)
        self.shared = shared

    def host_bytes(self) -> int:
        return sum(layer.host_bytes() for layer in self.layers)

    def counters(self) -> dict[str, tuple[float, str]]:
        s = self.shared
        out = {
            "h2d_bytes": (float(s.h2d_bytes), "bytes"),
            "offload_bytes": (float(s.offload_bytes), "bytes"),
        }
        if s.p.measure_hit_rate and s.p.speculative:
            out["topk_hits"] = (float(s.hits) if s.hits is not None else 0.0, "count")
            out["topk_lookups"] = (float(s.lookups), "count")
        return out


class SpeCacheDecoder:
    """Prefill, pre-decoding and two-token steps over a :class:`SpeculativeCache`, greedy."""

    def __init__(self, model: Any, cache: SpeculativeCache) -> None:
        use_kv_attention(model)
        self.model = model
        self.cache = cache

    def _forward(self, ids: torch.Tensor, plan: _Plan, keep: int) -> torch.Tensor:
        """Logits of the last ``keep`` rows of ``ids``, fed at the next unstored positions."""
        import torch

        start = self.cache.get_seq_length()
        positions = torch.arange(start, start + ids.shape[1], device=ids.device).unsqueeze(0)
        self.cache.shared.plan = plan
        try:
            return self.model(
                input_ids=ids, position_ids=positions, past_key_values=self.cache,
                use_cache=True, logits_to_keep=keep,
            ).logits  # fmt: skip
        finally:
            self.cache.shared.plan = None

    def prefill(self, context_ids: torch.Tensor) -> None:
        import torch

        with torch.inference_mode():
            self._forward(context_ids, _Plan("prefill"), 1)

    def decode(
        self, input_ids: torch.Tensor, max_new_tokens: int, on_token: Callable[[], None]
    ) -> list[int]:
        import torch

        tokens: list[torch.Tensor] = []
        with torch.inference_mode():
            if max_new_tokens > 0 and not self.cache.shared.p.speculative:
                ids = input_ids
                for _ in range(max_new_tokens):
                    logits = self._forward(ids, _Plan("serial", real=ids.shape[1]), 1)
                    ids = logits[:, -1].argmax(dim=-1, keepdim=True)
                    on_token()
                    tokens.append(ids)
            elif max_new_tokens > 0:
                # Pre-decoding: the first top-k and the first guess, nothing stored.
                logits = self._forward(input_ids, _Plan("lookahead", select=True), 1)
                guess = logits[:, -1].argmax(dim=-1, keepdim=True)
                ids = input_ids
                for step in range(max_new_tokens):
                    last = step == max_new_tokens - 1
                    fed = ids if last else torch.cat([ids, guess], dim=1)
                    plan = _Plan("step", real=ids.shape[1], select=not last)
                    logits = self._forward(fed, plan, 1 if last else 2)
                    ids = logits[:, 0].argmax(dim=-1, keepdim=True)
                    guess = logits[:, -1].argmax(dim=-1, keepdim=True)
                    on_token()
                    tokens.append(ids)
        return torch.cat(tokens, dim=1)[0].tolist() if tokens else []


class SpeCache:
    """SpeCache: low-bit resident KV, full-precision host KV, speculative top-k prefetch."""

    name = "specache"
    # 2: resident bytes count the low-bit store's capacity, not its rows in use;
    # 3: host bytes count the host store's capacity and the pinned staging buffers.
    version = "3"
    description = (
        "SpeCache: low-bit (KIVI-style, 1-bit levels at 1/4 and 3/4) KV copy on the device, "
        "full-precision KV in host memory; each step attends with the top-k rows replaced by "
        "their originals, chosen one step ahead by a speculative token and prefetched"
    )
    scenarios = ("generate",)
    params = SpeCacheParams

    def make_cache(self, model: Any, params: Mapping[str, Any], ctx: RunContext) -> Any:
        shared = _Shared(SpeCacheParams(**params))
        layer = transformers_class(SpeCacheLayer, "CacheLayerMixin")
        layers = [layer(i, shared) for i in range(num_layers(model))]
        return transformers_class(SpeculativeCache, "Cache")(layers, shared)

    def make_decoder(
        self, model: Any, cache: Any, params: Mapping[str, Any], ctx: RunContext
    ) -> SpeCacheDecoder:
        return SpeCacheDecoder(model, cache)

    def derived_metrics(self, totals: Mapping[str, float]) -> dict[str, tuple[float, str]]:
        """``topk_hit_rate``: fetched rows that were among the real token's own top-k."""
        lookups = totals.get("topk_lookups")
        if not lookups:
            return {}
        return {"topk_hit_rate": (totals["topk_hits"] / lookups, "")}
