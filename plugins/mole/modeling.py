"""The models of the MoLE family, on transformers' Llama (pre-norm, RMSNorm, RoPE).

Imported on first use by the methods (so registering the plugin imports neither torch nor
transformers). Every model here is a ``LlamaForCausalLM`` whose decoder layers' ``mlp`` is
replaced, so caches, masks, RoPE and ``generate`` are transformers' own:

* :class:`MoLEForCausalLM` — MoLE's training form: ``mlp(x) + Σ_j softmax(router(x))_j ·
  FFN_j(RMSNorm_ℓ(e))``, ``e`` the current forward's raw token embeddings;
* :class:`MoLELookupForCausalLM` — its re-parameterised inference form: one lookup table
  ``[V, L·N·d]`` replaces every routed expert;
* :class:`MoEForCausalLM` — a top-k routed MoE (no shared expert), load-balance + z-loss;
* :class:`OffloadMoEForCausalLM` — that MoE with its experts in host memory, loaded on
  demand into a per-layer :class:`ExpertCache` that keeps the previous step's experts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.activations import ACT2FN
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from harness.scenarios.lm_train_protocol import parameter_bytes

from .lookup import Codec, LookupTable, TableError

__all__ = [
    "ExpertCache",
    "ExpertFFN",
    "LookupMLP",
    "MoEForCausalLM",
    "MoEMLP",
    "MoLEForCausalLM",
    "MoLELookupForCausalLM",
    "MoLEMLP",
    "OffloadMoEForCausalLM",
    "OffloadMoEMLP",
    "as_llama",
    "dense_lm",
    "derive",
    "expert_apply",
]

def as_llama(config: Any) -> LlamaConfig:
    """The suite's transformers config as a ``LlamaConfig`` (the shape fields carry over)."""
    if isinstance(config, LlamaConfig):
        return config
    return LlamaConfig(**config.to_dict())


class _Stash:
    """Per-forward state the top-level model hands its layers (not a module: no cycle)."""

    def __init__(self) -> None:
        self.emb: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.event: Any = None
        self.router: list[tuple[torch.Tensor, torch.Tensor]] | None = None


class ExpertFFN(nn.Module):
    """A gated FFN shaped like ``LlamaMLP`` (``down(act(gate(x)) · up(x))``, no biases)."""

    def __init__(self, config: LlamaConfig, hidden: int) -> None:
        super().__init__()
        d = config.hidden_size
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))

    def weights(self) -> list[torch.Tensor]:
        return [self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight]


def expert_apply(act: Any, weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:class:`ExpertFFN`'s forward on loose weights ``[gate, up, down]``."""
    gate, up, down = weights
    return F.linear(act(F.linear(x, gate)) * F.linear(x, up), down)


def _init(module: nn.Module, std: float) -> None:
    """Llama's init for modules added after ``post_init``: N(0, std) linears, unit norms."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                sub.weight.normal_(0.0, std)
                if sub.bias is not None:
                    sub.bias.zero_()
            elif isinstance(sub, LlamaRMSNorm):
                sub.weight.fill_(1.0)


def _mix(gates: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """``Σ_j g_j · y_j``: gates ``[..., N]`` (fp32 softmax), outputs ``[..., N, d]``."""
    return torch.einsum("...n,...nd->...d", gates.to(outputs.dtype), outputs)


# --------------------------------------------------------------------------------------- MoLE


class MoLEMLP(nn.Module):
    """One layer's FFN in MoLE's training form: the shared ``LlamaMLP`` plus N routed experts
    on the layer-normalised raw embedding, mixed by a dense softmax over all experts."""

    def __init__(self, mlp: nn.Module, config: LlamaConfig, experts: int, hidden: int,
                 stash: _Stash) -> None:  # fmt: skip
        super().__init__()
        self.mlp = mlp
        self.router = nn.Linear(config.hidden_size, experts, bias=False)
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.experts = nn.ModuleList(ExpertFFN(config, hidden) for _ in range(experts))
        self._stash = stash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self._stash.emb
        if emb is None:
            raise RuntimeError("MoLEMLP called outside MoLEForCausalLM.forward (no embedding)")
        gates = torch.softmax(self.router(x).float(), dim=-1)
        u = self.norm(emb).to(x.dtype)
        outputs = torch.stack([expert(u) for expert in self.experts], dim=-2)
        return self.mlp(x) + _mix(gates, outputs)


class MoLEForCausalLM(LlamaForCausalLM):
    """MoLE's training form. ``forward`` embeds the step's ``input_ids`` itself, stashes the
    raw embeddings for every layer's :class:`MoLEMLP` and passes them on as
    ``inputs_embeds``, so in incremental decode the experts see the current tokens only."""

    def __init__(self, config: LlamaConfig, experts: int = 4, expert_hidden: int | None = None):
        super().__init__(config)
        self.experts = experts
        self.expert_hidden = expert_hidden or config.intermediate_size
        self._stash = _Stash()
        for layer in self.model.layers:
            layer.mlp = MoLEMLP(layer.mlp, config, experts, self.expert_hidden, self._stash)
            _init(layer.mlp.router, config.initializer_range)
            _init(layer.mlp.norm, config.initializer_range)
            _init(layer.mlp.experts, config.initializer_range)

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        emb = kwargs.pop("inputs_embeds", None)
        if emb is None:
            emb = self.model.embed_tokens(input_ids)
        self._stash.emb = emb
        try:
            return super().forward(inputs_embeds=emb, **kwargs)
        finally:
            self._stash.emb = None

    def routed_expert_params(self) -> int:
        """Parameters of the routed experts and their input norms (what re-parameterisation
        turns into the lookup table)."""
        return sum(
            p.numel()
            for layer in self.model.layers
            for part in (layer.mlp.experts, layer.mlp.norm)
            for p in part.parameters()
        )

    @torch.no_grad()
    def expert_outputs(self, start: int, stop: int) -> torch.Tensor:
        """``[FFN_j^ℓ(RMSNorm_ℓ(E[v]))]_{ℓ,j}`` for vocab ids ``start ≤ v < stop`` as fp32
        ``[stop − start, L·N·d]``: the lookup table's rows (computed in the experts' dtype)."""
        emb = self.model.embed_tokens.weight[start:stop]
        out = []
        for layer in self.model.layers:
            u = layer.mlp.norm(emb)
            for expert in layer.mlp.experts:
                out.append(expert(u.to(expert.gate_proj.weight.dtype)).float())
        return torch.stack(out, dim=1).reshape(stop - start, -1)


class LookupMLP(nn.Module):
    """One layer's FFN in MoLE's inference form: shared MLP plus the gated LUT rows."""

    def __init__(self, mlp: nn.Module, config: LlamaConfig, experts: int, index: int,
                 stash: _Stash) -> None:  # fmt: skip
        super().__init__()
        self.mlp = mlp
        self.router = nn.Linear(config.hidden_size, experts, bias=False)
        self.index = index
        self._stash = stash

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self._stash.rows
        if rows is None:
            raise RuntimeError("LookupMLP called outside MoLELookupForCausalLM.forward")
        if self._stash.event is not None:  # the rows' host→device copy, on a side stream
            torch.cuda.current_stream(x.device).wait_event(self._stash.event)
        gates = torch.softmax(self.router(x).float(), dim=-1)
        return self.mlp(x) + _mix(gates, rows[:, :, self.index].to(x.dtype))


class MoLELookupForCausalLM(LlamaForCausalLM):
    """MoLE re-parameterised: the routed experts are gone; one :class:`~.lookup.LookupTable`
    ``[V, L·N·d]`` (plain tensors, not parameters, so ``.to()`` leaves it where it is) holds
    their outputs, at a float dtype or quantized.

    Each forward gathers the step's rows once; on CUDA with the table in pinned host memory
    it gathers them into pinned staging buffers, copies them on a side stream and decodes
    them there, with an event every layer waits on. ``h2d_bytes`` counts the gathered rows'
    stored bytes (``B·T`` × the table's row bytes) whenever the table is in host memory — on
    a CPU-only run nothing crosses a bus, and the counter reports what *would* cross PCIe.
    """

    def __init__(self, config: LlamaConfig, experts: int = 4):
        super().__init__(config)
        self.experts = experts
        self._stash = _Stash()
        for i, layer in enumerate(self.model.layers):
            layer.mlp = LookupMLP(layer.mlp, config, experts, i, self._stash)
        self.table: LookupTable | None = None
        self.table_error: TableError | None = None
        self.lut_place = "host"
        self._staging: list[torch.Tensor] = []
        self._stream: Any = None
        self._copied: Any = None
        self.h2d_bytes = 0

    @classmethod
    def from_trained(cls, trained: MoLEForCausalLM, codec: Codec,
                     lut_device: str = "host") -> MoLELookupForCausalLM:  # fmt: skip
        """Share ``trained``'s non-expert weights; build the table with ``codec`` and keep
        it on ``lut_device`` (``host``: CPU, pinned when CUDA is there; ``device``: the
        model's device)."""
        with torch.device("meta"):
            model = cls(trained.config, trained.experts)
        derive(model, trained)
        vocab = trained.model.embed_tokens.weight.shape[0]
        table, model.table_error = LookupTable.build(
            trained.expert_outputs, vocab, model._width(), codec
        )
        if lut_device == "host":
            if torch.cuda.is_available():
                table = table.pin_memory()
        else:
            table = table.to(trained.model.embed_tokens.weight.device)
        model.table, model.lut_place = table, lut_device
        return model.eval()

    def _width(self) -> int:
        return len(self.model.layers) * self.experts * self.config.hidden_size

    def lut_on_host(self) -> bool:
        """Whether the table is in host memory (``lut_device: host``; on a CPU-only run host
        and device are the same memory, and this says which the method counts it as)."""
        return self.table is not None and self.lut_place == "host"

    def _gather(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        table = self.table
        assert table is not None, "no lookup table: build with from_trained"
        device = self.model.embed_tokens.weight.device
        shape = (*ids.shape, len(self.model.layers), self.experts, self.config.hidden_size)
        flat = ids.reshape(-1)
        if self.lut_on_host():
            self.h2d_bytes += flat.numel() * table.row_bytes()
        if table.device == device:
            return table.rows(flat).view(shape), None
        if device.type != "cuda":  # table on CPU, model elsewhere but not CUDA: plain copy
            parts = [p.to(device) for p in table.gather(flat.cpu())]
            return table.decode(parts).view(shape), None
        if self._copied is not None:  # the staging buffers are free once the last copy is done
            self._copied.synchronize()
        n = flat.numel()
        if not self._staging or self._staging[0].shape[0] < n:
            self._staging = [
                torch.empty((n, *p.shape[1:]), dtype=p.dtype).pin_memory() for p in table.parts
            ]
        staged = table.gather(flat.cpu(), [s[:n] for s in self._staging])
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        self._stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(self._stream):
            rows = table.decode([s.to(device, non_blocking=True) for s in staged])
            event = torch.cuda.Event()
            event.record(self._stream)
        rows.record_stream(torch.cuda.current_stream(device))
        self._copied = event
        return rows.view(shape), event

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        if input_ids is None:
            raise ValueError("MoLE's lookup form needs input_ids (the table is indexed by id)")
        self._stash.rows, self._stash.event = self._gather(input_ids)
        try:
            return super().forward(input_ids=input_ids, **kwargs)
        finally:
            self._stash.rows = self._stash.event = None

    def lut_bytes(self) -> int:
        return 0 if self.table is None else self.table.nbytes()

    def device_bytes(self) -> int:
        return parameter_bytes(self) + (0 if self.lut_on_host() else self.lut_bytes())

    def host_bytes(self) -> int:
        return self.lut_bytes() if self.lut_on_host() else 0

    def counters(self) -> dict[str, tuple[float, str]]:
        return {"h2d_bytes": (float(self.h2d_bytes), "bytes")}

    def reset_counters(self) -> None:
        self.h2d_bytes = 0

    def figures(self) -> dict[str, tuple[float, str]]:
        """The stored table against the fp32 expert outputs it replaces, and its row size."""
        figures = {"lut_row_bytes": (float(self.table.row_bytes()), "bytes")} if self.table else {}
        if self.table_error is not None:
            figures["lut_rel_rms_error"] = (self.table_error.rel_rms, "ratio")
            figures["lut_max_abs_error"] = (self.table_error.max_abs, "")
        return figures


def derive(model: nn.Module, trained: nn.Module) -> None:
    """Give ``model`` (built on the meta device) ``trained``'s tensors for every parameter and
    buffer it has — shared, not copied; non-persistent buffers (RoPE's) included."""
    own = model.state_dict(keep_vars=True)
    source = trained.state_dict(keep_vars=True)
    missing = sorted(set(own) - set(source))
    if missing:
        raise KeyError(f"the trained model has no {missing[:5]}")
    model.load_state_dict({k: source[k] for k in own}, strict=True, assign=True)
    buffers = dict(trained.named_buffers())
    for name, _ in list(model.named_buffers()):
        path, _, attr = name.rpartition(".")
        model.get_submodule(path)._buffers[attr] = buffers[name]
    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.weight = model.model.embed_tokens.weight


# ---------------------------------------------------------------------------------------- MoE


def _route(router: nn.Linear, x: torch.Tensor, top_k: int):
    """Mixtral's routing: fp32 softmax over all experts, top-k, renormalised weights."""
    logits = router(x)
    probs = torch.softmax(logits.float(), dim=-1)
    weights, selected = torch.topk(probs, top_k, dim=-1)
    return logits, weights / weights.sum(dim=-1, keepdim=True), selected


class MoEMLP(nn.Module):
    """A top-k routed MoE FFN replacing ``LlamaMLP`` (no shared expert)."""

    def __init__(self, config: LlamaConfig, experts: int, top_k: int, hidden: int,
                 stash: _Stash) -> None:  # fmt: skip
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(config.hidden_size, experts, bias=False)
        self.experts = nn.ModuleList(ExpertFFN(config, hidden) for _ in range(experts))
        self._stash = stash
        self.last_selected: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        logits, weights, selected = _route(self.router, flat, self.top_k)
        self.last_selected = selected.detach()
        if self._stash.router is not None:
            self._stash.router.append((logits, selected))
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = torch.nonzero(selected == e, as_tuple=True)
            if token.numel():
                y = expert(flat[token]) * weights[token, slot, None].to(flat.dtype)
                out.index_add_(0, token, y)
        return out.view_as(x)


class MoEForCausalLM(LlamaForCausalLM):
    """Llama with every FFN a top-k MoE. In train mode the output carries ``aux_loss`` =
    ``aux_coef · mean_ℓ LB_ℓ + z_coef · mean_ℓ Z_ℓ``: the Switch load-balance loss
    ``LB = N · Σ_e f_e · P_e`` (``f_e`` the share of the k·tokens assignments that went to
    expert e, ``P_e`` its mean router probability; 1 when balanced) and ST-MoE's router
    z-loss ``Z = mean_tokens logsumexp(logits)²``."""

    def __init__(self, config: LlamaConfig, experts: int = 10, top_k: int = 2,
                 expert_hidden: int | None = None, aux_coef: float = 0.01,
                 z_coef: float = 0.001) -> None:  # fmt: skip
        super().__init__(config)
        self.experts, self.top_k = experts, top_k
        self.expert_hidden = expert_hidden or config.intermediate_size // 2
        self.aux_coef, self.z_coef = aux_coef, z_coef
        self._stash = _Stash()
        for layer in self.model.layers:
            layer.mlp = MoEMLP(config, experts, top_k, self.expert_hidden, self._stash)
            _init(layer.mlp, config.initializer_range)

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> Any:
        self._stash.router = [] if self.training else None
        try:
            out = super().forward(input_ids=input_ids, **kwargs)
            routed = self._stash.router
        finally:
            self._stash.router = None
        out.aux_loss = self._aux_loss(routed) if routed else None
        return out

    def _aux_loss(self, routed: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        balance, z = [], []
        for logits, selected in routed:
            probs = torch.softmax(logits.float(), dim=-1)
            share = F.one_hot(selected, self.experts).float().sum(dim=1).mean(dim=0) / self.top_k
            balance.append(self.experts * (share * probs.mean(dim=0)).sum())
            z.append(torch.logsumexp(logits.float(), dim=-1).pow(2).mean())
        return self.aux_coef * torch.stack(balance).mean() + self.z_coef * torch.stack(z).mean()

    def expert_params(self) -> int:
        """Parameters of one expert (all experts have the same shape)."""
        return sum(p.numel() for p in self.model.layers[0].mlp.experts[0].parameters())


# ----------------------------------------------------------------------------- MoE offloading


def _copy_to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    return tensor.to(device, non_blocking=True)


class ExpertCache:
    """One layer's experts in host memory and the ones resident on ``device``.

    ``fetch(needed)`` returns the device weights of the experts a step routes to, loading
    only those not resident (with ``copy(tensor, device)``; pinned → ``non_blocking`` by
    default), and then keeps exactly this step's experts: the cache holds the previous
    step's experts, as the paper's offloading baseline. ``loaded_bytes`` / ``loads`` count
    every load.
    """

    def __init__(self, host: list[list[torch.Tensor]], device: Any,
                 copy: Callable[[torch.Tensor, Any], torch.Tensor] = _copy_to) -> None:  # fmt: skip
        self.host = host
        self.device = device
        self.copy = copy
        self.resident: dict[int, list[torch.Tensor]] = {}
        self.loaded_bytes = 0
        self.loads = 0

    def fetch(self, needed: Iterable[int]) -> dict[int, list[torch.Tensor]]:
        kept: dict[int, list[torch.Tensor]] = {}
        for e in needed:
            if e in kept:
                continue
            if e in self.resident:
                kept[e] = self.resident[e]
            else:
                kept[e] = [self.copy(t, self.device) for t in self.host[e]]
                self.loaded_bytes += sum(t.numel() * t.element_size() for t in self.host[e])
                self.loads += 1
        self.resident = kept
        return kept

    def resident_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for ws in self.resident.values() for t in ws)

    def host_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for ws in self.host for t in ws)


class OffloadMoEMLP(nn.Module):
    """:class:`MoEMLP` with its experts behind an :class:`ExpertCache`."""

    def __init__(self, config: LlamaConfig, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(config.hidden_size, experts, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]
        self.cache: ExpertCache | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.cache is not None
        flat = x.reshape(-1, x.shape[-1])
        _, weights, selected = _route(self.router, flat, self.top_k)
        resident = self.cache.fetch(torch.unique(selected).tolist())
        out = torch.zeros_like(flat)
        for e, ws in resident.items():
            token, slot = torch.nonzero(selected == e, as_tuple=True)
            y = expert_apply(self.act_fn, ws, flat[token])
            out.index_add_(0, token, y * weights[token, slot, None].to(flat.dtype))
        return out.view_as(x)


class OffloadMoEForCausalLM(LlamaForCausalLM):
    """A trained :class:`MoEForCausalLM` for inference with its experts in host memory."""

    def __init__(self, config: LlamaConfig, experts: int = 10, top_k: int = 2) -> None:
        super().__init__(config)
        self.experts, self.top_k = experts, top_k
        for layer in self.model.layers:
            layer.mlp = OffloadMoEMLP(config, experts, top_k)

    @classmethod
    def from_trained(cls, trained: MoEForCausalLM, device: Any = None,
                     copy: Callable[[torch.Tensor, Any], torch.Tensor] = _copy_to,
                     ) -> OffloadMoEForCausalLM:  # fmt: skip
        """Share ``trained``'s non-expert weights; its experts go to host memory (pinned when
        CUDA is there), one :class:`ExpertCache` per layer loading into ``device``."""
        with torch.device("meta"):
            model = cls(trained.config, trained.experts, trained.top_k)
        derive(model, trained)
        device = torch.device(device or trained.model.embed_tokens.weight.device)
        pin = torch.cuda.is_available()
        for layer, source in zip(model.model.layers, trained.model.layers, strict=True):
            host = [
                [w.detach().to("cpu", copy=True) for w in expert.weights()]
                for expert in source.mlp.experts
            ]
            if pin:
                host = [[w.pin_memory() for w in ws] for ws in host]
            layer.mlp.cache = ExpertCache(host, device, copy)
        return model.eval()

    def caches(self) -> list[ExpertCache]:
        return [layer.mlp.cache for layer in self.model.layers]

    def device_bytes(self) -> int:
        return parameter_bytes(self) + sum(c.resident_bytes() for c in self.caches())

    def host_bytes(self) -> int:
        return sum(c.host_bytes() for c in self.caches())

    def counters(self) -> dict[str, tuple[float, str]]:
        caches = self.caches()
        return {
            "h2d_bytes": (float(sum(c.loaded_bytes for c in caches)), "bytes"),
            "expert_loads": (float(sum(c.loads for c in caches)), "experts"),
        }

    def reset_counters(self) -> None:
        for cache in self.caches():
            cache.loaded_bytes = cache.loads = 0


def dense_lm(config: Any) -> LlamaForCausalLM:
    return LlamaForCausalLM(as_llama(config))
